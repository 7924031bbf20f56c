"""A uniform view of what is being segmented, at the model's resolution: an in-memory image or a region of a
lazy slide pyramid, read block by block (slides never enter memory whole, DESIGN.md rule 6)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from skimage.transform import resize

from nucseg.errors import InvalidInputError

if TYPE_CHECKING:
    from nucseg.io.slides import Slide

#: within this relative difference of the model's resolution, pixels are used as they are
RESAMPLE_TOLERANCE = 0.1


class ScaledSource:
    """An image region seen at the model's resolution.

    Args:
        image: an (H, W, 3) array (a tile) or a `Slide`.
        model_mpp: microns per pixel the model was trained at.
        mpp: microns per pixel of `image` at level 0; None means "assume the model's".
        region: (y, x, h, w) in level-0 pixels; None means the whole image.
    """

    def __init__(self, image: np.ndarray | Slide, model_mpp: float, mpp: float | None = None,
                 region: tuple[int, int, int, int] | None = None):
        self.slide = None if isinstance(image, np.ndarray) else image
        self.array = image if isinstance(image, np.ndarray) else None
        full = self.array.shape[:2] if self.array is not None else self.slide.shape  # type: ignore[union-attr]
        if mpp is None and self.slide is not None:
            mpp = self.slide.mpp
        self.mpp0 = float(mpp) if mpp else float(model_mpp)
        self.model_mpp = float(model_mpp)
        y, x, h, w = region if region is not None else (0, 0, *full)
        y0, x0 = max(int(y), 0), max(int(x), 0)
        y1, x1 = min(int(y + h), full[0]), min(int(x + w), full[1])
        if y1 <= y0 or x1 <= x0:
            raise InvalidInputError(f"region {region} lies outside the image of size {full[0]} x {full[1]}")
        self.region0 = (y0, x0, y1 - y0, x1 - x0)
        # level to read from: the coarsest whose pixels are still at least as fine as the model's
        self.level = 0
        if self.slide is not None:
            self.level = self.slide.best_level_for_mpp(self.model_mpp)
        self.level_down = self.slide.downsamples[self.level] if self.slide is not None else 1.0
        factor = self.model_mpp / self.mpp0  # level-0 pixels per model pixel
        self.factor = 1.0 if abs(factor - 1.0) < RESAMPLE_TOLERANCE else factor
        self.shape = (max(1, round(self.region0[2] / self.factor)), max(1, round(self.region0[3] / self.factor)))

    @property
    def resampled(self) -> bool:
        return self.factor != 1.0

    def to_level0(self, y: float, x: float) -> tuple[int, int]:
        """Model-resolution coordinates (relative to the region) -> absolute level-0 pixels."""
        return self.region0[0] + round(y * self.factor), self.region0[1] + round(x * self.factor)

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w, 3) uint8 at model resolution, region-relative; outside the image is white (no tissue)."""
        if not self.resampled and self.level_down == 1.0:
            return self._read_level0(*self.to_level0(y, x), h, w)
        # read the matching box at the chosen level, then resize to (h, w)
        ly0 = (self.region0[0] + y * self.factor) / self.level_down
        lx0 = (self.region0[1] + x * self.factor) / self.level_down
        lh = max(1, math.ceil(h * self.factor / self.level_down))
        lw = max(1, math.ceil(w * self.factor / self.level_down))
        if self.slide is not None:
            raw = self.slide.read_region(self.level, int(ly0), int(lx0), lh, lw)
        else:
            raw = self._read_level0(int(ly0), int(lx0), lh, lw)
        if raw.shape[:2] == (h, w):
            return raw
        return resize(raw, (h, w), order=1, preserve_range=True, anti_aliasing=raw.shape[0] > h).astype(np.uint8)

    def _read_level0(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        if self.slide is not None:
            return self.slide.read_region(0, y, x, h, w)
        assert self.array is not None
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        H, W = self.array.shape[:2]
        ys, xs = max(y, 0), max(x, 0)
        ye, xe = min(y + h, H), min(x + w, W)
        if ye > ys and xe > xs:
            out[ys - y : ye - y, xs - x : xe - x] = self.array[ys:ye, xs:xe, :3]
        return out

    def tissue_mask(self) -> tuple[np.ndarray, float] | None:
        """A low-resolution tissue mask of the region and its downsample relative to model pixels (slides only)."""
        if self.slide is None:
            return None
        from nucseg.inference.tissue import tissue_mask

        level = len(self.slide.levels) - 1
        down = self.slide.downsamples[level]
        y0, x0, h, w = self.region0
        thumb = self.slide.read_region(level, int(y0 / down), int(x0 / down),
                                       max(1, math.ceil(h / down)), max(1, math.ceil(w / down)))
        return tissue_mask(thumb), down / self.factor
