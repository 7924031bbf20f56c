"""`nucseg evaluate`: pixel and object metrics of predicted label maps against ground truth.

Two label files, or two folders whose files pair by name: the stem without ``.ome``/extension and without a trailing
``_labels`` (so ``img1.png`` pairs with ``img1_labels.tif`` written by `nucseg predict`). Pairing, reading and
scoring are `nucseg.jobs.evaluate`'s (the Evaluate widget scores with the same job); this module parses and prints.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError

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
    p.add_argument("--iou", type=float, default=0.5, help="IoU at or above which objects match (default 0.5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--csv", type=Path, metavar="OUT.csv", help="also write the per-image metrics as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    p.set_defaults(run=run)


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
    from nucseg.cli.common import new_output_path
    from nucseg.config import EvalConfig
    from nucseg.errors import ConfigError
    from nucseg.jobs.evaluate import evaluate_files, pair_label_files
    from nucseg.metrics.report import metrics_to_csv

    try:
        config = EvalConfig(iou_threshold=args.iou)
    except ConfigError as err:
        raise InvalidInputError(f"--iou: {err}") from err
    if args.csv is not None:  # before the work: an existing file or a folder nucseg did not write is refused
        new_output_path(args.csv, args.overwrite)
    pairs, unpaired = pair_label_files(args.truth, args.pred, args.prob)
    if unpaired:
        print(f"nucseg evaluate: skipping {len(unpaired)} unpaired file(s): {', '.join(unpaired[:5])}"
              f"{' ...' if len(unpaired) > 5 else ''}", file=sys.stderr)
    rows, summary = evaluate_files(pairs, config.iou_threshold)
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
