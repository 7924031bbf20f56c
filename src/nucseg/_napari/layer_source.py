"""Image layers as what the engine reads: the napari-layer region source.

`image_input` captures an Image layer on the GUI thread (cheap: references, no pixels); `ImageInput.load`, called in
the worker, gives what `iter_predict` takes: an RGB array, the slide the layer was opened from (the plugin's reader
records its path), or a `LayerPyramid` over the layer's own level arrays (a pyramid napari got from elsewhere).
When the engine's region-source protocol (`nucseg.inference.source`) lands, `LayerPyramid` is this package's
implementation of it for napari layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nucseg.errors import InvalidInputError
from nucseg.io.base import as_rgb_uint8

if TYPE_CHECKING:
    from napari.layers import Layer


class LayerPyramid:
    """A multiscale image layer's level arrays as a region source (`shape`, `mpp`, `downsamples`, `read_region`:
    the `RegionSource` protocol of the one engine, and what a `nucseg.io.slides.Slide` offers today).

    Args:
        levels: (H, W, 3|4) arrays (numpy, dask or zarr), finest first.
        mpp: microns per pixel of level 0, or None when unknown.
    """

    def __init__(self, levels: Sequence[Any], mpp: float | None):
        self.levels = list(levels)
        self.mpp = mpp
        self.shape = tuple(int(s) for s in self.levels[0].shape[:2])
        self.downsamples = [self.shape[0] / int(level.shape[0]) for level in self.levels]

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """The coarsest level whose pixels are still at least as fine as `target_mpp` (1% slack)."""
        if not self.mpp:
            return 0
        fine = [i for i, d in enumerate(self.downsamples) if self.mpp * d <= target_mpp * 1.01]
        return max(fine, key=lambda i: self.downsamples[i]) if fine else 0

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w, 3) uint8 pixels of `level` at (y, x); outside the image is white."""
        array = self.levels[level]
        H, W = int(array.shape[0]), int(array.shape[1])
        out = np.full((h, w, 3), 255, np.uint8)
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
        if y1 > y0 and x1 > x0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = as_rgb_uint8(np.asarray(array[y0:y1, x0:x1]))
        return out


@dataclasses.dataclass(frozen=True)
class ImageInput:
    """What a segmentation run needs from an image layer, captured on the GUI thread.

    Attributes:
        name: layer name.
        data: the layer's data (an array, or a list of level arrays when multiscale).
        multiscale: whether `data` is a pyramid.
        mpp: microns per pixel of level 0 (from the layer's metadata), or None when unknown.
        path: the file the plugin's reader opened it from, if any.
        shape: level-0 (height, width).
    """

    name: str
    data: Any
    multiscale: bool
    mpp: float | None
    path: str | None
    shape: tuple[int, int]

    def load(self) -> Any:
        """The image to segment: an (H, W, 3) uint8 array, or a Slide for pyramids. Call it in a worker."""
        if not self.multiscale:
            return as_rgb_uint8(np.asarray(self.data), self.name)
        if self.path:
            try:
                from nucseg.io.slides import open_slide
            except ModuleNotFoundError as err:
                if err.name != "nucseg.io.slides":
                    raise
            else:
                return open_slide(self.path)
        return LayerPyramid(self.data, self.mpp)


def image_input(layer: Layer) -> ImageInput:
    """Capture an image layer for `iter_predict`.

    Raises:
        InvalidInputError: the layer is not a 2-D (RGB or grey) image.
    """
    data = layer.data
    multiscale = bool(getattr(layer, "multiscale", False))
    level0 = data[0] if multiscale else data
    rgb = bool(getattr(layer, "rgb", False))
    if level0.ndim - (1 if rgb else 0) != 2:
        raise InvalidInputError(
            f"layer {layer.name!r} has shape {tuple(level0.shape)}; segmentation needs one 2-D RGB image "
            "(for a stack, open the plane you want as its own layer)")
    return ImageInput(name=layer.name, data=data, multiscale=multiscale, mpp=layer_mpp(layer),
                      path=layer.metadata.get("nucseg_path"), shape=(int(level0.shape[0]), int(level0.shape[1])))


def layer_mpp(layer: Layer) -> float | None:
    """Microns per pixel of a layer: ``metadata["mpp"]`` (set by the plugin's reader and by results), else None."""
    mpp = layer.metadata.get("mpp")
    return float(mpp) if mpp else None
