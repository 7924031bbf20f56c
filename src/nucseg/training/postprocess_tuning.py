"""Choosing the post-processing thresholds (foreground, marker, minimum sizes) that score best on labelled images.

The network's maps are fixed; only the watershed's thresholds vary, so one prediction per image serves the
whole grid. Used when the default model is exported and after every fine-tuning run, whose corrections may
come from a lab whose nuclei are smaller, paler or more crowded than the base model's.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from nucseg.config import PostprocessConfig
from nucseg.inference.postprocess import probabilities_to_instances

FOREGROUND = (0.4, 0.5, 0.6)
MARKER = (0.2, 0.3, 0.4, 0.5, 0.6)
#: the default margin a new setting must win by (mean AJI), so a handful of images cannot move it on noise
MIN_GAIN = 0.01


@dataclasses.dataclass(frozen=True)
class TuningResult:
    """The best thresholds, their mean AJI, and the mean AJI of the thresholds it started from."""

    config: PostprocessConfig
    aji: float
    base_aji: float
    n_images: int

    @property
    def gain(self) -> float:
        return self.aji - self.base_aji

    def to_dict(self) -> dict:
        return {"aji": round(self.aji, 4), "base_aji": round(self.base_aji, 4), "images": self.n_images,
                "chosen": self.config.to_dict()}


def default_grid(base: PostprocessConfig) -> list[PostprocessConfig]:
    """Thresholds around `base`: foreground and marker levels, and the minimum sizes as given or halved."""
    areas = sorted({base.min_area, base.min_area // 2})
    markers = sorted({base.min_marker_area, base.min_marker_area // 3})
    return [PostprocessConfig(fg, mk, area, marker)
            for fg, mk, area, marker in itertools.product(FOREGROUND, MARKER, areas, markers)]


def mean_aji(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray], config: PostprocessConfig) -> float:
    from nucseg.metrics.matching import aji

    return float(np.mean([aji(truth, probabilities_to_instances(prob, config)) for prob, truth in zip(probs, labels)]))


def tune_postprocess(
    probs: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    base: PostprocessConfig,
    grid: Sequence[PostprocessConfig] | None = None,
    min_gain: float = MIN_GAIN,
) -> TuningResult:
    """The thresholds in `grid` (default: around `base`) with the best mean AJI over the images.

    `base` is kept unless another setting beats it by more than `min_gain`, so a handful of images cannot
    move the thresholds on noise alone.
    """
    if not probs:
        raise ValueError("post-processing needs at least one labelled image to tune on")
    base_score = mean_aji(probs, labels, base)
    best, best_score = base, base_score
    for config in grid if grid is not None else default_grid(base):
        if config == base:
            continue
        score = mean_aji(probs, labels, config)
        if score > best_score + (min_gain if best is base else 0.0):
            best, best_score = config, score
    return TuningResult(best, best_score, base_score, len(probs))


def describe_tuning(tuning: dict) -> str:
    """One line for a person: what the tuning chose, on how many images, and what it gained."""
    n = tuning["images"]
    where = f"{n} validation image{'s' if n != 1 else ''}"
    if tuning["aji"] <= tuning["base_aji"]:
        return f"watershed thresholds: the base model's kept (nothing beat them by {MIN_GAIN:.2f} AJI on {where})"
    c = tuning["chosen"]
    return (f"watershed thresholds re-tuned on {where}: AJI {tuning['base_aji']:.3f} -> {tuning['aji']:.3f} "
            f"(foreground {c['foreground_threshold']:g}, seed {c['marker_threshold']:g}, min area {c['min_area']}, "
            f"min seed {c['min_marker_area']})")
