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
import threading
import weakref
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from nucseg.errors import InvalidInputError
from nucseg.inference.tissue import TissueMap
from nucseg.io.base import (  # the one RGB rule (re-exported for the engine's callers), the one mpp range
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
    return model_extent(0, int(shape0[0]), factor)[1], model_extent(0, int(shape0[1]), factor)[1]


@dataclasses.dataclass(frozen=True)
class LevelGeometry:
    """How model pixels of a region map to level-0 pixels (small and picklable, for worker processes).

    Model pixels lie on one grid anchored at the image's origin: model pixel M covers level-0 pixels
    [M * factor, (M + 1) * factor), and level-0 pixel Y takes the label of model pixel floor((Y + 0.5) / factor).
    Every region of an image sees the same grid, so the same pixels give the same labels whatever was asked.

    Attributes:
        region0: (y, x, h, w) of the region in level-0 pixels.
        factor: level-0 pixels per model pixel (exactly 1.0 when the pixels are used as they are).
        origin: (y, x) of the region's first model pixel on the image's model grid.
        shape: (h, w) of the region in model pixels (None: not known, e.g. a block handled on its own).
    """

    region0: tuple[int, int, int, int]
    factor: float
    origin: tuple[int, int] = (0, 0)
    shape: tuple[int, int] | None = None

    @property
    def resampled(self) -> bool:
        return self.factor != 1.0

    def to_level0(self, y: float, x: float) -> tuple[int, int]:
        """Model coordinates (relative to the region) -> absolute level-0 pixels (where that model pixel starts)."""
        return round((self.origin[0] + y) * self.factor), round((self.origin[1] + x) * self.factor)

    def _axis(self, m0: int, m1: int, axis: int) -> tuple[int, int, np.ndarray | None]:
        """Level-0 pixels [y0, y1) (absolute) whose model pixel lies in [m0, m1) (region model pixels), and for
        each the index of its model pixel in that range (None: the same pixels)."""
        start, stop = self.origin[axis] + m0, self.origin[axis] + m1
        if not self.resampled:
            return start, stop, None
        y0, y1 = math.ceil(start * self.factor - 0.5), math.ceil(stop * self.factor - 0.5)
        index = np.floor((np.arange(y0, y1) + 0.5) / self.factor).astype(np.intp) - start
        return y0, y1, np.clip(index, 0, m1 - m0 - 1)

    def labels_at_level0(self, labels: np.ndarray, origin: tuple[int, int]
                         ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """`labels` (model pixels, top-left at region model pixel `origin`) at level 0, and its (y0, x0, y1, x1)
        relative to the region (it may reach beyond the region: callers clip)."""
        ry, rx = origin
        y0, y1, iy = self._axis(ry, ry + labels.shape[0], 0)
        x0, x1, ix = self._axis(rx, rx + labels.shape[1], 1)
        if iy is not None:
            labels = labels[np.ix_(iy, ix)]
        oy, ox = self.region0[:2]
        return labels, (y0 - oy, x0 - ox, y1 - oy, x1 - ox)


def model_extent(start: int, length: int, factor: float) -> tuple[int, int]:
    """First model pixel and number of model pixels that overlap level-0 pixels [start, start + length)."""
    if factor == 1.0:
        return start, length
    first = math.floor(start / factor + 1e-9)
    return first, max(1, math.ceil((start + length) / factor - 1e-9) - first)


class ScaledSource:
    """An image region seen at the model's resolution, on the image's model-pixel grid.

    Args:
        image: an (H, W, 3) array (a tile) or a `RegionSource` (a `Slide`).
        model_mpp: microns per pixel the model was trained at.
        mpp: microns per pixel of `image` at level 0; None means the source's own, or if it has none, "assume
            the model's".
        region: (y, x, h, w) in level-0 pixels; None means the whole image.

    Attributes:
        mpp_given: the pixel size the caller or the file stated, None when assumed (results must not claim it).
        shape: (h, w) of the region in model pixels; origin: its top-left on the image's model grid;
        full_shape: (h, w) of the whole image in model pixels.

    Reads take region coordinates and may reach beyond the region (the image's real pixels: context) and beyond
    the image (white). A model pixel's value depends on its place on the image's grid only, never on the read
    that fetched it: resampling interpolates at exact positions (after the anti-aliasing blur when shrinking,
    from a margin wide enough that the read's border never shows).
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
        (oy, h_m), (ox, w_m) = model_extent(y0, y1 - y0, self.factor), model_extent(x0, x1 - x0, self.factor)
        self.origin = (oy, ox)
        self.shape = (h_m, w_m)
        self.full_shape = (model_extent(0, full[0], self.factor)[1], model_extent(0, full[1], self.factor)[1])

    @property
    def resampled(self) -> bool:
        return self.factor != 1.0

    @property
    def whole(self) -> bool:
        """Whether the region is the whole image."""
        return self.origin == (0, 0) and self.shape == self.full_shape

    @property
    def geometry(self) -> LevelGeometry:
        return LevelGeometry(self.region0, self.factor, self.origin, self.shape)

    def to_level0(self, y: float, x: float) -> tuple[int, int]:
        """Model-resolution coordinates (relative to the region) -> absolute level-0 pixels (`LevelGeometry`)."""
        return self.geometry.to_level0(y, x)

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w, 3) uint8 at model resolution, region-relative; outside the image is white (no tissue)."""
        return self.read_model(self.origin[0] + y, self.origin[1] + x, h, w)

    def read_model(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w, 3) uint8 of the image's model-pixel grid at (y, x) (not relative to the region)."""
        if not self.resampled and self.level_down == 1.0:
            return self.image.read_region(0, y, x, h, w)
        scale = self.factor / self.level_down  # level pixels per model pixel
        py = (np.arange(y, y + h) + 0.5) * scale - 0.5  # where each model pixel's centre falls in the level
        px = (np.arange(x, x + w) + 0.5) * scale - 0.5
        sigma = max(0.0, (scale - 1.0) / 2.0)  # anti-aliasing when shrinking (skimage's resize rule)
        margin = math.ceil(4 * sigma) + 1 if sigma > 0 else 0
        ly0, lx0 = math.floor(py[0]) - margin, math.floor(px[0]) - margin
        ly1, lx1 = math.floor(py[-1]) + 2 + margin, math.floor(px[-1]) + 2 + margin
        raw = self.image.read_region(self.level, ly0, lx0, ly1 - ly0, lx1 - lx0).astype(np.float32)
        if sigma > 0:
            from scipy import ndimage as ndi

            raw = ndi.gaussian_filter(raw, (sigma, sigma, 0), mode="nearest", truncate=4.0)
        out = _interpolate(_interpolate(raw, py - ly0, 0), px - lx0, 1)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def tissue_mask(self) -> TissueMap:
        """The whole image's low-resolution tissue mask (`image_tissue`), seen from the region."""
        return image_tissue(self.image, self.factor).moved(self.origin)


def _interpolate(raw: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of `raw` at fractional indices `coords` along `axis`."""
    i0 = np.floor(coords).astype(np.intp)
    weight = (coords - i0).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(raw.ndim)])
    low = np.take(raw, i0, axis=axis)
    return low + (np.take(raw, i0 + 1, axis=axis) - low) * weight


def image_tissue(image: RegionSource, factor: float) -> TissueMap:
    """A low-resolution tissue mask of the whole image (model pixels from its origin), kept per image object.

    One mask pixel covers about `TISSUE_MASK_DOWNSAMPLE` model pixels: read from the coarsest level that is
    still finer, then pooled (highest saturation per block: small stained objects are kept), so a flat image
    and a pyramid are handled alike (and a flat image's mask costs little). It is the image's, whatever region
    is asked: the threshold (Otsu's) is the image's, and so are the glass tiles skipped.
    """
    cache = source_cache(image)
    key = ("tissue", factor)
    if key in cache:
        return cache[key]
    from nucseg.inference.tissue import tissue_mask_blockwise

    h, w = (int(v) for v in image.shape[:2])
    target = max(TISSUE_MASK_DOWNSAMPLE * factor, math.sqrt(h * w / TISSUE_MAX_PIXELS))
    downs = [float(d) for d in image.downsamples]
    level = max((i for i, d in enumerate(downs) if d <= target), key=lambda i: downs[i], default=0)
    down = downs[level]
    k = max(1, int(target / down + 0.01))
    # read block by block: a flat image's level 0 read whole as float32 took > 9 GB (fault 3)
    mask = tissue_mask_blockwise(lambda y, x, bh, bw: image.read_region(level, y, x, bh, bw),
                                 (max(1, math.ceil(h / down)), max(1, math.ceil(w / down))), pool=k)
    cache[key] = TissueMap(mask, down * k / factor)
    return cache[key]


_caches: dict[int, tuple[weakref.ref, dict]] = {}
_caches_lock = threading.Lock()


def source_cache(image: object) -> dict:
    """A dict that lives as long as `image` (an open slide, a layer's pyramid): what is a function of the image
    alone (its tissue mask, its squeeze-excitation gates) is computed once per image object. An object that
    cannot be referenced weakly gets a fresh dict each time (nothing is kept)."""
    key = id(image)
    with _caches_lock:
        entry = _caches.get(key)
        if entry is not None and entry[0]() is image:
            return entry[1]
        try:
            ref = weakref.ref(image, lambda _ref, k=key: _caches.pop(k, None))
        except TypeError:
            return {}
        _caches[key] = (ref, {})
        return _caches[key][1]
