"""`nucseg finetune`: fine-tune a model on corrected image / label pairs into a new model folder.

The data loading, the run and the verdict come from `nucseg.jobs.finetune`, which the Fine-tune widget uses too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nucseg.config import DEVICES, HOLDOUTS, LOSSES, FinetuneConfig
from nucseg.errors import StoreError
from nucseg.jobs.finetune import folder_pairs, saved_config, scores_rows, tile_rows, verdict_lines

#: exit status of a run that finished but registered no model (not better than its base, no --keep-worse)
NOT_KEPT = 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    defaults = FinetuneConfig()
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on corrected images",
        description="Fine-tune a model on image / instance-label pairs (paired by file name: tile1.png with "
        "tile1.png or tile1_labels.tif). Writes a new model folder OUT (config.json + model.safetensors) that "
        "`nucseg predict --model OUT` loads. Every epoch is checkpointed: after a crash or Ctrl-C, run the "
        "same command with --resume to continue. Without --val-images, a share of every image's blocks is held "
        "out, and the base model and the new one are scored there at the end (per image, and in all: the "
        "held-out score is AJI with the outlines a person accepted unchanged credited to a model that finds "
        "them); a model that is not better than its base on it is not "
        f"registered (exit status {NOT_KEPT}; its weights stay in OUT) unless --keep-worse.",
    )
    p.add_argument("--images", required=True, type=Path, metavar="DIR", help="folder of training images")
    p.add_argument("--labels", required=True, type=Path, metavar="DIR", help="folder of their instance labels")
    p.add_argument("--reviewed", type=Path, metavar="DIR",
                   help="folder of reviewed-region masks paired by name (white = checked; as the corrections store "
                   "exports them): training learns only inside them; images without one count as reviewed whole")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="the new model folder (must not exist)")
    p.add_argument("--mpp", type=float, metavar="UM",
                   help="microns per pixel of the training and validation images (e.g. 0.5 for 20x): they are "
                   "resampled to the base model's, as `nucseg predict --mpp` resamples what it segments "
                   "(default: already at the model's; give it again with --resume)")
    p.add_argument("--base", help=f"model to start from: registry name or folder (default {defaults.base_model})")
    p.add_argument("--epochs", type=int, help=f"default {defaults.epochs}")
    p.add_argument("--steps-per-epoch", type=int, help=f"batches per epoch (default {defaults.steps_per_epoch})")
    p.add_argument("--lr", type=float, help=f"learning rate (default {defaults.learning_rate:g})")
    p.add_argument("--batch-size", type=int, help=f"patches per step (default {defaults.batch_size})")
    p.add_argument("--patch-size", type=int, help=f"patch side, a multiple of 32 (default {defaults.patch_size})")
    p.add_argument("--loss", choices=LOSSES, help=f"foreground loss (default {defaults.loss})")
    p.add_argument("--augment", help="comma-separated among flips, rot90, stain, color, scale, blur "
                   f"(default {','.join(defaults.augmentations)}; 'none' for none)")
    val = p.add_argument_group("validation (chooses the best epoch; scores before / after)")
    val.add_argument("--val-images", type=Path, metavar="DIR", help="folder of validation images")
    val.add_argument("--val-labels", type=Path, metavar="DIR", help="folder of their labels")
    val.add_argument("--val-fraction", type=float,
                     help=f"share held out when no --val-images (default {defaults.validation_fraction})")
    val.add_argument("--holdout", choices=HOLDOUTS,
                     help="what --val-fraction holds out: blocks of every image (regions) or whole images "
                     f"(default {defaults.holdout})")
    orig = p.add_argument_group("original data (mixed into every batch so the model does not forget it; default: "
                                "the replay set the base model carries, e.g. the shipped default's MoNuSeg crops)")
    orig.add_argument("--original-images", type=Path, metavar="DIR")
    orig.add_argument("--original-labels", type=Path, metavar="DIR")
    orig.add_argument("--mix-original", type=float, metavar="F",
                      help=f"fraction of each batch from the original data (default {defaults.mix_original}; 0 = off)")
    p.add_argument("--freeze-norm", action="store_true",
                   help="keep the base model's batch-norm statistics (forgets less of the old data, adapts less "
                   "to the new; default: they adapt)")
    p.add_argument("--tune-postprocess", action="store_true",
                   help="re-choose the watershed thresholds on the validation images when that gains at least 0.01 "
                   "AJI there (default: keep the base model's; with one validation image the choice overfits)")
    p.add_argument("--device", choices=DEVICES, help="auto picks cuda, then mps, then cpu")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--seed", type=int, help="makes sampling and augmentation reproducible")
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in OUT (its saved settings apply unless given again); on a "
                   "finished run whose model was not kept, decide again (with --keep-worse: keep it)")
    p.add_argument("--keep-worse", action="store_true",
                   help="register the new model even when it is not better than its base on validation")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep OUT/checkpoints after a finished run (by default only the model is kept)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def build_config(args: argparse.Namespace) -> FinetuneConfig:
    """FinetuneConfig from the saved run (with --resume), then the options given on the command line."""
    values: dict[str, Any] = {}
    saved = args.out / "finetune_config.json"
    if args.resume and saved.is_file():
        try:
            values.update(saved_config(saved))
        except StoreError as err:
            from nucseg.training.checkpoint import has_checkpoint

            if has_checkpoint(args.out / "checkpoints"):  # its epochs were trained with those settings
                raise StoreError(f"{err}; remove it and run the same command again, with every option of the first "
                                 "run, and --resume") from err
            print(f"nucseg finetune: note: {err}; no epoch was saved, so the run starts again with the options "
                  "given", file=sys.stderr)
    given = {"base_model": args.base, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
             "learning_rate": args.lr, "batch_size": args.batch_size, "patch_size": args.patch_size,
             "loss": args.loss, "validation_fraction": args.val_fraction, "holdout": getattr(args, "holdout", None),
             "device": args.device,
             "num_threads": args.threads, "seed": args.seed}
    values.update({k: v for k, v in given.items() if v is not None})
    if args.augment is not None:
        text = args.augment.strip().lower()
        values["augmentations"] = () if text in ("", "none") else tuple(a.strip() for a in text.split(",") if a.strip())
    if args.freeze_norm:
        values["freeze_norm"] = True
    if args.tune_postprocess:
        values["tune_postprocess"] = True
    if args.mix_original is not None:
        values["mix_original"] = args.mix_original
    return FinetuneConfig.from_dict(values)


def load_data(args: argparse.Namespace, config: FinetuneConfig) -> tuple[list, list, list | None]:
    """(train, val, original) pairs from the folders given."""
    from nucseg.jobs.finetune import require_original_data

    if args.mix_original:  # only when given: with the default mix, a base without a replay set trains on the data alone
        require_original_data(config, args.original_images is not None,
                              "--mix-original needs --original-images and --original-labels")
    return folder_pairs(args.images, args.labels, val_images=args.val_images, val_labels=args.val_labels,
                        reviewed=getattr(args, "reviewed", None), original_images=args.original_images,
                        original_labels=args.original_labels, mpp=args.mpp, config=config)


def _heldout_text(val: Any) -> str:
    from nucseg.training.holdout import HeldOut

    if isinstance(val, HeldOut):
        return f"{len(val)} regions of {len(set(val.groups))} held out to judge the run"
    return f"{len(val)} for validation"


def _scores_text(record: dict[str, Any]) -> str:
    score = f"held-out score {record['val_score']:.3f}  " if "val_score" in record else ""
    return f"{score}AJI {record['val_aji']:.3f}  IoU {record['val_iou']:.3f}  F {record['val_f1']:.3f}"


def _fmt(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}/{record['epochs']}", f"loss {record['train_loss']:.4f}",
             f"IoU {record['train_iou']:.3f}", f"F {record['train_f1']:.3f}"]
    if "val_aji" in record:
        parts.append(f"| val loss {record['val_loss']:.4f} {_scores_text(record)}")
    parts.append(f"| {record['seconds']:.0f} s" + (" best" if record.get("best") else ""))
    if record.get("partial"):
        parts.append("(stopped mid-epoch)")
    return "  ".join(parts)


def scores_table(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """Lines comparing validation scores before and after fine-tuning."""
    if not after:
        return ["no validation images: the best epoch was chosen by training loss"]
    lines = [f"{'validation':<10} {'before':>8} {'after':>8}"]
    for label, b, a in scores_rows(before, after):
        lines.append(f"{label:<10} {'-' if b is None else f'{b:.4f}':>8} {a:>8.4f}")
    return lines


def tiles_table(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One line per tile (correction or validation image): its held-out score before and after."""
    rows = tile_rows(before, after)
    if len(rows) < 2:
        return []
    width = min(40, max(len(name) for name, *_ in rows))
    lines = [f"{'per tile':<{width}} {'before':>8} {'after':>8} {'nuclei':>7}"]
    for name, b, a, nuclei in rows:
        lines.append(f"{name[:width]:<{width}} {'-' if b is None else f'{b:.4f}':>8} "
                     f"{'-' if a is None else f'{a:.4f}':>8} {nuclei:>7}")
    if any(a is None for _, _, a, _ in rows):
        lines.append("(-: a region without held-out nuclei has no score of its own; it counts in the pooled score)")
    return lines


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from nucseg.io.outputs import check_output_folder
    from nucseg.jobs.finetune import finished_version, folder_finetune
    from nucseg.models.registry import resolve_model
    from nucseg.models.versions import is_candidate
    from nucseg.progress import Progress, drive
    from nucseg.training.estimate import format_minutes
    from nucseg.training.postprocess_tuning import describe_tuning

    check_output_folder(args.out)  # a file, a read-only folder or a full disk: one line before any work
    if not args.resume and any(args.out.iterdir()):
        raise StoreError(f"{args.out} exists and is not empty: choose a new --out (versions are never overwritten), "
                         "or pass --resume to continue an unfinished run there")
    config = build_config(args)
    base = resolve_model(config.base_model)  # an unknown model fails before any data is read
    if args.resume and is_candidate(args.out):  # the run is over: only the decision is left
        train, val, original = [], [], None
        print(f"{args.out}: the run finished earlier; its model was not kept", file=sys.stderr)
    else:
        train, val, original = load_data(args, config)
        mixed = ""
        if config.mix_original > 0 and (original or base.replay_dir):
            source = f"{len(original)} original images" if original else f"{base.name}'s replay set"
            mixed = f", {source} at {config.mix_original:.0%} of each batch"
        partly = "; each learns only inside its reviewed mask" if getattr(args, "reviewed", None) else ""
        print(f"fine-tuning {config.base_model} on {len(train)} images ({_heldout_text(val)}{mixed}"
              + f"{partly}): {config.epochs} epochs x {config.steps_per_epoch} steps x {config.batch_size} patches of "
              f"{config.patch_size} px", file=sys.stderr)
    gen = folder_finetune(train, val, config, args.out, original=original, resume=args.resume,
                          keep_worse=args.keep_worse)
    bar = tqdm(total=config.epochs * config.steps_per_epoch, desc="fine-tuning", unit="step", file=sys.stderr,
               disable=args.quiet or None, dynamic_ncols=True)
    said_estimate = False

    def show(record: Progress) -> None:
        nonlocal said_estimate
        if record.total:
            bar.total, bar.n = record.total, record.done
        if record.kind == "note":
            tqdm.write(f"nucseg finetune: note: {record.stage}", file=sys.stderr)
        elif record.kind == "epoch":
            tqdm.write(_fmt(record.info), file=sys.stdout)
        elif record.kind == "baseline":
            if "val_score" in record.info or "val_aji" in record.info:
                tqdm.write(f"base model on the held-out data: {_scores_text(record.info)}", file=sys.stdout)
        elif record.stage:
            bar.set_postfix_str(record.stage, refresh=False)
        bar.refresh()
        left = record.info.get("eta_s") if record.kind == "progress" else None
        if left is not None and not said_estimate:
            said_estimate = True
            tqdm.write(f"measured {record.info['seconds']:.1f} s a step: the run takes {format_minutes(left)} more "
                       f"(at most; early stopping can end it sooner)", file=sys.stdout)

    try:
        result = drive(gen, show)  # on Ctrl-C the run is closed: its checkpoint stays for --resume
    except KeyboardInterrupt:
        bar.close()
        print(f"nucseg finetune: interrupted; continue with the same command and --resume (out: {args.out})",
              file=sys.stderr)
        return 130
    finally:
        bar.close()
    if not result.candidate:
        raise StoreError("no epoch finished, so no model was written; run again with more steps")
    for line in scores_table(result.before, result.after):
        print(line)
    for line in tiles_table(result.before, result.after):
        print(line)
    if result.postprocess_tuning:
        print(describe_tuning(result.postprocess_tuning))
    for line in verdict_lines(result):
        print(line)
    model_dir = finished_version(result, keep_checkpoints=args.keep_checkpoints)
    if model_dir is None:
        print(f"nucseg finetune: the new model was NOT registered, because it is not better than its base on "
              f"validation; its weights stay in {args.out} (candidate.json, not config.json). To keep it anyway: "
              f"nucseg finetune --images ... --labels ... --out {args.out} --resume --keep-worse", file=sys.stderr)
        return NOT_KEPT
    print(f"model: {model_dir}  (use it with: nucseg predict --model {model_dir} ...)")
    return 0
