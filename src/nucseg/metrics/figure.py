"""The picture every report the product grew from shows: image | truth | prediction | TP/FP/FN overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def label_outlines(image: np.ndarray, labels: np.ndarray, color=(0, 255, 0)) -> np.ndarray:
    """`image` with each nucleus's inner border drawn in `color`."""
    from skimage.segmentation import find_boundaries

    out = image.copy()
    out[find_boundaries(labels, mode="inner") & (labels > 0)] = color
    return out


def side_by_side_figure(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, path: str | Path,
                        metrics: dict | None = None, iou_threshold: float = 0.5) -> Path:
    """Write a 4-panel PNG; the overlay colours matched nuclei cyan (TP), extra ones magenta (FP) and missed
    ones yellow (FN)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from nucseg.metrics.matching import match_instances
    from nucseg.metrics.overlays import blend_overlay, object_overlay

    match = match_instances(truth, pred, iou_threshold)
    panels = [
        ("image", image),
        (f"truth ({len(np.unique(truth)) - 1} nuclei)", label_outlines(image, truth, (255, 255, 0))),
        (f"prediction ({len(np.unique(pred)) - 1} nuclei)", label_outlines(image, pred, (0, 255, 0))),
        (f"TP cyan {match.tp} / FP magenta {match.fp} / FN yellow {match.fn}",
         blend_overlay(image, object_overlay(truth, pred, match), alpha=0.5)),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(20, 5.6), dpi=100)
    for ax, (title, panel) in zip(axes, panels):
        ax.imshow(panel)
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    if metrics:
        keys = ("dice", "iou", "f1", "aji", "pq")
        fig.suptitle("   ".join(f"{k.upper() if k != 'f1' else 'F1@0.5'} {metrics[k]:.3f}" for k in keys if k in metrics),
                     fontsize=13)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
