"""napari reader hook (npe2 ``get_reader``): H&E slides and tiles as RGB image layers with their microns per pixel.

- A slide (SVS, OME-TIFF, TIFF) becomes one image layer; its levels are lazy dask arrays read tile by tile. When a
  file holds a single level larger than `DISPLAY_LEVEL_SIZE` px, lazily subsampled display levels (every 2nd,
  4th... pixel) are added, so napari never has to draw the whole level at once; the layer is then multiscale.
- A PNG / JPEG tile becomes one plain image layer.
- A folder gives one layer per image in it (sorted by name), not a stack: tiles differ in size, and the
  segmentation widget works on one 2-D image at a time. A list of files is read the same way.

Every layer gets ``rgb=True``, ``scale=(mpp, mpp)`` in microns when the file says its mpp, and
``metadata={"nucseg_path", "mpp", "format"}`` so the widgets can reopen the file and respect its resolution.
A file the reader claims but cannot read raises `SlideReadError` from the reader function; napari then shows
the one-line message (as "Original error from plugin ...") and keeps running.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nucseg.io.slides import Slide, is_supported, list_images, open_slide, suffix_of

LayerData = tuple[Any, dict[str, Any], str]
#: a single-level slide with a side longer than this gets subsampled display levels
DISPLAY_LEVEL_SIZE = 2048


def _is_zarr_folder(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or any((path / n).exists() for n in (".zarray", ".zgroup", "zarr.json"))


def _claims(path: Path) -> bool:
    if path.is_dir():
        return not _is_zarr_folder(path) and bool(list_images(path))
    return is_supported(path)


def get_reader(path: str | Sequence[str]) -> Callable[[str | Sequence[str]], list[LayerData]] | None:
    """Return `read_slides` when every path is a supported file or a folder holding images, else None.

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


def slide_layer(slide: Slide) -> LayerData:
    """One image layer tuple for an open slide (see the module docstring)."""
    levels = display_levels(slide)
    multiscale = len(levels) > 1
    kwargs: dict[str, Any] = {
        "name": slide.path.name[: -len(suffix_of(slide.path))] or slide.path.name,
        "rgb": True,
        "multiscale": multiscale,
        "contrast_limits": [0, 255],
        "metadata": {"nucseg_path": str(slide.path), "mpp": slide.mpp, "format": slide.format},
    }
    if slide.mpp:
        kwargs["scale"] = (slide.mpp, slide.mpp)
    return (levels if multiscale else levels[0], kwargs, "image")


def read_slides(path: str | Sequence[str]) -> list[LayerData]:
    """Read one or more files or folders into image layer tuples.

    Raises:
        SlideReadError: a file cannot be read (missing, empty, truncated, corrupt), or a folder holds no images.
        UnsupportedFileError: a file's suffix is not handled.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = list_images(p)
            if not found:
                open_slide(p)  # raises SlideReadError: "is a folder with no image files"
            files.extend(found)
        else:
            files.append(p)
    return [slide_layer(open_slide(f)) for f in files]
