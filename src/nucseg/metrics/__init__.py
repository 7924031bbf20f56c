"""Evaluation of nuclei segmentations: pixel metrics, one-to-one object matching (F1, PQ, AJI) and error overlays.

Submodules: `pixel` (confusion counts, IoU, Dice, AUC), `matching` (match_instances, AJI, PQ), `report`
(evaluate_labels, evaluate_many, CSV), `overlays` (TP / FP / FN maps), `figure` (a side-by-side PNG).
Importing this package loads numpy only; scipy / scikit-image are imported when first needed.
"""

from nucseg.metrics.matching import MatchResult, aji, match_instances, object_metrics
from nucseg.metrics.pixel import ConfusionCounts, confusion_counts, pixel_metrics, roc_auc
from nucseg.metrics.report import evaluate_labels, evaluate_many, metrics_to_csv

__all__ = [
    "ConfusionCounts", "MatchResult", "aji", "confusion_counts", "evaluate_labels", "evaluate_many",
    "match_instances", "metrics_to_csv", "object_metrics", "pixel_metrics", "roc_auc",
]
