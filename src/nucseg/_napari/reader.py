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
scale bar reads µm; others stay in pixels. Labels exported by this plugin say where they lie on the image they were
segmented from (`nucseg.io.placement`): they reopen over it (the region's offset as ``translate``), in the units
the viewer shows that image in when it is open, else in the file's own. Image layers get ``rgb=True`` and ``metadata={"nucseg_path", "mpp",
"format", "reader", "modality", ...}`` so the widgets can reopen the file and respect its resolution; a slide that
looks like fluorescence is also reported with a warning (the default model is for brightfield H&E). A file the
reader claims but cannot read raises `SlideReadError` from the reader function; napari then shows the one-line
message (as "Original error from plugin ...") and keeps running.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.io.label_files import LabelFile, is_label_zarr, open_label_file
from nucseg.io.pyramid import pyramid_steps
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
#: opened in the background, a slide's coarsest display level is read into memory when it has at most this many
#: pixels: napari's first draw and its layer thumbnail read it anyway, on the GUI thread (for a one-level slide
#: its every-2nd-pixel level means decoding the whole slide)
COARSE_PIXELS = 4096 * 4096


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
    if len(levels) == 1:  # lazy strided views of level 0 (the one pyramid rule: `nucseg.io.pyramid`)
        levels += [levels[0][::step, ::step] for step in pyramid_steps(levels[0].shape, DISPLAY_LEVEL_SIZE)[1:]]
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


def _shown_source(image: Any) -> Any:
    """The image layer of the current viewer that a label export names as its source (by file path, else by
    name), or None."""
    if not image:
        return None
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return None
    images = [layer for layer in viewer.layers if getattr(layer, "_type_string", "") == "image"]
    path, name = image.get("path"), image.get("name")

    def same_file(layer: Any) -> bool:
        shown = layer.metadata.get("nucseg_path")
        return bool(path and shown) and (shown == path or Path(shown).resolve() == Path(path).resolve())

    by_path = [layer for layer in images if same_file(layer)]
    return (by_path or [layer for layer in images if name and layer.name == name] or [None])[0]


def _placed(kwargs: dict[str, Any], labels: LabelFile) -> dict[str, Any]:
    """Scale, units and translate that put the labels where their export says they lie: over their source image
    as the viewer shows it (its scale, units and translate; so a PNG tile shown in pixels gets its labels in
    pixels, one given a size in µm gets them in µm), else at the file's own offset in µm (or pixels)."""
    placement = labels.placement
    source = _shown_source(placement.image)
    if source is not None:
        scale = [float(v) for v in source.scale[-2:]]
        translate = [float(t) + o * s for t, o, s in zip(source.translate[-2:], placement.offset, scale)]
        kwargs.update(scale=scale, translate=translate, units=tuple(str(u) for u in source.units[-2:]))
        return kwargs
    kwargs = _calibrated(kwargs, labels.mpp)
    if any(placement.offset):
        kwargs["translate"] = placement.world(labels.mpp)
    return kwargs


def labels_layer(labels: LabelFile) -> LayerData:
    """One labels layer tuple for a label file (multiscale for pyramids), placed over the image it was segmented
    from (`_placed`); its metadata names that image for the writers, so a re-export keeps the place."""
    multiscale = len(labels.levels) > 1
    name = _name(labels.path)
    metadata: dict[str, Any] = {"nucseg_path": str(labels.path), "mpp": labels.mpp, "format": labels.source}
    if labels.placement.image:
        metadata["nucseg_image"] = dict(labels.placement.image)
    kwargs: dict[str, Any] = {
        "name": name if "label" in name.lower() else f"{name} labels",  # truth beside its image: not "x [1]"
        "multiscale": multiscale,
        "metadata": metadata,
    }
    data = labels.levels if multiscale else labels.levels[0]
    return (data, _placed(kwargs, labels), "labels")


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


def read_layers(path: str | Sequence[str], in_memory_overview: bool = False) -> list[LayerData]:
    """Read one or more files or folders into image and labels layer tuples (`read_slides` without the choice of
    thread). `in_memory_overview`: read a slide's coarsest display level now (see `COARSE_PIXELS`).

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
        if labels is not None:
            layers.append(labels_layer(labels))
            continue
        data, kwargs, kind = slide_layer(open_slide(f))
        if in_memory_overview and kwargs.get("multiscale") and np.prod(data[-1].shape[:2]) <= COARSE_PIXELS:
            data = [*data[:-1], np.asarray(data[-1])]  # napari's first draw and thumbnail read it: read it here
        layers.append((data, kwargs, kind))
    return layers


def read_slides(path: str | Sequence[str]) -> list[LayerData]:
    """Read one or more files or folders into image and labels layer tuples.

    Opened from the GUI (inside its event loop, a viewer open), files are read in a worker and their layers added
    when ready: napari runs readers on its GUI thread, and opening a slide there froze the window for seconds
    (first use of the slide libraries, the fluorescence check, the first read of its overview). napari is then
    told "nothing to add now" (its ``[(None,)]`` reader result) and an error is shown as one line. Called from
    a script or a test (no running event loop), the layers are returned as napari readers do.

    Raises:
        SlideReadError: a file cannot be read (missing, empty, truncated, corrupt), or a folder holds no images.
        UnsupportedFileError: a file's suffix is not handled.
    """
    import napari

    from ._loop import in_event_loop

    viewer = napari.current_viewer()
    if viewer is None or not in_event_loop() or os.environ.get("NUCSEG_SYNC_OPEN"):
        return read_layers(path)
    _open_in_background(viewer, path)
    return [(None,)]


def _open_in_background(viewer: Any, path: str | Sequence[str]) -> Any:
    from napari.utils.notifications import show_warning

    from ._workers import start_generator_worker

    def job():
        from napari.layers import Layer

        yield None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tuples = read_layers(path, in_memory_overview=True)
        # napari's layer model is Qt-free: built here, with the modules it imports the first time (seconds of
        # GUI time on a busy machine), it leaves the GUI thread only the layer's controls and visual
        layers = [Layer.create(data, kwargs, kind) for data, kwargs, kind in tuples]
        return layers, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]

    def add(result) -> None:
        layers, warned = result
        for layer in layers:
            viewer.add_layer(layer)
        for message in warned:
            show_warning(message)

    worker = start_generator_worker(job, on_return=add, desc=f"opening {path}",
                                    on_finished=lambda: _opening.remove(worker) if worker in _opening else None)
    _opening.append(worker)
    return worker


#: workers opening files (kept referenced while they run)
_opening: list[Any] = []
