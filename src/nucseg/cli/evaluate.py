"""`nucseg evaluate`: pixel and object metrics of predicted label maps against ground truth.

Two label files, or two folders whose files pair by name: the stem without ``.ome``/extension and without a trailing
``_labels`` (so ``img1.png`` pairs with ``img1_labels.tif`` written by `nucseg predict`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError, SlideReadError

LABEL_SUFFIXES = (".tif", ".tiff", ".png")
PROB_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
STEM_TAGS = ("_labels", "_label", "_prob", "_probabilities")
JSON_KEYS = ("dice", "iou", "precision", "recall", "accuracy", "auc", "f1", "aji", "pq", "tp", "fp", "fn")
TABLE_KEYS = ("dice", "iou", "precision", "recall", "accuracy", "auc", "f1", "aji", "pq", "sq", "dq",
              "object_precision", "object_recall", "tp", "fp", "fn")
FOLDER_KEYS = ("dice", "iou", "auc", "f1", "aji", "pq", "tp", "fp", "fn")  # the rest: --json / --csv


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predicted labels against ground truth",
        description="Pixel metrics (Dice, IoU, precision, recall, accuracy, AUC with --prob) and object metrics "
        "(F1, AJI, PQ, TP/FP/FN at --iou) of PRED against TRUTH: two label images (PNG / TIFF, 0 = background), or "
        "two folders paired by file name (a trailing _labels is ignored). Pixel precision/recall are printed as "
        "precision/recall, the object ones as object_precision/object_recall.",
    )
    p.add_argument("--truth", required=True, type=Path, metavar="LABELS", help="ground-truth label image or folder")
    p.add_argument("--pred", required=True, type=Path, metavar="LABELS", help="predicted label image or folder")
    p.add_argument("--prob", type=Path, metavar="PROB",
                   help="foreground probability map (TIFF / PNG / NPY; a folder when TRUTH is a folder) for the AUC")
    p.add_argument("--iou", type=float, default=0.5, help="IoU above which objects match (default 0.5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--csv", type=Path, metavar="OUT.csv", help="also write the per-image metrics as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    p.set_defaults(run=run)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*PROB_SUFFIXES, ".ome"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    for tag in STEM_TAGS:
        if name.endswith(tag) and len(name) > len(tag):
            return name[: -len(tag)]
    return name


def _read_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist or is not a file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                return np.asarray(im)
    except (OSError, ValueError) as err:
        raise SlideReadError(path, str(err) or type(err).__name__, "check that the file is a complete image") from err
    raise InvalidInputError(f"{path}: unsupported file type {suffix!r}; use PNG or TIFF label images")


def read_label_file(path: Path) -> np.ndarray:
    """A label image as a 2-D integer array, via `nucseg.io.masks.read_labels` when that module is present."""
    try:
        from nucseg.io.masks import read_labels
    except ModuleNotFoundError as err:
        if err.name != "nucseg.io.masks":
            raise
    else:
        return np.asarray(read_labels(path))
    arr = _read_array(path)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and all(np.array_equal(arr[..., 0], arr[..., c]) for c in (1, 2)):
        arr = arr[..., 0]  # grey stored as RGB
    if arr.ndim != 2:
        raise InvalidInputError(f"{path}: a label image must have one channel (0 = background, 1..N = nuclei), "
                                f"got shape {arr.shape}")
    return arr


def read_prob_file(path: Path) -> np.ndarray:
    """A foreground probability map (H, W); (C, H, W) or (H, W, C) stacks give their first channel."""
    arr = _read_array(path)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] <= 4 else arr[..., 0]
    if arr.ndim != 2:
        raise InvalidInputError(f"{path}: a probability map must be (H, W) or (C, H, W), got shape {arr.shape}")
    return arr.astype(np.float32)


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in suffixes:
            found.setdefault(_stem(path), path)
    return found


def _pairs(args: argparse.Namespace) -> list[tuple[str, Path, Path, Path | None]]:
    for name in ("truth", "pred", "prob"):
        value = getattr(args, name)
        if value is not None and not value.exists():
            raise InvalidInputError(f"--{name} {value} does not exist")
    if args.truth.is_dir() != args.pred.is_dir():
        raise InvalidInputError("--truth and --pred must both be files or both be folders")
    if not args.truth.is_dir():
        if args.prob is not None and args.prob.is_dir():
            raise InvalidInputError("--prob must be a file when --truth and --pred are files")
        return [(_stem(args.pred), args.truth, args.pred, args.prob)]
    truths, preds = _files(args.truth, LABEL_SUFFIXES), _files(args.pred, LABEL_SUFFIXES)
    probs = _files(args.prob, PROB_SUFFIXES) if args.prob is not None else {}
    if args.prob is not None and not args.prob.is_dir():
        raise InvalidInputError("--prob must be a folder when --truth and --pred are folders")
    common = sorted(set(truths) & set(preds))
    if not common:
        raise InvalidInputError(f"no file names in common between {args.truth} ({len(truths)} label images) and "
                                f"{args.pred} ({len(preds)}); pairs need the same name, e.g. a.png and a_labels.tif")
    missing = sorted(set(truths) ^ set(preds))
    if missing:
        print(f"nucseg evaluate: skipping {len(missing)} unpaired file(s): {', '.join(missing[:5])}"
              f"{' ...' if len(missing) > 5 else ''}", file=sys.stderr)
    if probs and set(common) - set(probs):
        raise InvalidInputError(f"--prob {args.prob} has no probability map for {sorted(set(common) - set(probs))[:5]}")
    return [(name, truths[name], preds[name], probs.get(name)) for name in common]


def _load(pairs: list[tuple[str, Path, Path, Path | None]]):
    for name, truth, pred, prob in pairs:
        yield name, read_label_file(truth), read_label_file(pred), read_prob_file(prob) if prob else None


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _table(rows: list[dict[str, Any]], keys: list[str], first: str) -> str:
    header = [first, *keys]
    cells = [header] + [[str(r.get(first, ""))] + [_fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from nucseg.config import EvalConfig
    from nucseg.errors import ConfigError
    from nucseg.metrics.report import evaluate_many, metrics_to_csv

    try:
        config = EvalConfig(iou_threshold=args.iou)
    except ConfigError as err:
        raise InvalidInputError(f"--iou: {err}") from err
    pairs = _pairs(args)
    rows, summary = evaluate_many(_load(pairs), iou_threshold=config.iou_threshold)
    if args.csv is not None:
        metrics_to_csv(rows, args.csv, overwrite=args.overwrite)
    single = len(rows) == 1 and not args.truth.is_dir()
    if args.json:
        source = rows[0] if single else summary
        out = {k: source[k] for k in JSON_KEYS if k in source}
        out.update({k: v for k, v in source.items() if k not in out and k not in ("image", "pooled")})
        if not single:
            out["pooled"] = summary["pooled"]
            out["images"] = rows
        out["iou_threshold"] = config.iou_threshold
        print(json.dumps(_clean(out)))
        return 0
    keys = [k for k in TABLE_KEYS if any(k in r for r in rows)]
    if single:
        row = rows[0]
        print(f"{pairs[0][2]} vs {pairs[0][1]} (objects match at IoU >= {config.iou_threshold})")
        print(_table([{"metric": k, "value": row[k]} for k in keys], ["value"], "metric"))
        print(f"nuclei: {row['n_truth']} in truth, {row['n_pred']} predicted")
    else:
        keys = [k for k in FOLDER_KEYS if k in keys]
        mean = {"image": "MEAN", **{k: summary[k] for k in keys if k in summary}}
        pooled = {"image": "POOLED", **summary["pooled"], **{k: summary[k] for k in ("tp", "fp", "fn")}}
        print(_table([*rows, mean, pooled], keys, "image"))
        print(f"{summary['n_images']} images; MEAN averages over images, POOLED treats them as one (AJI = sum of "
              f"intersections / sum of unions); objects match at IoU >= {config.iou_threshold}; all metrics: --json, --csv")
    if args.csv is not None:
        print(f"wrote {args.csv}")
    return 0
