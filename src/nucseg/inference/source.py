"""What the engine reads: one small region-source protocol, its in-memory implementation, the one RGB check for
arrays, and `ScaledSource`, the view of a source's region at the model's resolution that every run reads through.

A region source (`RegionSource`) is anything with a level-0 ``shape``, an ``mpp`` (None when unknown), the
``downsamples`` of its pyramid levels and ``read_region(level, y, x, h, w)``: `nucseg.io.slides.Slide`,
`ArraySource` (an in-memory image, one level) and the napari plugin's multiscale layer source all are. The engine
needs nothing else: the tissue mask comes from a coarse level read through ``read_region``, so every kind of
source gets the same background skipping and the same calibration, and a PNG passed as an array gives the labels
it gives opened as a slide. Slides never enter memory whole (DESIGN.md rule 6): regions are read block by block.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from skimage.transform import resize

from nucseg.errors import InvalidInputError
from nucseg.io.base import (  # the one RGB rule, the one mpp range
    as_rgb_uint8,
    check_mpp,
    require_square_pixels,
)
from nucseg.io.base import best_level as level_for_mpp  # the one pyramid-level rule

#: within this relative difference of the model's resolution, pixels are used as they are
RESAMPLE_TOLERANCE = 0.1
#: pixels at most this many times coarser than the model's are upsampled to it (2 µm/px, a 5x scan, for a 0.25 µm/px
#: model); coarser ones are refused (`check_scale`): a 6-10 µm nucleus would be 3-5 px wide, and the upsampled
#: image MAX_UPSAMPLE² times the input's pixels
MAX_UPSAMPLE = 8.0
#: a tissue-mask pixel covers this many model pixels along each side (2 um at 0.25 um/px: a 512-px tile is 64 mask
#: pixels), or more where the mask would otherwise exceed TISSUE_MAX_PIXELS
TISSUE_MASK_DOWNSAMPLE = 8
TISSUE_MAX_PIXELS = 4096 * 4096


@runtime_checkable
class RegionSource(Protocol):
    """What `iter_predict` reads: a lazy, possibly multiscale RGB image.

    Attributes:
        shape: level-0 (height, width).
        mpp: microns per pixel of level 0, or None when unknown.
        downsamples: level-0 pixels per pixel of each level, finest (1.0) first.
    """

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def mpp(self) -> float | None: ...

    @property
    def downsamples(self) -> Sequence[float]: ...

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w, 3) uint8 pixels of `level` with top-left (y, x) in that level's pixels; white outside."""
        ...


class ArraySource:
    """An in-memory (H, W, 3) image as a one-level `RegionSource`.

    Args:
        image: (H, W, 3|4) or (H, W) array (converted by `as_rgb_uint8`).
        mpp: microns per pixel, or None when unknown.
    """

    def __init__(self, image: np.ndarray, mpp: float | None = None, name: str = "image"):
        self.array = as_rgb_uint8(image, name)
        self.mpp = mpp
        self.shape = (int(self.array.shape[0]), int(self.array.shape[1]))
        self.downsamples = [1.0]

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        if level != 0:
            raise InvalidInputError(f"level {level} does not exist; an in-memory image has level 0 only")
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        H, W = self.shape
        ys, xs = max(y, 0), max(x, 0)
        ye, xe = min(y + h, H), min(x + w, W)
        if ye > ys and xe > xs:
            out[ys - y : ye - y, xs - x : xe - x] = self.array[ys:ye, xs:xe]
        return out


def as_source(image: np.ndarray | RegionSource) -> RegionSource:
    """`image` as a `RegionSource`: arrays are wrapped in `ArraySource`, sources are returned as they are.

    Raises:
        InvalidInputError: neither an array nor a region source.
    """
    if isinstance(image, np.ndarray):
        return ArraySource(image)
    if not isinstance(image, RegionSource):
        raise InvalidInputError(f"cannot segment a {type(image).__name__}: pass an (H, W, 3) array or a slide "
                                "(nucseg.io.slides.open_slide)")
    return image


def check_scale(mpp: float | None, model_mpp: float, name: str = "the image") -> float:
    """Level-0 pixels per model pixel for pixels of `mpp` (None: unknown, taken as the model's), refused where the
    model would see them upsampled more than `MAX_UPSAMPLE` times (inference and fine-tuning resample alike).

    Raises:
        InvalidInputError: `mpp` is more than `MAX_UPSAMPLE` times the model's.
    """
    factor = float(model_mpp) / float(mpp) if mpp else 1.0
    if factor * MAX_UPSAMPLE < 1.0 - 1e-9:
        raise InvalidInputError(
            f"{name} has {mpp:g} µm/px, {1 / factor:.0f} times coarser than the model's {model_mpp:g} µm/px: nuclei "
            f"would be a few pixels wide (at most {MAX_UPSAMPLE:g} times coarser is segmented); check --mpp (20x is "
            "about 0.5, 40x about 0.25) or segment a finer scan")
    return factor


def best_level(source: RegionSource, target_mpp: float) -> int:
    """The coarsest level of `source` whose pixels are at least as fine as `target_mpp`
    (`nucseg.io.base.best_level`, the one rule)."""
    return level_for_mpp(source.downsamples, source.mpp, target_mpp)


def level0_factor(mpp: float | None, model_mpp: float) -> float:
    """Level-0 pixels per model pixel of an image at `mpp` µm/px (None: assumed at the model's resolution);
    exactly 1.0 within `RESAMPLE_TOLERANCE`, where the pixels are used as they are."""
    factor = float(model_mpp) / float(mpp) if mpp else 1.0
    return 1.0 if abs(factor - 1.0) < RESAMPLE_TOLERANCE else factor


def model_shape(shape0: Sequence[int], mpp: float | None, model_mpp: float) -> tuple[int, int]:
    """(h, w) at the model's resolution of a level-0 box of `shape0` (h, w) at `mpp` µm/px."""
    factor = level0_factor(mpp, model_mpp)
    return max(1, round(shape0[0] / factor)), max(1, round(shape0[1] / factor))


@dataclasses.dataclass(frozen=True)
class LevelGeometry:
    """How model pixels of a region map to level-0 pixels (small and picklable, for worker processes).

    Attributes:
        region0: (y, x, h, w) of the region in level-0 pixels.
        factor: level-0 pixels per model pixel (exactly 1.0 when the pixels are used as they are).
    """

    region0: tuple[int, int, int, int]
    factor: float

    @property
    def resampled(self) -> bool:
        return self.factor != 1.0

    def to_level0(self, y: float, x: float) -> tuple[int, int]:
        """Model-resolution coordinates (relative to the region) -> absolute level-0 pixels."""
        return self.region0[0] + round(y * self.factor), self.region0[1] + round(x * self.factor)


class ScaledSource:
    """An image region seen at the model's resolution.

    Args:
        image: an (H, W, 3) array (a tile) or a `RegionSource` (a `Slide`).
        model_mpp: microns per pixel the model was trained at.
        mpp: microns per pixel of `image` at level 0; None means the source's own, or if it has none, "assume
            the model's".
        region: (y, x, h, w) in level-0 pixels; None means the whole image.

    Attributes:
        mpp_given: the pixel size the caller or the file stated, None when assumed (results must not claim it).
    """

    def __init__(self, image: np.ndarray | RegionSource, model_mpp: float, mpp: float | None = None,
                 region: tuple[int, int, int, int] | None = None):
        self.image = as_source(image)
        require_square_pixels(self.image)  # X 0.5 and Y 0.25 µm/px taken as square gave areas twice the truth
        full = tuple(int(v) for v in self.image.shape[:2])
        model_mpp = check_mpp(model_mpp, "the model's mpp")
        if mpp:  # None or 0: unknown
            mpp = check_mpp(mpp, "the pixel size")
        if not mpp:
            mpp = self.image.mpp
        self.mpp_given = float(mpp) if mpp else None
        self.mpp0 = float(mpp) if mpp else float(model_mpp)
        self.model_mpp = float(model_mpp)
        y, x, h, w = region if region is not None else (0, 0, *full)
        y0, x0 = max(int(y), 0), max(int(x), 0)
        y1, x1 = min(int(y + h), full[0]), min(int(x + w), full[1])
        if y1 <= y0 or x1 <= x0:
            raise InvalidInputError(f"the region x={int(x)}, y={int(y)}, width {int(w)}, height {int(h)} (level-0 "
                                    f"pixels) lies outside the image, which is {full[1]} px wide and {full[0]} px "
                                    "high")
        self.region0 = (y0, x0, y1 - y0, x1 - x0)
        # level to read from: the coarsest whose pixels are still at least as fine as the model's
        self.level = best_level(self.image, self.model_mpp) if len(self.image.downsamples) > 1 else 0
        self.level_down = float(self.image.downsamples[self.level])
        check_scale(self.mpp0, self.model_mpp)  # pixels too coarse for the model are refused
        self.factor = level0_factor(self.mpp0, self.model_mpp)  # level-0 pixels per model pixel
        self.shape = model_shape(self.region0[2:], self.mpp0, self.model_mpp)

    @property
    def resampled(self) -> bool:
        return self.factor != 1.0

    @property
    def geometry(self) -> LevelGeometry:
        return LevelGeometry(self.region0, self.factor)

    def to_level0(self, y: float, x: float) -> tuple[int, int]:
        """Model-resolution coordinates (relative to the region) -> absolute level-0 pixels (`LevelGeometry`)."""
        return self.geometry.to_level0(y, x)

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w, 3) uint8 at model resolution, region-relative; outside the image is white (no tissue)."""
        if not self.resampled and self.level_down == 1.0:
            return self._read_level0(*self.to_level0(y, x), h, w)
        # read the matching box at the chosen level, then resize to (h, w)
        ly0 = (self.region0[0] + y * self.factor) / self.level_down
        lx0 = (self.region0[1] + x * self.factor) / self.level_down
        lh = max(1, math.ceil(h * self.factor / self.level_down))
        lw = max(1, math.ceil(w * self.factor / self.level_down))
        raw = self.image.read_region(self.level, int(ly0), int(lx0), lh, lw)
        if raw.shape[:2] == (h, w):
            return raw
        return resize(raw, (h, w), order=1, preserve_range=True, anti_aliasing=raw.shape[0] > h).astype(np.uint8)

    def _read_level0(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self.image.read_region(0, y, x, h, w)

    def tissue_mask(self) -> tuple[np.ndarray, float]:
        """A low-resolution tissue mask of the region and its downsample relative to model pixels.

        One mask pixel covers about `TISSUE_MASK_DOWNSAMPLE` model pixels: read from the coarsest level that is
        still finer, then pooled (highest saturation per block: small stained objects are kept), so a flat image
        and a pyramid are handled alike (and a flat image's mask costs little).
        """
        from nucseg.inference.tissue import tissue_mask_blockwise

        y0, x0, h, w = self.region0
        target = max(TISSUE_MASK_DOWNSAMPLE * self.factor, math.sqrt(h * w / TISSUE_MAX_PIXELS))
        downs = [float(d) for d in self.image.downsamples]
        level = max((i for i, d in enumerate(downs) if d <= target), key=lambda i: downs[i], default=0)
        down = downs[level]
        ly, lx = int(y0 / down), int(x0 / down)
        k = max(1, int(target / down + 0.01))
        mask = tissue_mask_blockwise(lambda y, x, bh, bw: self.image.read_region(level, ly + y, lx + x, bh, bw),
                                     (max(1, math.ceil(h / down)), max(1, math.ceil(w / down))), pool=k)
        return mask, down * k / self.factor
