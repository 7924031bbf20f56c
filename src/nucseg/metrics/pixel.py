"""Pixel-level (semantic) metrics of a foreground segmentation: IoU, Dice, precision, recall, accuracy, ROC AUC.

Foreground is ``label > 0`` (boolean masks work too). Every ratio is computed from one `ConfusionCounts`, the
same counts the overlay colours (DESIGN.md rule 7).

Zero-division convention: a ratio whose denominator is 0 means "nothing to get wrong" and is 1.0. So two empty masks
score IoU = Dice = precision = recall = 1.0; an empty prediction on a tile with nuclei scores precision 1.0 (no false
positive) but recall, IoU and Dice 0.0; a prediction on an empty tile scores recall 1.0 but precision, IoU and Dice 0.0.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError

__all__ = ["ConfusionCounts", "as_label_array", "check_same_shape", "confusion_counts", "pixel_metrics", "roc_auc"]


def _ratio(num: int | float, den: int | float) -> float:
    return float(num) / float(den) if den else 1.0


@dataclasses.dataclass(frozen=True)
class ConfusionCounts:
    """Pixel counts of a binary foreground comparison.

    Attributes:
        tp: foreground in both truth and prediction.
        fp: foreground in the prediction only.
        fn: foreground in the truth only.
        tn: background in both.
    """

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def iou(self) -> float:
        """Jaccard index TP / (TP + FP + FN); 1.0 when both masks are empty."""
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def dice(self) -> float:
        """Dice / F1 score 2TP / (2TP + FP + FN); 1.0 when both masks are empty."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1.0 when nothing is predicted."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """TP / (TP + FN) (sensitivity); 1.0 when the truth has no foreground."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def accuracy(self) -> float:
        """(TP + TN) / all pixels; 1.0 for an empty image."""
        return _ratio(self.tp + self.tn, self.tp + self.fp + self.fn + self.tn)

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        return ConfusionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)


def as_label_array(labels: Any, name: str = "labels") -> np.ndarray:
    """`labels` as a 2-D non-negative integer numpy array (bool becomes 0/1).

    Raises:
        InvalidInputError: not 2-D, negative values, or non-integer floats.
    """
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InvalidInputError(f"{name} must be a 2-D label map (height, width), got shape {arr.shape}; "
                                "pass one channel / one plane")
    if arr.dtype == bool:
        return arr.view(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.array_equal(arr, np.floor(arr)):
            raise InvalidInputError(f"{name} holds non-integer values ({arr.dtype}); label maps need integer ids "
                                    "(0 = background), threshold probabilities first")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(f"{name} has dtype {arr.dtype}; label maps need integer ids (0 = background)")
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and arr.min() < 0:
        raise InvalidInputError(f"{name} holds negative ids (min {arr.min()}); use 0 for background and 1..N for nuclei")
    return arr


def check_same_shape(truth: np.ndarray, pred: np.ndarray, what: str = "prediction") -> None:
    """Raise `InvalidInputError` unless `truth` and `pred` have the same (height, width)."""
    if truth.shape != pred.shape:
        raise InvalidInputError(f"ground truth has shape {truth.shape} but the {what} has shape {pred.shape}; "
                                "they must cover the same pixels at the same resolution")


def confusion_counts(truth: Any, pred: Any) -> ConfusionCounts:
    """Pixel confusion counts of foreground (``> 0``) in `truth` versus `pred`.

    Args:
        truth: ground-truth label map or boolean mask, shape (H, W).
        pred: predicted label map or boolean mask, same shape.

    Returns:
        The four counts.

    Raises:
        InvalidInputError: shapes differ or an input is not a label map.
    """
    t = as_label_array(truth, "ground truth")
    p = as_label_array(pred, "prediction")
    check_same_shape(t, p)
    code = (t > 0).view(np.uint8).ravel() * 2 + (p > 0).view(np.uint8).ravel()
    tn, fp, fn, tp = (int(v) for v in np.bincount(code, minlength=4))
    return ConfusionCounts(tp=tp, fp=fp, fn=fn, tn=tn)


def roc_auc(truth_fg: Any, prob: Any) -> float:
    """Area under the ROC curve of per-pixel foreground scores (Mann-Whitney U, ties counted half).

    AUC = P(score of a random foreground pixel > score of a random background pixel) + 0.5 P(equal). Computed
    from the average ranks of all scores (one sort, ties grouped), in O(n log n).

    Args:
        truth_fg: truth mask or label map (foreground = ``> 0``).
        prob: foreground probability or any score, same shape (higher = more likely foreground).

    Returns:
        The AUC in [0, 1], or NaN (with a RuntimeWarning saying why) when the truth has only one class.

    Raises:
        InvalidInputError: shapes differ or the scores are not finite numbers.
    """
    fg = np.asarray(truth_fg).ravel() > 0
    scores = np.asarray(prob)
    if scores.shape != np.asarray(truth_fg).shape:
        raise InvalidInputError(f"probability map has shape {scores.shape} but the ground truth has shape "
                                f"{np.asarray(truth_fg).shape}; pass the foreground channel at the labels' resolution")
    scores = scores.ravel()
    if not np.issubdtype(scores.dtype, np.number) and scores.dtype != bool:
        raise InvalidInputError(f"probability map has dtype {scores.dtype}; expected numbers")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise InvalidInputError("probability map holds NaN or infinite values; replace them before computing AUC")
    n_pos = int(fg.sum())
    n_neg = fg.size - n_pos
    if n_pos == 0 or n_neg == 0:
        which = "background" if n_neg == 0 else "foreground"
        warnings.warn(f"ROC AUC is undefined (NaN): the ground truth has no {which} pixels", RuntimeWarning,
                      stacklevel=2)
        return float("nan")
    order = np.argsort(scores)
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first index of each run of equal scores
    average_rank = (starts + np.r_[starts[1:], ordered.size] + 1) / 2.0  # 1-based mean rank of each run
    positives = np.add.reduceat(fg[order].astype(np.int64), starts)
    u = float(np.dot(positives, average_rank)) - n_pos * (n_pos + 1) / 2.0
    return u / (float(n_pos) * float(n_neg))


def pixel_metrics(truth: Any, pred: Any, prob: Any | None = None) -> dict[str, float]:
    """IoU, Dice, precision, recall and accuracy of the foreground, plus ROC AUC when `prob` is given.

    Args:
        truth: ground-truth label map or mask (H, W).
        pred: predicted label map or mask (H, W).
        prob: optional foreground probability map (H, W).

    Returns:
        Dict with keys iou, dice, precision, recall, accuracy (and auc, possibly NaN).
    """
    counts = confusion_counts(truth, pred)
    out = {"iou": counts.iou, "dice": counts.dice, "precision": counts.precision, "recall": counts.recall,
           "accuracy": counts.accuracy}
    if prob is not None:
        out["auc"] = roc_auc(truth, prob)
    return out
