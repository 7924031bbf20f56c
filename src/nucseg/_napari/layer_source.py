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


def _microns(unit: Any) -> float | None:
    """How many microns one `unit` is (a pint unit or its name), or None when it is not a length."""
    try:
        import pint

        quantity = pint.get_application_registry().Quantity(1, str(unit))
        return float(quantity.to("micrometer").magnitude)
    except Exception:  # pint raises several unrelated types for "pixel" and unknown names
        return None


def attributes_mpp(attributes: dict[str, Any]) -> float | None:
    """Microns per pixel of a layer from its attributes (npe2's writer attributes; `layer_mpp` makes them): its
    metadata's "mpp", else a square scale in length units (napari ``units``); None if unknown."""
    mpp = (attributes.get("metadata") or {}).get("mpp")
    if mpp:
        return float(mpp)
    scale, units = attributes.get("scale"), attributes.get("units")
    if scale is None or len(scale) < 2 or units is None or len(units) < 2:
        return None
    sy, sx = (float(s) * (_microns(u) or 0.0) for s, u in zip(scale[-2:], tuple(units)[-2:], strict=True))
    return sy if sy > 0 and abs(sy - sx) <= 1e-9 * sy else None


def layer_mpp(layer: Layer) -> float | None:
    """Microns per pixel of a layer (`attributes_mpp`): ``metadata["mpp"]`` (set by the plugin's reader, by results
    and by the pixel-size field), else a square scale in length units; None when unknown."""
    return attributes_mpp({"metadata": layer.metadata, "scale": tuple(layer.scale), "units": tuple(layer.units)})
