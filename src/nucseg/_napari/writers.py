"""napari writer contributions for Labels layers: OME-TIFF, OME-NGFF zarr, QuPath GeoJSON and measurements CSV.

Each is an npe2 single-layer writer, ``write_x(path, data, attributes) -> [path]``, over `nucseg.io.export`.

* Resolution: microns per pixel come from ``attributes["metadata"]["mpp"]`` (set by the plugin's reader, by the
  segment widget's results and by the user's pixel-size field), else from the layer's scale when its units are a
  length (napari ``units``, e.g. micrometer) and square; a scale in napari's default "pixel" units says nothing
  about microns, so the size is then unknown and every output stays in pixels and says so.
* Position: GeoJSON and CSV coordinates are in full-resolution pixels of the slide. The label map's origin is the
  region the plugin segmented (``metadata["nucseg_region"]``), else ``translate / scale``.
* H&E intensities (the CSV's and GeoJSON's stain columns) need the image, which npe2 does not hand a writer. The
  writer finds it (`source_image`): the image layer named by ``metadata["nucseg_image"]`` (``{"name": layer name,
  "path": file or None}``, or just the name), else the one RGB image layer whose pixels the labels overlay exactly
  (same scale, whole-pixel offset; the one whose name starts the labels' name when several do), else the file at
  ``metadata["nucseg_image"]["path"]``. With none, the stain columns are left out and napari says why.
* Multiscale layers are written from their finest level (lazy arrays are read window by window).
* Overwriting: these writers REPLACE an existing file or folder. napari's Save dialog already asks the user
  before it returns an existing path, the npe2 writer contract has no "overwrite" flag to pass that answer on, and
  napari's own writers replace too; refusing would make "Save" fail right after the user chose "Replace". The
  export functions write to a temporary name and rename it into place only when complete, so a failed write never
  destroys the earlier file. (The command line keeps refusing unless ``--overwrite``.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from nucseg.io import export, export_process
from nucseg.io.export import opened_source

from .layer_source import attributes_mpp as layer_mpp  # the one pixel-size rule for layers

log = logging.getLogger(__name__)

__all__ = ["IMAGE_KEY", "find_source", "opened_source", "source_image", "write_geojson", "write_labels_ome_tiff",
           "write_labels_zarr",
           "write_measurements_csv"]

#: labels-layer metadata naming the image the labels were segmented from: {"name": ..., "path": ...} or a name
IMAGE_KEY = "nucseg_image"


def _level0(data: Any, attributes: dict[str, Any]) -> Any:
    if attributes.get("multiscale") or isinstance(data, (list, tuple)):
        return data[0]
    return data


def _pair(attributes: dict[str, Any], key: str, default: float) -> np.ndarray:
    """The last two values of a layer attribute (a list, tuple or array), or (default, default)."""
    value = attributes.get(key)
    return np.asarray((default, default) if value is None else value, float)[-2:]


def layer_offset(attributes: dict[str, Any]) -> tuple[float, float]:
    """(y0, x0) of the label map in full-resolution pixels: the segmented region's origin, else translate / scale."""
    region = (attributes.get("metadata") or {}).get("nucseg_region")
    if region is not None and len(region) == 4:
        return float(region[0]), float(region[1])
    translate, scale = _pair(attributes, "translate", 0.0), _pair(attributes, "scale", 1.0)
    return tuple(float(t) / float(s) if s else 0.0 for t, s in zip(translate, scale))  # type: ignore[return-value]


def _overlay(layer: Any, shape: tuple[int, int], attributes: dict[str, Any]) -> Any:
    """The pixels of RGB image `layer` under a label map of `shape` placed by `attributes`, or None if the labels
    do not overlay that image pixel for pixel."""
    if getattr(layer, "_type_string", "") != "image" or not getattr(layer, "rgb", False):
        return None
    level0 = layer.data[0] if layer.multiscale else layer.data
    scale, translate = _pair(attributes, "scale", 1.0), _pair(attributes, "translate", 0.0)
    if not np.allclose(np.asarray(layer.scale[-2:], float), scale, rtol=1e-6):
        return None
    offset = (translate - np.asarray(layer.translate[-2:], float)) / scale
    start = np.round(offset).astype(int)
    height, width = (int(s) for s in level0.shape[:2])
    if not np.allclose(offset, start, atol=1e-3) or start.min() < 0 or start[0] + shape[0] > height \
            or start[1] + shape[1] > width:
        return None
    return level0[start[0]:start[0] + shape[0], start[1]:start[1] + shape[1]]


def image_reference(attributes: dict[str, Any]) -> dict[str, Any]:
    """What a labels layer says of the image it was segmented from (its name, its file's path)."""
    ref = (attributes.get("metadata") or {}).get(IMAGE_KEY) or {}
    return {"name": ref} if isinstance(ref, str) else dict(ref)


def find_source(labels: Any, attributes: dict[str, Any], viewer: Any = None) -> tuple[Any, str | None, str]:
    """Where the RGB pixels under `labels` are (cheap; on the GUI thread): (an array aligned with the labels from
    an image layer, or None; else the image file to open, or None; how they were found)."""
    import napari

    shape = (int(labels.shape[0]), int(labels.shape[1]))
    ref, viewer = image_reference(attributes), viewer or napari.current_viewer()
    layers = list(viewer.layers) if viewer is not None else []
    fits = [(layer, pixels) for layer in layers if (pixels := _overlay(layer, shape, attributes)) is not None]
    chosen = next((f for f in fits if ref.get("name") and f[0].name == ref["name"]), None)
    if chosen is None and len(fits) > 1:  # the widget names its labels "<image> nuclei..."
        prefixed = [f for f in fits if str(attributes.get("name", "")).startswith(f[0].name)]
        chosen = max(prefixed, key=lambda f: len(f[0].name)) if prefixed else None
    if chosen is None and len(fits) == 1:
        chosen = fits[0]
    if chosen is not None:
        return chosen[1], None, f"image layer {chosen[0].name!r}"
    if ref.get("path"):
        return None, str(ref["path"]), f"file {ref['path']}"
    return None, None, ("several image layers fit these labels" if fits else "no image layer under these labels")


@contextlib.contextmanager
def source_image(labels: Any, attributes: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    """Yield (the RGB pixels under `labels`: an array aligned with them, a `Slide`, or None; how they were found)."""
    with opened_source(*find_source(labels, attributes)) as found:
        yield found


def _stains_note(how: str, path: str) -> None:
    from napari.utils.notifications import show_info

    show_info(f"{path}: no H&E intensity columns ({how}); open or keep the image these labels were segmented "
              "from in the viewer, aligned with them, and save again")


def write_labels_ome_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Labels layer as a tiled (and, when large, pyramidal) OME-TIFF with its pixel size when known and its
    place on the source image (`layer_offset`, and the image named by ``metadata["nucseg_image"]``)."""
    return _labels_file(path, data, attributes, export.write_labels_ome_tiff)


def write_labels_zarr(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Labels layer as an OME-NGFF label image (zarr v3, multiscale; µm axes when the size is known; scale
    and translation place it on its source image)."""
    return _labels_file(path, data, attributes, export.write_labels_zarr)


def _labels_file(path: str, data: Any, attributes: dict[str, Any], write_file: Any) -> list[str]:
    from ._loop import in_event_loop

    labels, background = _level0(data, attributes), in_event_loop()
    if background and isinstance(labels, np.ndarray):
        labels = labels.copy()
    kwargs = {"mpp": layer_mpp(attributes), "overwrite": True, "offset": layer_offset(attributes),
              "image": image_reference(attributes) or None}
    return _in_background(path, lambda: write_file(labels, path, **kwargs) and None, background)


def _tables(path: str, data: Any, attributes: dict[str, Any], kind: str) -> list[str]:
    """The GeoJSON or the CSV: the image is found on the GUI thread, the nuclei measured and written (in the
    background when saved from the GUI, `_in_background`)."""
    from ._loop import in_event_loop

    labels = _level0(data, attributes)
    found = find_source(labels, attributes)
    mpp, offset = layer_mpp(attributes), layer_offset(attributes)
    background = in_event_loop()
    if background and isinstance(labels, np.ndarray):
        labels = labels.copy()  # painting while the file is written does not change what is written

    def write() -> str | None:
        from ._loop import fair_to_the_gui

        pixels, slide_path, how = found
        source = {"pixels": pixels, "slide_path": slide_path, "how": how, "mpp": mpp, "offset": offset}
        if background and export_process.fits(labels):  # in a process of its own: see `nucseg.io.export_process`
            try:
                return export_process.write_tables(kind, labels, path, **source)
            except export_process.Unavailable:
                log.warning("no export process could start here; writing %s in the viewer's process", path)
        with fair_to_the_gui() if background else contextlib.nullcontext():
            return export.write_table_file(kind, labels, path, overwrite=True, **source)

    return _in_background(path, write, background)


def write_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Labels layer as QuPath detections (outline + the CSV's measurements, full-resolution pixels)."""
    return _tables(path, data, attributes, "geojson")


def write_measurements_csv(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save per-nucleus measurements (centroid, area, axes...; microns when the size is known; H&E intensities
    when the image is found)."""
    return _tables(path, data, attributes, "csv")


#: exports running in the background (kept referenced until they end)
_exports: list[Any] = []


def _in_background(path: str, write: Any, background: bool) -> list[str]:
    """Run `write()` (it returns None, or why the stain columns are missing) now, or, saved from the GUI (inside
    its event loop: the save dialog), in a worker: measuring a slide's nuclei froze the window for seconds. The
    file is written under a temporary name and appears whole when done (a notification says so)."""
    if not background:
        missing = write()
        if missing is not None:
            _stains_note(missing, path)
        return [path]
    from napari.utils.notifications import show_info

    from ._workers import start_generator_worker

    def job():
        yield None
        return write()

    def done(missing: Any) -> None:
        if missing is not None:
            _stains_note(missing, path)
        show_info(f"saved {path}")

    worker = start_generator_worker(job, on_return=done, desc=f"saving {path}",
                                    on_finished=lambda: _exports.remove(worker) if worker in _exports else None)
    _exports.append(worker)
    return [path]
