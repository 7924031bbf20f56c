"""napari reader hook (npe2 ``get_reader``): slides and tiles as RGB image layers in µm, label files as labels.

- A slide (SVS, OME-TIFF, TIFF, NDPI, MRXS, SCN, BIF, Philips TIFF, a DICOM WSI folder or one of its .dcm
  files) becomes one image layer; its levels are lazy dask arrays read tile by tile (`nucseg.io.slides`). When
  a file holds a single level larger than `DISPLAY_LEVEL_SIZE` px, lazily subsampled display levels (every
  2nd, 4th... pixel) are added, so napari never has to draw the whole level at once; the layer is then multiscale.
- A PNG / JPEG tile becomes one plain image layer.
- Instance labels become a labels layer (`nucseg.io.label_files`): a single-channel integer PNG / TIFF whose
  pixels look like labels (MoNuSeg truth, masks), our exported OME-TIFF and OME-NGFF zarr labels (multiscale).
- A folder gives one layer per input in it (sorted by name), not a stack: tiles differ in size, and the
  segmentation widget works on one 2-D image at a time. A DICOM folder is one slide. A list of files is read
  the same way.

Layers whose file says its microns per pixel get ``scale=(mpp, mpp)`` and ``units=("micrometer",) * 2``, so the
scale bar reads µm; others stay in pixels. Image layers get ``rgb=True`` and ``metadata={"nucseg_path", "mpp",
"format", "reader", "modality", ...}`` so the widgets can reopen the file and respect its resolution; a slide that
looks like fluorescence is also reported with a warning (the default model is for brightfield H&E). A file the
reader claims but cannot read raises `SlideReadError` from the reader function; napari then shows the one-line
message (as "Original error from plugin ...") and keeps running.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nucseg.io.label_files import LabelFile, is_label_zarr, open_label_file
from nucseg.io.slides import (
    Slide,
    is_dicom_folder,
    is_supported,
    list_images,
    open_slide,
    slide_modality,
    suffix_of,
)

LayerData = tuple[Any, dict[str, Any], str]
#: a single-level slide with a side longer than this gets subsampled display levels
DISPLAY_LEVEL_SIZE = 2048
MICRONS = ("micrometer", "micrometer")


def _is_zarr_folder(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or any((path / n).exists() for n in (".zarray", ".zgroup", "zarr.json"))


def _claims(path: Path) -> bool:
    if path.is_dir():
        if is_label_zarr(path):
            return True
        return not _is_zarr_folder(path) and bool(list_images(path))
    return is_supported(path)


def get_reader(path: str | Sequence[str]) -> Callable[[str | Sequence[str]], list[LayerData]] | None:
    """Return `read_slides` when every path is a supported file, a DICOM folder, a label zarr or a folder holding
    images, else None.

    Args:
        path: one path, or a list of paths (napari passes a list when opening several files as a stack).
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(_claims(Path(p)) for p in paths):
        return None
    return read_slides


def display_levels(slide: Slide) -> list[Any]:
    """The slide's levels, plus subsampled ones when a single level is larger than `DISPLAY_LEVEL_SIZE`."""
    levels = list(slide.levels)
    if len(levels) == 1:
        while max(levels[-1].shape[:2]) > DISPLAY_LEVEL_SIZE:
            levels.append(levels[-1][::2, ::2])
    return levels


def _name(path: Path) -> str:
    return path.name[: -len(suffix_of(path))] if suffix_of(path) and not path.is_dir() else path.name


def _calibrated(kwargs: dict[str, Any], mpp: float | None, mpp_xy: tuple[float, float] | None = None
                ) -> dict[str, Any]:
    if mpp:
        kwargs.update(scale=(mpp, mpp), units=MICRONS)
    elif mpp_xy:  # pixels that are not square: shown true to size; metadata "mpp" stays None (no single size)
        kwargs.update(scale=(mpp_xy[1], mpp_xy[0]), units=MICRONS)
    return kwargs


def slide_layer(slide: Slide) -> LayerData:
    """One image layer tuple for an open slide (see the module docstring)."""
    levels = display_levels(slide)
    multiscale = len(levels) > 1
    modality, reason = slide_modality(slide)
    if modality == "fluorescence":
        warnings.warn(f"{slide.path.name} looks like a fluorescence slide ({reason}); the default model segments "
                      "brightfield H&E", stacklevel=2)
    kwargs: dict[str, Any] = {
        "name": _name(slide.path) or slide.path.name,
        "rgb": True,
        "multiscale": multiscale,
        "contrast_limits": [0, 255],
        "metadata": {"nucseg_path": str(slide.path), "mpp": slide.mpp, "format": slide.format,
                     "reader": slide.reader, "modality": modality, "modality_reason": reason,
                     "associated": list(slide.associated), "icc": slide.icc,
                     "mpp_xy": list(slide.mpp_xy) if slide.mpp_xy else None},
    }
    return (levels if multiscale else levels[0], _calibrated(kwargs, slide.mpp, slide.mpp_xy), "image")


def labels_layer(labels: LabelFile) -> LayerData:
    """One labels layer tuple for a label file (multiscale for pyramids)."""
    multiscale = len(labels.levels) > 1
    name = _name(labels.path)
    kwargs: dict[str, Any] = {
        "name": name if "label" in name.lower() else f"{name} labels",  # truth beside its image: not "x [1]"
        "multiscale": multiscale,
        "metadata": {"nucseg_path": str(labels.path), "mpp": labels.mpp, "format": labels.source},
    }
    data = labels.levels if multiscale else labels.levels[0]
    return (data, _calibrated(kwargs, labels.mpp), "labels")


def _inputs(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not is_label_zarr(p) and not is_dicom_folder(p):
            found = list_images(p)
            if not found:
                open_slide(p)  # raises SlideReadError: "is a folder with no image files"
            files.extend(found)
        else:
            files.append(p)
    return files


def read_slides(path: str | Sequence[str]) -> list[LayerData]:
    """Read one or more files or folders into image and labels layer tuples.

    Raises:
        SlideReadError: a file cannot be read (missing, empty, truncated, corrupt), or a folder holds no images.
        UnsupportedFileError: a file's suffix is not handled.
    """
    from nucseg.io.base import read_errors

    layers = []
    for f in _inputs([path] if isinstance(path, (str, Path)) else list(path)):
        try:
            labels = open_label_file(f)
        except read_errors():  # not readable as labels: open_slide says why, in one line
            labels = None
        layers.append(labels_layer(labels) if labels is not None else slide_layer(open_slide(f)))
    return layers
