"""Accumulating tile predictions into one map with tapered blending (pure numpy)."""

from __future__ import annotations

import numpy as np

from nucseg.inference.tiling import Tile, blend_window


class BlendCanvas:
    """Sums weighted tile predictions over a (C, H, W) canvas; `result()` divides by the summed weights.

    Args:
        shape: (H, W) of the region being predicted.
        channels: prediction channels per pixel.
        tile: tile side; overlap: pixels shared by neighbours (sets the taper).
        origin: (y, x) of the canvas in the coordinates the tiles use.
    """

    def __init__(self, shape: tuple[int, int], channels: int, tile: int, overlap: int, origin=(0, 0)):
        self.shape = shape
        self.origin = origin
        self.overlap = overlap
        self.sum = np.zeros((channels, *shape), dtype=np.float32)
        self.weight = np.zeros(shape, dtype=np.float32)
        self.window = blend_window(tile, overlap)
        self._windows = {self.window.shape: self.window}

    def _window(self, h: int, w: int) -> np.ndarray:
        """The weights of an (h, w) tile (the last tiles of a grid are clipped at the image's end)."""
        if (h, w) not in self._windows:
            self._windows[(h, w)] = blend_window(h, self.overlap, w)
        return self._windows[(h, w)]

    def add(self, tile: Tile, prediction: np.ndarray, offset: tuple[int, int] = (0, 0)) -> None:
        """Add a (C, h, w) prediction of `tile`, or of its part starting at `offset` (y, x) within it (weighted
        as that part of the whole tile); parts falling outside the canvas are ignored."""
        oy, ox = self.origin
        y0, x0 = tile.y0 + offset[0] - oy, tile.x0 + offset[1] - ox
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y0 + prediction.shape[1], self.shape[0]), min(x0 + prediction.shape[2], self.shape[1])
        if cy1 <= cy0 or cx1 <= cx0:
            return
        ty, tx = slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0)
        window = self._window(tile.y1 - tile.y0, tile.x1 - tile.x0)[offset[0]:, offset[1]:]
        w = window[ty, tx]
        self.sum[:, cy0:cy1, cx0:cx1] += prediction[:, ty, tx] * w
        self.weight[cy0:cy1, cx0:cx1] += w

    def result(self, out: np.ndarray | None = None) -> np.ndarray:
        """The blended (C, H, W) map, in `out` if given (zeros where no tile covered a pixel)."""
        if out is None:
            out = np.zeros_like(self.sum)
        covered = self.weight > 0
        np.divide(self.sum, self.weight, out=out, where=covered[None])
        return out
