"""Tell instance-label files from images, and open them lazily with their pixel size (for the napari reader).

A file holds labels, not an image, when it is:

- our own export (with its `placement`: where it lies on the image it was segmented from): an OME-TIFF named
  "nuclei labels", or a zarr written by `nucseg.io.export.write_labels_zarr`
  (an OME-NGFF label image, ``"image-label"`` in its multiscales metadata, or the older single array with
  ``content: "nuclei instance labels..."``); any OME-NGFF label image is read the same way;
- a single-channel integer PNG or TIFF (MoNuSeg / TNBC / DSB truth, QuPath label exports, binary masks) whose
  pixels look like labels: most pixels equal their right-hand neighbour (flat regions of one id, where an image
  of tissue or a fluorescence camera frame has noise) and some pixels are 0 (background).

JPEG never holds labels (lossy). Everything here is lazy: a pyramid's levels are zarr arrays read tile by tile.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.io.placement import Placement, read_ome_placement

#: a single-channel integer image is labels when at least this fraction of pixels equals its right neighbour ...
FLAT_FRACTION = 0.8
#: ... and at least this fraction is 0 (background)
BACKGROUND_FRACTION = 0.02
#: side of the window of level 0 (its centre) that the test reads
PEEK = 512
OUR_OME_NAME = "nuclei labels"


@dataclasses.dataclass
class LabelFile:
    """Instance labels on disk: `levels` (finest first, lazy arrays (H, W) of integers), level-0 microns per pixel."""

    path: Path
    levels: list[Any]
    mpp: float | None
    source: str
    placement: Placement = dataclasses.field(default_factory=Placement)


def looks_like_labels(sample: np.ndarray) -> bool:
    """Whether a 2-D integer (or boolean) array looks like instance labels or a mask (see the module docstring)."""
    sample = np.asarray(sample)
    if sample.ndim != 2 or sample.size < 2:
        return False
    if sample.dtype == bool:
        return True
    if not np.issubdtype(sample.dtype, np.integer):
        return False
    flat = float((sample[:, 1:] == sample[:, :-1]).mean()) if sample.shape[1] > 1 else 0.0
    return flat >= FLAT_FRACTION and float((sample == 0).mean()) >= BACKGROUND_FRACTION


def _centre(level: Any) -> np.ndarray:
    h, w = level.shape[:2]
    y, x = max(0, (h - PEEK) // 2), max(0, (w - PEEK) // 2)
    from nucseg.io.base import compute_here

    return compute_here(level[y : y + PEEK, x : x + PEEK])


# ------------------------------------------------------------------------------------------------ zarr


def _zarr_attrs(path: Path) -> dict[str, Any]:
    for name in ("zarr.json", ".zattrs"):
        meta = path / name
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
            except (OSError, ValueError):
                return {}
            return data.get("attributes", data) if name == "zarr.json" else data
    return {}


def is_label_zarr(path: str | Path) -> bool:
    """Whether `path` is a zarr folder holding a label image (OME-NGFF image-label, or our older array)."""
    path = Path(path)
    if not path.is_dir():
        return False
    attrs = _zarr_attrs(path)
    ome = attrs.get("ome", attrs)
    if "multiscales" in ome and "image-label" in ome:
        return True
    return _our_content(attrs)


def _our_content(attrs: dict[str, Any]) -> bool:
    nucseg = attrs.get("nucseg")
    content = str(attrs.get("content", "")) + str(nucseg.get("content", "") if isinstance(nucseg, dict) else "")
    return "nuclei instance labels" in content


def is_own_label_zarr(path: str | Path) -> bool:
    """Whether `path` is a zarr folder of labels that nucseg wrote (its attributes carry our content marker)."""
    path = Path(path)
    return path.is_dir() and _our_content(_zarr_attrs(path))


def _open_zarr(path: Path) -> LabelFile:
    import zarr

    attrs = _zarr_attrs(path)
    ome = attrs.get("ome", attrs)
    if "multiscales" not in ome:  # our older single array with attrs mpp / axes
        arr = zarr.open_array(str(path), mode="r")
        mpp = attrs.get("mpp")
        return LabelFile(path, [arr], float(mpp) if mpp else None, "zarr")
    from nucseg.io.ngff import read_labels_ngff, read_labels_placement

    levels, mpp = read_labels_ngff(path)
    return LabelFile(path, levels, mpp, "ome-ngff", read_labels_placement(path, mpp))


# ------------------------------------------------------------------------------------------- PNG / TIFF


def _tiff_labels(path: Path) -> LabelFile | None:
    import tifffile
    import zarr

    from nucseg.io._tiff import ome_mpp, resolution_mpp
    from nucseg.io.limits import check_tiff_series

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            return None
        series = tif.series[0]
        check_tiff_series(path, series, what="level 0")  # before the peek decodes a strip
        key = series.levels[0].keyframe
        shape = [n for n, ax in zip(series.shape, series.axes) if n > 1 or ax in "YX"]
        if len(shape) != 2 or key.samplesperpixel != 1 or not (
                np.issubdtype(series.dtype, np.integer) or series.dtype == bool):
            return None
        ours = bool(tif.is_ome and f'Name="{OUR_OME_NAME}"' in (tif.ome_metadata or ""))
        mpp = ome_mpp(tif.ome_metadata or "") if tif.is_ome else None
        if mpp is None:
            mpp = resolution_mpp(tif, key)
        placement = read_ome_placement(tif.ome_metadata, mpp) if tif.is_ome and tif.ome_metadata else Placement()
        n_levels = len(series.levels)
    levels = [zarr.open_array(tifffile.imread(path, aszarr=True, level=i), mode="r") for i in range(n_levels)]
    levels = [lv if lv.ndim == 2 else _Squeezed(lv) for lv in levels]
    if not ours and not looks_like_labels(_centre(levels[0])):
        return None
    from nucseg.io.base import plausible_mpp

    return LabelFile(path, levels, plausible_mpp(mpp) if not ours else mpp, "ome-tiff" if ours else "tiff", placement)


class _Squeezed:
    """A (1, ..., H, W) zarr array seen as (H, W)."""

    def __init__(self, arr: Any):
        self.arr = arr
        self.shape = tuple(n for n in arr.shape if n > 1)[-2:]
        self.dtype = arr.dtype
        self.ndim = 2

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.arr[(0,) * (self.arr.ndim - 2) + (key if isinstance(key, tuple) else (key,))])


def _png_labels(path: Path) -> LabelFile | None:
    from PIL import Image

    from nucseg.io.limits import check_declared_size

    with Image.open(path) as im:
        if im.mode not in ("I;16", "I;16B", "I;16L", "I", "L", "1"):
            return None
        check_declared_size(path, im.height, im.width, whole=True)
        im.load()
        array = np.asarray(im)
        dpi = im.info.get("dpi")
    if not looks_like_labels(array):
        return None
    from nucseg.io.base import plausible_mpp
    from nucseg.io.masks import as_label_image

    mpp = plausible_mpp(25400.0 / float(dpi[0])) if dpi and float(dpi[0]) > 0 else None
    return LabelFile(path, [as_label_image(array, str(path))], mpp, "png")  # a 0 / 255 mask: its components


def open_label_file(path: str | Path) -> LabelFile | None:
    """The file's labels when it holds labels (see the module docstring), else None (it is an image, or no file
    we read). Cheap: at most a `PEEK` x `PEEK` window of a TIFF is decoded to decide.

    Raises:
        the readers' errors for files that cannot be parsed (see `nucseg.io.base.read_errors`).
    """
    from nucseg.io.slides import suffix_of

    path = Path(path)
    if path.is_dir():
        return _open_zarr(path) if is_label_zarr(path) else None
    suffix = suffix_of(path)
    if suffix == ".png":
        return _png_labels(path)
    if suffix in (".tif", ".tiff", ".ome.tif", ".ome.tiff"):
        return _tiff_labels(path)
    return None
