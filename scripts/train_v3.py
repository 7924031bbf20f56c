"""Train default model v3 on the CPU: a lean-decoder student distilled from version 2 (resumable, background-safe).

    nohup nice -n 10 .venv/bin/python scripts/train_v3.py train --run v3 > ~/.nucseg/train/v3.log 2>&1 &
    .venv/bin/python scripts/train_v3.py status --run v3        # steps done, patches/s, best validation so far
    .venv/bin/python scripts/train_v3.py tune --run v3          # the watershed thresholds for its best weights
    .venv/bin/python scripts/train_v3.py export --run v3 --dest DIR   # the best weights as a model folder

The same `train` command resumes the run from its last checkpoint (written at least every CHECKPOINT_SECONDS and
at every validation), so a run stopped anywhere (kill, end of session) loses at most that much work.

What it trains (docs/MODEL.md "Version 3"):
- the student: UNet, EfficientNet-B0 encoder copied from version 2 (squeeze-excitation kept; the engine fixes the
  gates once per slide), decoder (64, 32, 16, 16, 8): 13.9 kMAC/px against version 2's 45.4;
- targets: version 2's three probability maps on the *unaugmented* tiles (computed once, cached in the run
  folder), cropped, scaled and rotated with the patch, so the student learns to give on a stain-, colour-, blur- or
  resolution-degraded patch what version 2 gives on the clean one; plus the truth losses;
- data: MoNuSeg 2018 train (25 tiles; the 5 validation tiles of train_default.py stay out) and TNBC split by
  patient (TNBC_VALIDATION stay out). TNBC's masks are binary (touching nuclei share a label), so its truth
  teaches the foreground only; its contour and distance come from version 2.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_default import DATA, TRAIN_ROOT, load_split  # noqa: E402

TNBC = ROOT.parent / "shared" / "data" / "tnbc"
#: TNBC patients kept out of training (chosen before any training, by id, about a third of the 50 tiles)
TNBC_VALIDATION = ("03", "06", "09", "11")
DECODER = (64, 32, 16, 16, 8)
SETTINGS = dict(steps=6000, batch_size=8, tnbc_per_batch=2, patch_size=256, lr=1e-3, warmup=200, ema=0.999,
                truth_weight=0.5, seed=2026, validate_every=500)
CHECKPOINT_SECONDS = 480
MARGIN = 16  # context around a patch so targets near its edge see the whole nucleus


def tnbc_split():
    from nucseg.training.dataset import TrainingPair

    pairs = []
    for p in sorted((TNBC / "images").glob("*.png")):
        image = np.asarray(Image.open(p).convert("RGB"))
        labels = np.asarray(Image.open(TNBC / "labels" / p.name)).astype(np.uint32)
        pairs.append(TrainingPair(image, labels, p.stem, str(p)))
    val = [p for p in pairs if p.name.split("_")[1] in TNBC_VALIDATION]
    return [p for p in pairs if p.name.split("_")[1] not in TNBC_VALIDATION], val


def teacher_maps(run: Path, pairs, threads: int) -> dict[str, np.ndarray]:
    """Version 2's (3, H, W) probabilities for each training tile, as inference computes them; cached in fp16."""
    from safetensors.numpy import load_file, save_file

    cache = run / "teacher.safetensors"
    if cache.is_file():
        maps = load_file(str(cache))
        if all(p.name in maps for p in pairs):
            return maps
    from nucseg.inference.predict import predict_probabilities
    from nucseg.models.build import load_network
    from nucseg.models.registry import resolve_model
    from nucseg.training.validation import VALIDATION_TILING

    spec = resolve_model(TEACHER)
    net = load_network(spec, "cpu", runtime="pytorch")
    maps = {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in pairs:
            maps[p.name] = predict_probabilities(net, p.image, spec, torch.device("cpu"),
                                                 VALIDATION_TILING).astype(np.float16)
    print(f"teacher maps for {len(pairs)} tiles in {time.perf_counter() - t0:.0f} s", flush=True)
    tmp = run / ".teacher.safetensors.tmp"
    save_file(maps, str(tmp))
    os.replace(tmp, cache)
    return maps


TEACHER = "nucseg-v2"  # version 2 (the default until version 3 shipped); the run records its sha256


def _resize(array: np.ndarray, size: int, resample) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize((size, size), resample))
    return np.stack([np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((size, size), resample))
                     for c in array])


def low_resolution(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A 20x-like patch: shrunk by 1.5-2.5x and enlarged back, as inference resamples a 20x slide to 40x."""
    side = image.shape[0]
    small = max(8, int(round(side / rng.uniform(1.5, 2.5))))
    return _resize(_resize(image, small, Image.Resampling.BILINEAR), side, Image.Resampling.BILINEAR)


def sample(rng: np.random.Generator, pair, teacher: np.ndarray, patch: int):
    """(image (p, p, 3) uint8, truth targets (3, p, p), teacher targets (3, p, p)) of one augmented patch."""
    from nucseg.training.augment import color_jitter, flip_rotate, gaussian_blur, stain_jitter
    from nucseg.training.dataset import _rescale_nearest
    from nucseg.training.targets import instance_targets

    full = patch + 2 * MARGIN
    region = int(round(full * rng.uniform(0.8, 1.25)))
    h, w = pair.labels.shape
    y, x = int(rng.integers(0, h - region + 1)), int(rng.integers(0, w - region + 1))
    image = pair.image[y : y + region, x : x + region]
    labels = pair.labels[y : y + region, x : x + region]
    soft = teacher[:, y : y + region, x : x + region].astype(np.float32)
    if region != full:
        image = _resize(image, full, Image.Resampling.BILINEAR)
        labels = _rescale_nearest(labels, (full, full))
        soft = _resize(soft, full, Image.Resampling.BILINEAR)
    image, labels, soft = flip_rotate(rng, image, labels, np.moveaxis(soft, 0, -1))
    if rng.random() < 0.8:
        image = stain_jitter(rng, image, sigma=0.1, bias=0.08)
    if rng.random() < 0.8:
        image = color_jitter(rng, image)
    if rng.random() < 0.25:
        image = low_resolution(rng, image)
    elif rng.random() < 0.3:
        image = gaussian_blur(rng, image)
    crop = slice(MARGIN, MARGIN + patch)
    truth = instance_targets(labels)[:, crop, crop]
    return image[crop, crop], truth, np.moveaxis(soft, -1, 0)[:, crop, crop].clip(0, 1)


def batch(rng, monuseg, tnbc, maps, settings):
    n_tnbc = settings["tnbc_per_batch"]
    chosen = [("m", _pick(rng, monuseg)) for _ in range(settings["batch_size"] - n_tnbc)]
    chosen += [("t", _pick(rng, tnbc)) for _ in range(n_tnbc)]
    samples = [sample(rng, p, maps[p.name], settings["patch_size"]) for _, p in chosen]
    images = np.stack([s[0] for s in samples])
    truth = torch.from_numpy(np.stack([s[1] for s in samples]))
    soft = torch.from_numpy(np.stack([s[2] for s in samples]))
    is_tnbc = torch.tensor([k == "t" for k, _ in chosen])
    return images, truth, soft, is_tnbc


def _pick(rng, pairs):
    areas = np.array([p.labels.size for p in pairs], dtype=np.float64)
    return pairs[int(rng.choice(len(pairs), p=areas / areas.sum()))]


def v3_loss(logits, truth, soft, is_tnbc, truth_weight, head_weights=(1.0, 1.0, 1.0), monuseg_head_weights=None):
    """Distillation (BCE to version 2's probabilities, heads weighted; on MoNuSeg patches by
    `monuseg_head_weights` when given) + the truth losses; TNBC's truth teaches the foreground only and version 2's
    foreground is not distilled there (it is what shrinks TNBC's nuclei)."""
    from nucseg.training.losses import foreground_loss, nucseg_loss

    bce = F.binary_cross_entropy_with_logits(logits, soft, reduction="none").mean(dim=(2, 3))  # (B, 3)
    keep = torch.ones_like(bce) * torch.tensor(head_weights, dtype=bce.dtype)
    if monuseg_head_weights is not None:
        keep[~is_tnbc] = torch.tensor(monuseg_head_weights, dtype=bce.dtype)
    keep[is_tnbc, 0] = 0.0
    distill = (bce * keep).sum() / keep.sum()
    terms = {"distill": distill}
    m = ~is_tnbc
    total = distill
    if m.any():
        terms["truth"] = nucseg_loss(logits[m], truth[m])["loss"]
        total = total + truth_weight * terms["truth"]
    if is_tnbc.any():
        terms["tnbc_fg"] = foreground_loss("focal+jaccard", logits[is_tnbc, 0], truth[is_tnbc, 0])
        total = total + terms["tnbc_fg"]
    terms["loss"] = total
    return terms


def student_spec():
    from nucseg.models.registry import resolve_model

    teacher = resolve_model(TEACHER)
    return dataclasses.replace(teacher, name="nucseg-v3", decoder_channels=DECODER, folder=None, sha256=None,
                               info={"postprocess": teacher.postprocess_defaults}), teacher


def new_student(init: str | None = None):
    """The student with version 2's encoder, or (init) all the weights of an earlier run's best network."""
    from safetensors.torch import load_file

    from nucseg.models.build import build_network

    spec, teacher = student_spec()
    net = build_network(spec)
    if init:
        net.load_state_dict(load_file(str(TRAIN_ROOT / init)))
        return net, spec
    encoder = {k: v.float() for k, v in load_file(str(teacher.weights_path)).items() if k.startswith("encoder.")}
    missing, unexpected = net.load_state_dict(encoder, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("encoder.")], "encoder does not fit"
    return net, spec


def lr_at(step, s):
    if step < s["warmup"]:
        return s["lr"] * (step + 1) / s["warmup"]
    progress = min(1.0, (step - s["warmup"]) / max(1, s["steps"] - s["warmup"]))
    return s["lr"] * (0.01 + 0.99 * 0.5 * (1.0 + np.cos(np.pi * progress)))


@torch.no_grad()
def update_ema(ema, net, step, decay):
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.state_dict().values(), net.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(p, 1.0 - d)
        else:
            e.copy_(p)


def validate(net, spec, sets) -> dict:
    """AJI / Dice of the EMA network on each validation set, whole images as inference runs them."""
    from nucseg.config import PostprocessConfig
    from nucseg.training.validation import validate as score

    post = PostprocessConfig(**spec.postprocess_defaults)
    out = {}
    for name, pairs in sets.items():
        r = score(net, spec, pairs, torch.device("cpu"), post)
        out[f"{name}_aji"], out[f"{name}_dice"] = round(r["val_aji"], 4), round(r["val_f1"], 4)
    return out


def train(args) -> None:
    from safetensors.torch import load_file

    from nucseg.training.checkpoint import (
        append_log,
        has_checkpoint,
        load_checkpoint,
        save_checkpoint,
        save_weights,
    )

    torch.set_num_threads(args.threads)
    run = TRAIN_ROOT / args.run
    run.mkdir(parents=True, exist_ok=True)
    saved = run / "settings.json"
    if saved.is_file():
        settings = json.loads(saved.read_text())  # a run keeps the settings it started with
    else:
        given = {"steps": args.steps, "lr": args.lr, "warmup": args.warmup, "truth_weight": args.truth_weight,
                 "init": args.init, "head_weights": args.head_weights,
                 "monuseg_head_weights": args.monuseg_head_weights}
        settings = {**SETTINGS, **{k: v for k, v in given.items() if v is not None}}
    monuseg, monuseg_val = load_split()
    tnbc, tnbc_val = tnbc_split()
    net, spec = new_student(settings.get("init"))
    if not saved.is_file():
        _, teacher = student_spec()
        settings.update(teacher=TEACHER, teacher_sha256=teacher.sha256, decoder_channels=list(DECODER),
                        tnbc_validation=list(TNBC_VALIDATION), script="scripts/train_v3.py")
        tmp = run / ".settings.json.tmp"
        tmp.write_text(json.dumps(settings, indent=1))
        os.replace(tmp, saved)
    maps = teacher_maps(run, monuseg + tnbc, args.threads)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings["lr"])
    ema = copy.deepcopy(net).eval()
    ckpt = run / "checkpoints"
    step, best = 0, {"score": -1.0}
    if has_checkpoint(ckpt):
        state = load_checkpoint(ckpt, net, optimizer, torch.device("cpu"))
        ema.load_state_dict(load_file(str(ckpt / state["ema"])))
        step, best = state["step"], state["best"]
        print(f"resumed at step {step} (best so far {best})", flush=True)

    def checkpoint():
        name = f"ema-{step:06d}.safetensors"
        save_weights(ckpt / name, ema) if ckpt.is_dir() else (ckpt.mkdir(parents=True), save_weights(ckpt / name, ema))
        save_checkpoint(ckpt, step, net, optimizer, {"step": step, "best": best, "ema": name})
        for old in ckpt.glob("ema-*.safetensors"):
            if old.name != name:
                old.unlink()

    sets = {"monuseg": monuseg_val, "tnbc": tnbc_val}
    last_ckpt = time.monotonic()
    window_t, window_n, losses = time.perf_counter(), 0, []
    net.train()
    while step < settings["steps"]:
        rng = np.random.default_rng([settings["seed"], step])  # patch i depends on the seed and i: resumes replay
        images, truth, soft, is_tnbc = batch(rng, monuseg, tnbc, maps, settings)
        from nucseg.inference.forward import to_input_tensor

        x = to_input_tensor(images, spec, torch.device("cpu"))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings)
        terms = v3_loss(net(x), truth, soft, is_tnbc, settings["truth_weight"],
                        settings.get("head_weights", (1.0, 1.0, 1.0)), settings.get("monuseg_head_weights"))
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        step += 1
        update_ema(ema, net, step, settings["ema"])
        losses.append({k: float(v.detach()) for k, v in terms.items()})
        window_n += len(images)
        if step % 25 == 0:
            rate = window_n / (time.perf_counter() - window_t)
            mean = {k: round(float(np.mean([r[k] for r in losses if k in r])), 4) for k in losses[-1]}
            print(json.dumps({"step": step, "patches_per_s": round(rate, 2), "lr": round(lr_at(step, settings), 6),
                              **mean}), flush=True)
            window_t, window_n, losses = time.perf_counter(), 0, []
        if step % settings["validate_every"] == 0 or step == settings["steps"]:
            t0 = time.perf_counter()
            scores = validate(ema, spec, sets)
            score = (scores["monuseg_aji"] + scores["tnbc_aji"]) / 2
            is_best = score > best["score"]
            if is_best:
                best = {"score": round(score, 4), "step": step, **scores}
                save_weights(run / "best.safetensors", ema)
            append_log(run / "log.csv", {"step": step, **scores, "best": is_best,
                                         "seconds": round(time.perf_counter() - t0, 1)},
                       fields=("step", "monuseg_aji", "monuseg_dice", "tnbc_aji", "tnbc_dice", "best", "seconds"))
            print(json.dumps({"validation": step, **scores, "best": is_best}), flush=True)
            net.train()
            checkpoint()
            last_ckpt = time.monotonic()
        elif time.monotonic() - last_ckpt > CHECKPOINT_SECONDS:
            checkpoint()
            last_ckpt = time.monotonic()
    print(f"done: {step} steps; best {best}", flush=True)


#: the watershed thresholds `tune` tries (foreground, seed, min area, min seed area): a coarse grid, then a finer
#: one around where the students landed
TUNE_GRIDS = (((0.4, 0.5, 0.6), (0.2, 0.3, 0.4, 0.5), (20, 40), (5, 15)),
              ((0.42, 0.45, 0.47), (0.25, 0.3, 0.35), (30, 40, 50), (10, 15, 20)))


def tune(args) -> None:
    """Choose the run's watershed thresholds as version 2's were chosen, on the validation images: the best mean of
    the MoNuSeg validation tiles' and the TNBC validation patients' mean AJI over `TUNE_GRIDS`, each image's
    probabilities computed once by the engine (as `nucseg predict` runs it). Written to the run's
    postprocess.json, which `export` puts in the model's config."""
    import itertools
    import tempfile

    from nucseg.config import InferenceConfig, PostprocessConfig, TilingConfig
    from nucseg.inference.predict import predict
    from nucseg.io.masks import read_labels
    from nucseg.models.registry import sha256_of
    from nucseg.training.postprocess_tuning import mean_aji

    run = TRAIN_ROOT / args.run
    _, monuseg = load_split()
    _, tnbc = tnbc_split()
    sets = {"monuseg_val": [(p.image, DATA / "labels" / f"{p.name}.png") for p in monuseg],
            "tnbc_val": [(p.image, TNBC / "labels" / f"{p.name}.png") for p in tnbc]}
    with tempfile.TemporaryDirectory() as tmp:
        export(argparse.Namespace(run=args.run, dest=Path(tmp) / "model", name=args.name, version=args.version),
               postprocess=False)
        cfg = InferenceConfig(model=str(Path(tmp) / "model"), device="cpu", tiling=TilingConfig(512, 64, 2))
        probs = {name: [predict(image, cfg, mpp=0.25).probabilities for image, _ in pairs]
                 for name, pairs in sets.items()}
    truths = {name: [read_labels(path) for _, path in pairs] for name, pairs in sets.items()}
    rows = []
    for grid in TUNE_GRIDS:
        for values in itertools.product(*grid):
            config = PostprocessConfig(*values)
            scores = {name: mean_aji(probs[name], truths[name], config) for name in sets}
            rows.append({"postprocess": {k: v for k, v in config.to_dict().items() if v is not None},
                         "aji": {k: round(v, 4) for k, v in scores.items()}, "mean": float(np.mean(list(scores.values())))})
            print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["mean"])
    choice = {**best, "weights_sha256": sha256_of(run / "best.safetensors"),
              "how": "scripts/train_v3.py tune: the best mean of the MoNuSeg validation tiles' and the TNBC "
                     "validation patients' mean AJI over TUNE_GRIDS (engine probabilities, 512 px tiles)",
              "grid": rows}
    (run / "postprocess.json").write_text(json.dumps(choice, indent=1))
    print(f"chosen: {best['postprocess']} (mean AJI {best['mean']}: {best['aji']}) -> {run / 'postprocess.json'}")


def export(args, postprocess: bool = True) -> None:
    """Write the run's best EMA weights as a model folder (fp16 safetensors + config.json): the candidate that
    benchmarks/bench_models.py scores against version 2 before anything ships."""
    from safetensors.torch import load_file

    from nucseg.models.build import save_model
    from nucseg.models.registry import sha256_of

    run = TRAIN_ROOT / args.run
    settings = json.loads((run / "settings.json").read_text())
    net, spec = new_student()
    net.load_state_dict(load_file(str(run / "best.safetensors")))
    state = json.loads((run / "checkpoints" / "latest.json").read_text())
    log = (run / "log.csv").read_text().splitlines()
    post, choice = spec.postprocess_defaults, "version 2's (scripts/train_v3.py tune not run on these weights)"
    tuned = run / "postprocess.json"
    if postprocess and tuned.is_file():
        record = json.loads(tuned.read_text())
        if record["weights_sha256"] != sha256_of(run / "best.safetensors"):
            raise SystemExit(f"{tuned} was tuned on other weights than {run / 'best.safetensors'}: run tune again")
        post = record["postprocess"]
        choice = f"{record['how']}: mean AJI {record['aji']}"
    info = {
        "name": args.name,
        "version": args.version,
        "description": "UNet (efficientnet-b0 encoder, lean decoder 64-32-16-16-8) for H&E nuclei at 40x (0.25 um/px): "
                       "foreground, contour and distance heads with marker-controlled watershed; distilled from "
                       "version 2 on the CPU with MoNuSeg 2018 and TNBC truth",
        "postprocess": post,
        "postprocess_choice": choice,
        "training": {"data": "MoNuSeg 2018 training set (25 tiles; Kumar et al. 2017/2019, CC BY-NC-SA 4.0) and "
                             "TNBC (Naylor et al. 2019, CC BY 4.0), patients not in tnbc_validation",
                     "settings": settings, "steps_run": state["epoch"], "log": log,
                     "script": "scripts/train_v3.py"},
        "lineage": {"from": f"{TEACHER} version 2 (encoder copied, outputs distilled)",
                    "teacher_sha256": settings["teacher_sha256"]},
        "license": "weights: CC BY-NC-SA 4.0 (trained on MoNuSeg data)",
    }
    out = save_model(net.eval(), spec, args.dest, info=info, half=True)
    print(f"wrote {out.folder}", flush=True)


def status(args) -> None:
    run = TRAIN_ROOT / args.run
    latest = run / "checkpoints" / "latest.json"
    print(latest.read_text() if latest.is_file() else "no checkpoint yet")
    if (run / "log.csv").is_file():
        print((run / "log.csv").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["train", "status", "tune", "export"])
    parser.add_argument("--run", default="v3", help="run folder under $NUCSEG_TRAIN_DIR (~/.nucseg/train)")
    parser.add_argument("--steps", type=int, help="total steps of a new run (default SETTINGS['steps'])")
    parser.add_argument("--threads", type=int, default=2)
    new = "(a new run only; a run resumes with the settings it started with)"
    parser.add_argument("--init", help=f"warm start from this weights file under the train folder {new}")
    parser.add_argument("--lr", type=float, help=f"peak learning rate {new}")
    parser.add_argument("--warmup", type=int, help=f"warm-up steps {new}")
    parser.add_argument("--truth-weight", type=float, help=f"weight of the truth losses {new}")
    parser.add_argument("--head-weights", type=float, nargs=3, metavar=("FG", "CONTOUR", "DIST"),
                        help=f"weights of the three distilled heads {new}")
    parser.add_argument("--monuseg-head-weights", type=float, nargs=3, metavar=("FG", "CONTOUR", "DIST"),
                        help=f"on MoNuSeg patches, these weights instead (0 for CONTOUR: its truth alone) {new}")
    parser.add_argument("--dest", type=Path, help="export: the new model folder (never overwritten)")
    parser.add_argument("--name", default="nucseg-default", help="export: the model's name in its config")
    parser.add_argument("--version", default="3", help="export: the model's version")
    args = parser.parse_args()
    {"train": train, "status": status, "tune": tune, "export": export}[args.action](args)


if __name__ == "__main__":
    main()
