"""Where the add tool finds the model's maps around a click: a finished prediction, or the engine on a window.

* `ResultMaps`: the probabilities a prediction already cached (numpy, or uint8 zarr for streamed results), read
  on a small window around the click; no network.
* `EngineMaps`: the same engine (`nucseg.inference.predict.predict`: tiling, calibration, the model's
  resolution) run on a small window of the image around the click, for labels the plugin did not predict (a label
  file opened from disk, a layer drawn by hand); each window is kept, so the next click nearby costs nothing.
  `compute` runs the network: call it in a worker.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import numpy as np

from nucseg.config import InferenceConfig, PostprocessConfig
from nucseg.editing.grow import MapWindow, as_float_maps

#: half the side of the window read around a click, in map pixels (a nucleus is 10-40 map pixels across)
HALF_WINDOW = 64
#: the side of a window the engine computes, in labels pixels, and the grid its corners snap to
ENGINE_WINDOW, ENGINE_GRID = 256, 64
#: a click this close to a computed window's edge computes a new window (the nucleus may run over the edge)
EDGE_MARGIN = 32
#: windows the engine keeps
CACHE_WINDOWS = 32


class ResultMaps:
    """Windows of a finished prediction's maps.

    Args:
        probabilities: (3, h, w) maps of the labels map's area (float in [0, 1], or uint8 0..255 from zarr).
        labels_shape: (H, W) of the labels map they cover; ``H / h`` labels pixels per map pixel.
        postprocess: the thresholds the layer shows now.
    """

    def __init__(self, probabilities: Any, labels_shape: tuple[int, int], postprocess: PostprocessConfig):
        self.probabilities = probabilities
        self.labels_shape = tuple(int(s) for s in labels_shape)
        self.postprocess = postprocess

    def window(self, point: tuple[float, float]) -> MapWindow:
        """The maps around `point` (labels pixels)."""
        ph, pw = (int(s) for s in self.probabilities.shape[-2:])
        fy, fx = self.labels_shape[0] / ph, self.labels_shape[1] / pw
        my, mx = int((point[0] + 0.5) / fy), int((point[1] + 0.5) / fx)
        y0, x0 = max(my - HALF_WINDOW, 0), max(mx - HALF_WINDOW, 0)
        y1, x1 = min(my + HALF_WINDOW, ph), min(mx + HALF_WINDOW, pw)
        probs = as_float_maps(np.asarray(self.probabilities[:, y0:y1, x0:x1]))
        ly0, lx0 = int(round(y0 * fy)), int(round(x0 * fx))
        box = (ly0, lx0, int(round(y1 * fy)) - ly0, int(round(x1 * fx)) - lx0)
        return MapWindow(probs, box, self.postprocess)


class EngineMaps:
    """Maps computed by the engine on windows of the image around clicks, and kept.

    Args:
        read_pixels: ``(y, x, h, w) -> (h, w, 3) RGB``: the image's pixels under that box of the labels map.
        labels_shape: (H, W) of the labels map (windows are clipped to it).
        config: the engine's settings (model, tiling, thresholds).
        mpp: microns per pixel of the image (None: the model's).
    """

    def __init__(self, read_pixels: Callable[[tuple[int, int, int, int]], np.ndarray],
                 labels_shape: tuple[int, int], config: InferenceConfig, mpp: float | None = None):
        self.read_pixels = read_pixels
        self.labels_shape = tuple(int(s) for s in labels_shape)
        self.config = config
        self.mpp = mpp
        self._windows: collections.OrderedDict[tuple[int, int, int, int], MapWindow] = collections.OrderedDict()

    def cached_window(self, point: tuple[float, float]) -> MapWindow | None:
        """A window already computed around `point` (with room around it), or None."""
        for box, window in self._windows.items():
            edge_ok = all(
                lo + (EDGE_MARGIN if lo > 0 else 0) <= p < lo + size - (EDGE_MARGIN if lo + size < full else 0)
                for p, lo, size, full in zip(point, box[:2], box[2:], self.labels_shape))
            if edge_ok:
                self._windows.move_to_end(box)
                return window
        return None

    def box_around(self, point: tuple[float, float]) -> tuple[int, int, int, int]:
        """The window computed for a click at `point`: `ENGINE_WINDOW` square, corners on the `ENGINE_GRID`."""
        out = []
        for p, full in zip(point, self.labels_shape):
            size = min(ENGINE_WINDOW, full)
            start = int((p - size / 2) // ENGINE_GRID * ENGINE_GRID)
            out.append(min(max(start, 0), full - size))
        return out[0], out[1], min(ENGINE_WINDOW, self.labels_shape[0]), min(ENGINE_WINDOW, self.labels_shape[1])

    def compute(self, point: tuple[float, float]) -> MapWindow:
        """Run the engine on the window around `point` (slow: the network runs; call it in a worker)."""
        from nucseg.inference.predict import predict

        cached = self.cached_window(point)
        if cached is not None:
            return cached
        box = self.box_around(point)
        pixels = np.asarray(self.read_pixels(box))
        result = predict(pixels, self.config, mpp=self.mpp)
        window = MapWindow(as_float_maps(np.asarray(result.probabilities)), box, result.config.postprocess)
        self._windows[box] = window
        while len(self._windows) > CACHE_WINDOWS:
            self._windows.popitem(last=False)
        return window
