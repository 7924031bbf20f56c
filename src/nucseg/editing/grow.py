"""A nucleus grown around a click from the model's own maps: the "add a nucleus" tool.

The maps of a small window around the click (foreground, contour and distance probabilities at the model's
resolution, `MapWindow`) go through the engine's own post-processing
(`nucseg.inference.postprocess.probabilities_to_instances`) with the layer's thresholds; the nucleus under the
click is the answer. Where the model was unsure (the click's foreground probability under the threshold, which
is why the nucleus was missed), the cut is lowered to `RELAX` of the click's own probability, so the nucleus the
model half-saw is taken with the same watershed. Under `MIN_PROBABILITY` the model sees nothing there:
`grow_nucleus` returns None and the caller falls back (`disc_around`) or asks for the brush.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nucseg.config import PostprocessConfig

#: below this foreground probability at the click the model sees no nucleus there
MIN_PROBABILITY = 0.05
#: a missed nucleus is cut at this fraction of the click's foreground probability...
RELAX = 0.8
#: ...and seeded where distance - contour exceeds this fraction of its highest value next to the click
SEED_RELAX = 0.5
#: "next to the click": within this many map pixels
SEED_SEARCH_PX = 4
#: the fallback disc, when no map is available and the layer holds no nucleus to take a size from (pixels)
DEFAULT_RADIUS_PX = 8


@dataclasses.dataclass(frozen=True)
class MapWindow:
    """The model's maps over a window of a labels map.

    Attributes:
        probs: (3, h, w) float32 foreground / contour / distance probabilities in [0, 1] (model resolution).
        box: (y, x, h, w) of the window in the labels' pixels; ``h / probs h`` labels pixels per map pixel.
        postprocess: the thresholds the maps are cut with (the layer's).
    """

    probs: np.ndarray
    box: tuple[int, int, int, int]
    postprocess: PostprocessConfig

    @property
    def factor(self) -> tuple[float, float]:
        return self.box[2] / self.probs.shape[1], self.box[3] / self.probs.shape[2]

    def to_map(self, point: tuple[float, float]) -> tuple[int, int]:
        """A labels pixel as the map pixel that covers it (clipped to the map)."""
        fy, fx = self.factor
        y = int((point[0] - self.box[0] + 0.5) / fy)
        x = int((point[1] - self.box[1] + 0.5) / fx)
        return min(max(y, 0), self.probs.shape[1] - 1), min(max(x, 0), self.probs.shape[2] - 1)

    def contains(self, point: tuple[float, float], margin: int = 0) -> bool:
        y, x, h, w = self.box
        return y + margin <= point[0] < y + h - margin and x + margin <= point[1] < x + w - margin


def as_float_maps(probs: np.ndarray) -> np.ndarray:
    """Maps as float32 in [0, 1] (zarr results store them as uint8 0..255)."""
    probs = np.asarray(probs)
    return probs.astype(np.float32) / 255.0 if probs.dtype == np.uint8 else probs.astype(np.float32, copy=False)


def grow_nucleus(window: MapWindow, point: tuple[float, float], labels_shape: tuple[int, int]
                 ) -> np.ndarray | None:
    """The nucleus under `point` (labels pixels), as a bool mask of the whole labels map; None when the model
    sees no nucleus there (foreground probability under `MIN_PROBABILITY` at the click).

    The mask is what the maps say: it may overlap other nuclei; `nucseg.editing.tools.add_nucleus` keeps only
    the free pixels connected to the click.
    """
    from nucseg.inference.postprocess import probabilities_to_instances

    probs = as_float_maps(window.probs)
    my, mx = window.to_map(point)
    fg_here = float(probs[0, my, mx])
    if fg_here < MIN_PROBABILITY:
        return None
    config = window.postprocess
    instances = probabilities_to_instances(probs, config)
    label = int(instances[my, mx])
    if not label:  # missed: the same post-processing with the cuts lowered to what the model saw at the click
        r = SEED_SEARCH_PX
        near = probs[:, max(my - r, 0) : my + r + 1, max(mx - r, 0) : mx + r + 1]
        seed_peak = float((near[2] - near[1]).max())
        relaxed = dataclasses.replace(config, foreground_method="fixed",
                                      foreground_threshold=max(min(RELAX * fg_here, config.foreground_threshold),
                                                               MIN_PROBABILITY / 2),
                                      marker_threshold=max(min(config.marker_threshold, SEED_RELAX * seed_peak),
                                                           -0.99),
                                      min_area=0, min_marker_area=min(config.min_marker_area, 3))
        instances = probabilities_to_instances(probs, relaxed)
        label = int(instances[my, mx])
        if not label:
            return None
    local = instances == label
    return _to_labels(local, window, labels_shape)


def _to_labels(local: np.ndarray, window: MapWindow, labels_shape: tuple[int, int]) -> np.ndarray:
    """A map-resolution mask of the window as a labels-resolution mask of the whole labels map."""
    y, x, h, w = window.box
    if local.shape != (h, w):  # nearest: a labels pixel takes the map pixel that covers it
        rows = np.minimum(((np.arange(h) + 0.5) * local.shape[0] / h).astype(int), local.shape[0] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * local.shape[1] / w).astype(int), local.shape[1] - 1)
        local = local[np.ix_(rows, cols)]
    out = np.zeros(labels_shape, bool)
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, labels_shape[0]), min(x + w, labels_shape[1])
    out[y0:y1, x0:x1] = local[y0 - y : y1 - y, x0 - x : x1 - x]
    return out


def typical_radius(labels: np.ndarray) -> float:
    """The radius (pixels) of a disc of the median nucleus area in `labels`; `DEFAULT_RADIUS_PX` when empty."""
    areas = np.bincount(np.asarray(labels).reshape(-1))[1:]
    areas = areas[areas > 0]
    if not areas.size:
        return float(DEFAULT_RADIUS_PX)
    return float(np.sqrt(np.median(areas) / np.pi))


def disc_around(point: tuple[float, float], radius: float, labels_shape: tuple[int, int]) -> np.ndarray:
    """A disc of `radius` pixels around `point`: the add tool's fallback where no map is available."""
    r = int(np.ceil(radius))
    cy, cx = int(round(point[0])), int(round(point[1]))
    out = np.zeros(labels_shape, bool)
    y0, y1 = max(cy - r, 0), min(cy + r + 1, labels_shape[0])
    x0, x1 = max(cx - r, 0), min(cx + r + 1, labels_shape[1])
    yy, xx = np.mgrid[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return out
