"""One dict of every metric for a (truth, prediction) pair, summaries over many images, and a CSV table.

Key names: ``precision`` / ``recall`` are PIXEL metrics (foreground = label > 0), the object-level ones are
``object_precision`` / ``object_recall``; ``f1``, ``aji``, ``pq``, ``sq``, ``dq``, ``tp``, ``fp``, ``fn`` are object
level (see `nucseg.metrics.matching`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError
from nucseg.metrics.matching import MatchResult, match_instances
from nucseg.metrics.pixel import ConfusionCounts, as_label_array, check_same_shape, confusion_counts, roc_auc

__all__ = ["RATIO_KEYS", "evaluate_labels", "evaluate_many", "metrics_to_csv"]

#: metrics averaged over images in `evaluate_many`'s summary (auc only when present)
RATIO_KEYS = ("dice", "iou", "precision", "recall", "accuracy", "auc", "f1", "object_precision", "object_recall",
              "aji", "pq", "sq", "dq")
COUNT_KEYS = ("tp", "fp", "fn")


def _evaluate(truth: Any, pred: Any, prob: Any | None, iou_threshold: float
              ) -> tuple[dict[str, Any], ConfusionCounts, MatchResult]:
    t = as_label_array(truth, "ground truth")
    p = as_label_array(pred, "prediction")
    check_same_shape(t, p)
    counts = confusion_counts(t, p)
    match = match_instances(t, p, iou_threshold)
    out: dict[str, Any] = {
        "dice": counts.dice, "iou": counts.iou, "precision": counts.precision, "recall": counts.recall,
        "accuracy": counts.accuracy,
    }
    if prob is not None:
        prob_arr = np.asarray(prob)
        check_same_shape(t, prob_arr, "probability map")
        out["auc"] = roc_auc(t, prob_arr)
    out.update({
        "f1": match.f1, "aji": match.aji, "pq": match.pq, "tp": match.tp, "fp": match.fp, "fn": match.fn,
        "object_precision": match.precision, "object_recall": match.recall, "sq": match.sq, "dq": match.dq,
    })
    return out, counts, match


def evaluate_labels(truth: Any, pred: Any, prob: Any | None = None, iou_threshold: float = 0.5) -> dict[str, Any]:
    """Every pixel and object metric of one prediction.

    Args:
        truth: ground-truth instance labels (H, W), 0 = background.
        pred: predicted instance labels, same shape.
        prob: optional foreground probability map (H, W) for the ROC AUC.
        iou_threshold: object matching threshold (IoU at least this) for f1 / pq / tp / fp / fn.

    Returns:
        Dict with keys dice, iou, precision, recall, accuracy (pixel), f1, aji, pq, tp, fp, fn, object_precision,
        object_recall, sq, dq (object), and auc when `prob` is given (NaN when the truth has one class only).

    Raises:
        InvalidInputError: shapes differ or an input is not a label map.
    """
    return _evaluate(truth, pred, prob, iou_threshold)[0]


def _unpack(item: Any, index: int) -> tuple[str, Any, Any, Any]:
    item = tuple(item)
    if item and isinstance(item[0], (str, Path)):
        name, rest = str(item[0]), item[1:]
    else:
        name, rest = f"image_{index}", item
    if len(rest) not in (2, 3):
        raise InvalidInputError(f"evaluate_many: item {index} must be (truth, pred), (name, truth, pred) or "
                                "(name, truth, pred, prob)")
    prob = rest[2] if len(rest) == 3 else None
    return name, rest[0], rest[1], prob


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate_many(pairs: Iterable[Sequence[Any]], iou_threshold: float = 0.5
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score many images and summarise them two ways.

    Items may be a generator, so images can be read one at a time.

    Args:
        pairs: items ``(truth, pred)``, ``(name, truth, pred)`` or ``(name, truth, pred, prob)``.
        iou_threshold: object matching threshold.

    Returns:
        ``(rows, summary)``. Each row is ``{"image": name, **evaluate_labels(...), "n_truth", "n_pred"}``.
        The summary holds, at its top level, the MEAN over images of every ratio in `RATIO_KEYS` (NaN AUCs
        skipped) and the SUMS of tp / fp / fn, n_truth, n_pred and ``n_images``; under ``"pooled"`` the metrics of
        all images taken as one: pixel dice / iou / precision / recall / accuracy from the summed confusion counts,
        object f1 / precision / recall / dq from the summed counts, sq as the mean IoU over all matches, pq = sq x dq,
        and AJI as sum(C) / sum(U) over images (the "aggregated" AJI of a data set).
    """
    rows: list[dict[str, Any]] = []
    counts = ConfusionCounts(0, 0, 0, 0)
    iou_sum = 0.0
    c_sum = u_sum = 0
    for index, item in enumerate(pairs):
        name, truth, pred, prob = _unpack(item, index)
        try:
            metrics, cc, match = _evaluate(truth, pred, prob, iou_threshold)
        except InvalidInputError as err:
            raise InvalidInputError(f"{name}: {err}") from err
        rows.append({"image": name, **metrics, "n_truth": match.n_truth, "n_pred": match.n_pred})
        counts = counts + cc
        iou_sum += float(match.ious.sum())
        c_sum += match.aji_intersection
        u_sum += match.aji_union
    summary: dict[str, Any] = {"n_images": len(rows)}
    for key in RATIO_KEYS:
        if any(key in r for r in rows):
            summary[key] = _mean([float(r[key]) for r in rows if key in r])
    for key in (*COUNT_KEYS, "n_truth", "n_pred"):
        summary[key] = int(sum(r[key] for r in rows))
    tp, fp, fn = summary["tp"], summary["fp"], summary["fn"]
    nothing = summary["n_truth"] == 0 and summary["n_pred"] == 0
    sq = iou_sum / tp if tp else (1.0 if nothing else 0.0)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn) if (tp + fp + fn) else 1.0
    summary["pooled"] = {
        "dice": counts.dice, "iou": counts.iou, "precision": counts.precision, "recall": counts.recall,
        "accuracy": counts.accuracy,
        "f1": dq, "object_precision": tp / (tp + fp) if tp + fp else 1.0,
        "object_recall": tp / (tp + fn) if tp + fn else 1.0, "aji": c_sum / u_sum if u_sum else 1.0,
        "pq": sq * dq, "sq": sq, "dq": dq,
    }
    return rows, summary


def metrics_to_csv(rows: Sequence[dict[str, Any]], path: str | Path, overwrite: bool = False) -> Path:
    """Write metric rows as CSV (columns: the union of the rows' keys, in first-seen order).

    Args:
        rows: dicts such as `evaluate_many`'s rows.
        path: the CSV file to write (atomically).
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        StoreError: the file exists and `overwrite` is False, or it cannot be written.
    """
    from nucseg.io.export import atomic_output

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return Path(path)


def _cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{float(value):.6g}"
    if isinstance(value, np.integer):
        return int(value)
    return value
