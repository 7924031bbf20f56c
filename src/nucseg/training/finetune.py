"""`iter_finetune`: train or fine-tune a model on image / instance-label pairs, as a generator.

It yields `nucseg.progress.Progress` records (one per step, one per epoch...) and returns a `FinetuneResult`. Every epoch
ends with a checkpoint, so a killed run resumes where it was. When the run ends (all epochs, early stopping, or
Stop), the best epoch by validation AJI (or by training loss without validation data) is written as a
*candidate* (model.safetensors + candidate.json) and compared with the base model's AJI on the same validation
images (`verdict`). Whether it becomes a version (config.json) is the caller's `keep` policy: always, only when
it is better, or not before the user chose (`nucseg.models.versions.register_candidate` / `discard_candidate`).
Nothing overwrites another folder.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucseg.config import FinetuneConfig, PostprocessConfig
from nucseg.errors import StoreError
from nucseg.inference.forward import normalise
from nucseg.io.export import atomic_write_text
from nucseg.io.outputs import check_output_folder
from nucseg.models.build import build_network, load_weights
from nucseg.models.device import release_device_memory, select_device, training_autocast_dtype
from nucseg.models.registry import CONFIG_FILE, WEIGHTS_FILE, ModelSpec, resolve_model
from nucseg.models.versions import is_candidate
from nucseg.progress import Progress, relay
from nucseg.training.checkpoint import (
    RESUME_FIX,
    append_log,
    has_checkpoint,
    load_checkpoint,
    restore_best,
    save_checkpoint,
    save_weights,
)
from nucseg.training.dataset import PatchSampler, TrainingPair
from nucseg.training.estimate import format_minutes, pace, remaining_seconds, scoring_seconds_guess
from nucseg.training.holdout import HeldOut, whole_images
from nucseg.training.losses import nucseg_loss
from nucseg.training.postprocess_tuning import tune_postprocess
from nucseg.training.validation import iter_heldout_scores, predict_pairs
from nucseg.training.verdict import (  # noqa: F401 - the verdict's names, re-exported for the callers of this module
    BEST_WEIGHTS,
    BETTER,
    KEEP_POLICIES,
    LEGACY_SCORE_KEY,
    NOT_BETTER,
    NOT_COMPARED,
    SCORE_KEY,
    FinetuneResult,
    best_record,
    compare_with_base,
    pending_result,
    verdict_key,
    write_candidate,
)

CHECKPOINTS = "checkpoints"
FINETUNE_CONFIG = "finetune_config.json"
LOG_CSV = "log.csv"
#: the run's data and base model, written when it starts (a resumed run goes on from the same base weights)
DATA_MANIFEST = "data_manifest.json"
#: the base model's instances on the held-out crops (the outlines a person accepted are judged against them)
REFERENCE_FILE = "heldout_reference.npz"

def _manifest(pairs: Sequence[TrainingPair]) -> list[dict[str, Any]]:
    return [{"name": p.name, "source": p.source, "shape": list(p.labels.shape), "nuclei": int(len(np.unique(p.labels)) - 1),
             "fingerprint": p.fingerprint()} for p in pairs]


def _batch_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Foreground IoU and Dice of a batch, on its reviewed pixels (the weight channel) when it has one."""
    pred, true = logits[:, 0] > 0, targets[:, 0] > 0.5
    if targets.shape[1] > 3:
        reviewed = targets[:, 3] > 0.5
        pred, true = pred & reviewed, true & reviewed
    inter = (pred & true).sum().item()
    union = (pred | true).sum().item()
    total = pred.sum().item() + true.sum().item()
    return (inter / union if union else 1.0), (2 * inter / total if total else 1.0)


def load_replay(base: ModelSpec, mix: float) -> list[TrainingPair]:
    """The base model's replay set when it has one and mixing is on; else nothing."""
    from nucseg.training.dataset import load_pairs

    if mix <= 0 or base.replay_dir is None:
        return []
    return load_pairs(base.replay_dir / "images", base.replay_dir / "labels")


def _prepare_out_dir(out_dir: Path, resume: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise StoreError(f"{out_dir} is a file, not a folder: give a new folder for the model")
    if (out_dir / WEIGHTS_FILE).exists() and (out_dir / CONFIG_FILE).exists():  # weights alone: a crash in _finalise
        raise StoreError(f"{out_dir} already holds a finished model: versions are never overwritten; choose a new --out")
    if is_candidate(out_dir) and not resume:
        raise StoreError(f"{out_dir} holds a finished run's model waiting to be kept or discarded: pass --resume "
                         "to decide on it, or choose a new --out")
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        raise StoreError(f"{out_dir} already holds an unfinished run: pass --resume to continue it, or choose a new --out")
    check_output_folder(out_dir, "")  # created, and writable (not read-only, not full), before any training


def iter_finetune(
    train: Sequence[TrainingPair],
    val: Sequence[TrainingPair] | HeldOut,
    config: FinetuneConfig,
    out_dir: str | Path,
    *,
    original: Sequence[TrainingPair] | None = None,
    resume: bool = False,
    postprocess: PostprocessConfig | None = None,
    stop: threading.Event | None = None,
    info: dict[str, Any] | None = None,
    keep: str = "always",
) -> Generator[Progress, None, FinetuneResult]:
    """Fine-tune `config.base_model` on `train`, scoring the held-out data after every epoch.

    Args:
        train: corrected image / label pairs to learn from (their reviewed masks say where).
        val: what the run is judged on: held-out regions of the corrections (`nucseg.training.holdout`), or
            whole validation images (each its own tile); may be empty.
        config: the run's settings (written to the output folder).
        out_dir: the new model folder; with `resume`, an unfinished run's folder.
        original: the base model's own training data, mixed in at `config.mix_original` against forgetting;
            None takes the replay set the base model carries (if any).
        resume: continue from the last checkpoint in `out_dir`.
        postprocess: thresholds for the scores (default: the base model's).
        stop: when set, the run ends after the current step; the best epoch so far becomes the candidate.
        info: extra fields for the new model's config.json (description, name...).
        keep: "always" registers the candidate as a version; "if_better" only when its verdict is BETTER or
            NOT_COMPARED; "ask" never (the caller shows the verdict and calls `FinetuneResult.keep` or
            `nucseg.models.versions.discard_candidate`). A candidate left waiting is returned again, without
            training, by a resumed run.

    Yields:
        `Progress` records: ``done`` / ``total`` count training steps over all epochs (one bar for the whole run),
        ``stage`` says what happens for a person, ``kind`` and ``info`` say it for a program:

        * "preparing" while the model loads;
        * "validating" after each held-out crop scored, info {"epoch" (0: the base model), "scored", "to_score"};
        * "baseline": info holds the base model's held-out scores (empty: none);
        * "note": something a person should know (a damaged checkpoint passed over), in ``stage``;
        * "progress" after each training step, info {"epoch", "step", "steps", "loss", "seconds", "elapsed_s",
          "eta_s"} (eta_s: the rest of the run at the measured pace, None before it is known);
        * "epoch" after each epoch, info {"epoch", "epochs", "train_loss", "train_iou", "train_f1", "val_loss",
          "val_iou", "val_f1", "val_aji", "val_score", "tiles", "lr", "best", "seconds", "partial"} (the record
          kept in `FinetuneResult.history` and log.csv);
        * "tuning" while the watershed thresholds are re-chosen on the held-out data.
    """
    if keep not in KEEP_POLICIES:
        raise ValueError(f"keep must be one of {KEEP_POLICIES}, not {keep!r}")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, resume)
    if resume and is_candidate(out_dir):  # the run is over; only the decision on its model is left
        result = pending_result(out_dir)
        yield Progress(result.steps_done, result.steps_planned, kind="baseline", info=result.before)
        return _apply_policy(result, keep)
    started = time.perf_counter()
    planned = config.epochs * config.steps_per_epoch
    yield Progress(0, planned, "loading the base model", kind="preparing")
    heldout = val if isinstance(val, HeldOut) else whole_images(val)
    device = select_device(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    notes: list[str] = []
    base, config = run_base(config, out_dir, resume, notes)
    post = (postprocess or PostprocessConfig()).resolved(base.postprocess_defaults)
    net = build_network(base)
    if base.trained:
        load_weights(net, base)
    net.to(device)
    channels_last = device.type == "cpu"  # 1.2x faster training steps on CPU, measured here (3.1 vs 3.7 s)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    amp_dtype = training_autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # fp16 gradients underflow unscaled
    original_source = "given"
    if original is None:
        original, original_source = load_replay(base, config.mix_original), f"replay set of {base.name}"
    sampler = PatchSampler(train, config.patch_size, config.augmentations, extra=(original, config.mix_original))
    ckpt_dir = out_dir / CHECKPOINTS
    state: dict[str, Any] = {"history": [], "best_score": None, "best_epoch": 0, "since_best": 0, "before": {},
                             "steps_done": 0}
    reference: list[np.ndarray] | None = None
    clock: dict[str, Any] = {"steps": [], "scoring": None}
    if resume and has_checkpoint(ckpt_dir):
        state = load_checkpoint(ckpt_dir, net, optimizer, device)
        checkpoint, damaged = state.pop("checkpoint"), state.pop("damaged_checkpoints")
        if damaged:
            notes.append(f"passed over damaged checkpoint(s) in {ckpt_dir} ({'; '.join(damaged)}): resuming after "
                         f"epoch {state['epoch']}, the last intact one")
        state.setdefault("steps_done", int(state["epoch"]) * config.steps_per_epoch)  # checkpoints before 0.x
        config.write_json(out_dir / FINETUNE_CONFIG)  # the settings that finish the run (e.g. more epochs)
        # the best weights as of that checkpoint (a later epoch's may be in best.safetensors after a fallback);
        # older checkpoints hold none: a kill between the checkpoint and the best weights' write is repaired here
        if not restore_best(checkpoint, out_dir / BEST_WEIGHTS) and state["best_epoch"] == state["epoch"]:
            save_weights(out_dir / BEST_WEIGHTS, net)
        reference = _load_reference(out_dir, heldout)
    else:
        config.write_json(out_dir / FINETUNE_CONFIG)
        atomic_write_text(out_dir / DATA_MANIFEST, json.dumps(
            {"base_model": base.name, "base_sha256": base.sha256, "train": _manifest(train),
             "val": _manifest(heldout.pairs), "val_groups": heldout.groups,
             "original": _manifest(original) if config.mix_original else [],
             **({"original_source": original_source} if config.mix_original and original else {})}, indent=1),
            fix=RESUME_FIX)
        if base.trained and heldout:
            t0 = time.perf_counter()
            state["before"], reference = yield from _scoring(net, base, heldout, device, post, config.loss, None, 0,
                                                             (0, planned))
            clock["scoring"] = time.perf_counter() - t0
            _save_reference(out_dir, reference)
    for note in notes:
        yield Progress(state["steps_done"], planned, note, kind="note")
    yield Progress(state["steps_done"], planned, kind="baseline", info=state["before"])
    start_epoch = int(state.get("epoch", 0)) + 1
    stopped = False
    best_partial: dict[str, torch.Tensor] | None = None

    def eta(epoch: int, step: int) -> float | None:
        step_s = pace(clock["steps"])
        if step_s is None:
            return None
        scoring_s = clock["scoring"]
        if scoring_s is None:
            scoring_s = scoring_seconds_guess(heldout.pixels, step_s, config.batch_size, config.patch_size)
        steps_left = (config.epochs - epoch) * config.steps_per_epoch + config.steps_per_epoch - step
        return remaining_seconds(steps_left, (config.epochs - epoch + 1) if heldout else 0, step_s, scoring_s)

    try:
        for epoch in range(start_epoch, config.epochs + 1):
            if state["since_best"] >= config.early_stopping_patience > 0:
                break
            t0 = time.perf_counter()
            rng = np.random.default_rng([config.seed, epoch])  # per-epoch streams: a resumed run replays exactly
            torch.manual_seed(config.seed * 100003 + epoch)
            net.train()
            if base.trained and config.freeze_norm:
                _freeze_norm_statistics(net)
            losses, ious, f1s = [], [], []
            for step in range(1, config.steps_per_epoch + 1):
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                t_step = time.perf_counter()
                images, targets = sampler.sample_batch(rng, config.batch_size)
                x = normalise(torch.from_numpy(images).to(device), base)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = torch.from_numpy(targets).to(device)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    logits = net(x)
                terms = nucseg_loss(logits.float(), y, config.loss)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(terms["loss"].item())
                iou, f1 = _batch_scores(logits.detach(), y)
                ious.append(iou)
                f1s.append(f1)
                clock["steps"].append(time.perf_counter() - t_step)
                left = eta(epoch, step)
                yield Progress(
                    state["steps_done"] + step, planned,
                    f"epoch {epoch} of {config.epochs}, step {step} of {config.steps_per_epoch}, loss "
                    f"{losses[-1]:.3f}" + (f"; {format_minutes(left)} left" if left is not None else ""),
                    info={"epoch": epoch, "step": step, "steps": config.steps_per_epoch, "loss": losses[-1],
                          "seconds": round(clock["steps"][-1], 3),
                          "elapsed_s": round(time.perf_counter() - started, 1), "eta_s": left})
            state["steps_done"] += len(losses)
            if stopped and not losses:
                break
            t_val = time.perf_counter()
            scores: dict[str, Any] = {}
            if heldout:
                scores, _ = yield from _scoring(net, base, heldout, device, post, config.loss, reference, epoch,
                                                (state["steps_done"], planned))
                clock["scoring"] = time.perf_counter() - t_val
            score = scores.get(SCORE_KEY, scores.get(LEGACY_SCORE_KEY, -float(np.mean(losses))))
            improved = state["best_score"] is None or score > state["best_score"]
            if improved:
                state.update(best_score=score, best_epoch=epoch, since_best=0)
                if stopped:  # a partial epoch is never checkpointed: its weights go straight into the model
                    best_partial = {k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
                                    for k, v in net.state_dict().items()}
            else:
                state["since_best"] += 1
                if config.plateau_patience and state["since_best"] % config.plateau_patience == 0:
                    for group in optimizer.param_groups:
                        group["lr"] *= 0.5
            record = {"epoch": epoch, "epochs": config.epochs, "train_loss": float(np.mean(losses)),
                      "train_iou": float(np.mean(ious)), "train_f1": float(np.mean(f1s)), **scores,
                      "lr": optimizer.param_groups[0]["lr"], "best": improved,
                      "seconds": round(time.perf_counter() - t0, 1), "partial": stopped}
            state["history"].append(record)
            append_log(out_dir / LOG_CSV, record)
            if not stopped:
                # checkpoint first, then the best weights: best.safetensors only ever holds a checkpointed epoch,
                # and a kill between the two writes is repaired on resume (best_epoch == checkpoint epoch)
                save_checkpoint(ckpt_dir, epoch, net, optimizer, state, best=out_dir / BEST_WEIGHTS)
                if improved:
                    save_weights(out_dir / BEST_WEIGHTS, net)
            yield Progress(state["steps_done"], planned, _epoch_stage(record), kind="epoch", info=record)
            if stopped:
                break
        tuning = None
        if state["best_epoch"] and heldout and config.tune_postprocess and not stopped:  # Stop means now
            yield Progress(state["steps_done"], planned, "tuning the watershed thresholds on the held-out data",
                           kind="tuning")
            tuning = _tune_on_validation(net, base, heldout.pairs, device, post, out_dir, best_partial)
    finally:
        release_device_memory(device)
    if state["best_epoch"]:
        run = {"stopped": stopped, "steps_done": int(state["steps_done"]), "steps_planned": planned,
               "validation_images": len(heldout), "validation_tiles": len(set(heldout.groups)),
               "seconds": round(time.perf_counter() - started, 1)}
        write_candidate(out_dir, base, config, state, info, best_partial, tuning, run)
    result = FinetuneResult(None, state["history"], state["before"], best_record(state), stopped, tuning, out_dir,
                            bool(state["best_epoch"]), int(state["steps_done"]), planned, int(state["best_epoch"]),
                            len(heldout))
    return _apply_policy(result, keep)


def _scoring(net, base: ModelSpec, heldout: HeldOut, device, post: PostprocessConfig, loss: str,
             reference: list[np.ndarray] | None, epoch: int, steps: tuple[int, int]):
    """`iter_heldout_scores`, its progress as "validating" records (`steps`: training steps done, planned);
    returns (scores, instances)."""
    who = "the base model" if epoch == 0 else f"epoch {epoch}"

    def validating(scored: tuple[int, int]) -> Progress:
        return Progress(*steps, f"scoring {who} on the held-out {heldout.kind}: {scored[0]}/{scored[1]}",
                        kind="validating", info={"epoch": epoch, "scored": scored[0], "to_score": scored[1]})

    return (yield from relay(iter_heldout_scores(net, base, heldout, device, post, loss, reference), validating))


def _epoch_stage(record: dict[str, Any]) -> str:
    """An epoch's record in a few words: its held-out scores, else its training loss."""
    head = f"epoch {record['epoch']} of {record['epochs']}"
    if "val_aji" in record:
        return (f"{head}: validation AJI {record['val_aji']:.3f}, IoU {record['val_iou']:.3f}, "
                f"F {record['val_f1']:.3f}")
    return f"{head}: training loss {record['train_loss']:.3f}"


def run_base(config: FinetuneConfig, out_dir: Path, resume: bool, notes: list[str]
             ) -> tuple[ModelSpec, FinetuneConfig]:
    """The base model of a run, and its config. A resumed run goes on from the weights it started from (their
    sha256 is in its data manifest): when its base's name now names another model (a run of version 2 waited while
    the default became version 3), the shipped model with those weights takes its place, with a note; when none
    has them, the run cannot go on, and the error says why."""
    import dataclasses

    from nucseg.errors import InvalidInputError
    from nucseg.models.registry import shipped_models

    base = resolve_model(config.base_model)
    manifest = out_dir / DATA_MANIFEST
    if not (resume and manifest.is_file()):
        return base, config
    recorded = json.loads(manifest.read_text()).get("base_sha256")
    if not recorded or recorded == base.sha256:
        return base, config
    for name in shipped_models():
        spec = resolve_model(name)
        if spec.sha256 == recorded:
            notes.append(f"this run started from {config.base_model!r} when that name held {name}'s weights: it "
                         f"goes on from {name}")
            return spec, dataclasses.replace(config, base_model=name)
    raise InvalidInputError(
        f"{out_dir} was started from {config.base_model!r} with other weights than it holds now (sha256 "
        f"{recorded[:12]}…, now {str(base.sha256)[:12]}…), so its checkpoints cannot go on from it: start a new "
        "run into another folder")


def _save_reference(out_dir: Path, reference: list[np.ndarray]) -> None:
    tmp = out_dir / f".{REFERENCE_FILE}.tmp.npz"
    np.savez_compressed(tmp, *reference)
    tmp.replace(out_dir / REFERENCE_FILE)


def _load_reference(out_dir: Path, heldout: HeldOut) -> list[np.ndarray] | None:
    """The base model's held-out instances saved when the run began (None: not saved, e.g. an untrained base)."""
    path = out_dir / REFERENCE_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        arrays = [data[f"arr_{k}"] for k in range(len(data.files))]
    if len(arrays) != len(heldout) or any(a.shape != p.labels.shape for a, p in zip(arrays, heldout.pairs)):
        raise StoreError(f"{path} does not fit the held-out data of this run: resume it with the same images and "
                         "settings, or start a new run")
    return arrays


def _apply_policy(result: FinetuneResult, keep: str) -> FinetuneResult:
    if result.candidate and (keep == "always" or (keep == "if_better" and result.verdict != NOT_BETTER)):
        result.keep()
    return result


def _tune_on_validation(net, base: ModelSpec, val, device, post: PostprocessConfig, out_dir: Path,
                        weights: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """Watershed thresholds re-chosen on the validation corrections with the best epoch's weights."""
    from safetensors.torch import load_file

    net.load_state_dict(weights if weights is not None else load_file(str(out_dir / BEST_WEIGHTS), device=str(device)))
    with torch.inference_mode():
        probs = predict_pairs(net, base, val, device)
    result = tune_postprocess(probs, [p.labels for p in val], post)
    return result.to_dict()


def _freeze_norm_statistics(net: torch.nn.Module) -> None:
    """Batch-norm layers use (and keep) their running statistics; their scale and shift still learn."""
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
