"""Per-nucleus measurements of a nuclei layer, made in a worker and kept on the layer: what the status bar shows on
hover, what the Measurements dock lists and sums per area.

`measure_layer` captures a Labels layer on the GUI thread (references only: the labels, the image under them as
the writers find it, `writers.find_source`, their offset and pixel size), measures it in a worker
(`nucseg.metrics.density.nucleus_columns` over `nucseg.io.measure`, and the engine's tissue mask of the image
under the labels, `nucseg.metrics.density.tissue_map`) and keeps the result on the layer
(``metadata["nucseg_measured"]``) with the hover columns as the layer's ``features``: napari's status bar then
shows, for the nucleus under the cursor, its area, perimeter (µm when the pixel size is known, else px) and mean
haematoxylin optical density (when the image is found). An edit (paint, fill, erase, a threshold change) drops the
numbers of the layer at once (no stale figure is shown) and measures it again after `REMEASURE_MS`.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from nucseg.metrics.density import TissueMap, nucleus_columns, tissue_map

from . import writers
from ._loop import fair_to_the_gui

#: labels-layer metadata key holding the `Measured` of its current data
MEASURED_KEY = "nucseg_measured"
#: after an edit, measure again once the layer has been left alone this long
REMEASURE_MS = 800


@dataclasses.dataclass(frozen=True)
class Measured:
    """Measurements of one labels layer.

    Attributes:
        columns: `nucseg.io.measure` columns, one entry per nucleus, sorted by id (centroids in full-resolution
            pixels of the source image).
        tissue: the tissue map of the image under the labels (None: no image found).
        mpp: microns per pixel when known.
        offset: (y0, x0) of the labels on the source image (full-resolution pixels).
        shape: the labels' (h, w).
        image: how the image was found, or why not.
    """

    columns: dict[str, np.ndarray]
    tissue: TissueMap | None
    mpp: float | None
    offset: tuple[float, float]
    shape: tuple[int, int]
    image: str

    @property
    def centroids(self) -> np.ndarray:
        """(N, 2) centroids (y, x) in full-resolution pixels."""
        return np.stack([self.columns["centroid_y"], self.columns["centroid_x"]], axis=1)

    @property
    def region(self) -> tuple[float, float, float, float]:
        """The labels' (y, x, h, w) on the source image."""
        return (*self.offset, *self.shape)  # type: ignore[return-value]


def layer_attributes(layer: Any) -> dict[str, Any]:
    """What the writers read from a layer (the npe2 writer's ``attributes``)."""
    return {"name": layer.name, "scale": layer.scale, "translate": layer.translate, "units": layer.units,
            "metadata": layer.metadata, "multiscale": layer.multiscale}


def level0(layer: Any) -> Any:
    return layer.data[0] if layer.multiscale else layer.data


def measure_job(labels: Any, pixels: Any, path: str | None, how: str, mpp: float | None,
                offset: tuple[float, float], image_file: str | None = None) -> Generator[None, None, Measured]:
    """In a worker: measure every nucleus and map the tissue under the labels (with `image_file`, the file the
    labels were segmented from, the tissue of that whole image over the labels, as the engine and `nucseg predict`
    map it; pixels cropped to the labels would get a mask of their own)."""
    yield None
    with writers.opened_source(pixels, path, how) as (image, found):
        with fair_to_the_gui():  # measuring thousands of nuclei in Python; never across a yield (an abandoned
            columns = nucleus_columns(labels, image, mpp, offset)  # generator would keep it on)
        yield None
        tissue = None
        if image is not None:
            shape = (int(labels.shape[0]), int(labels.shape[1]))
            if hasattr(image, "read_region"):  # a slide: the labels' region of it
                tissue = tissue_map(image, (int(round(offset[0])), int(round(offset[1])), *shape))
            else:  # pixels aligned with the labels: placed at their offset
                tissue = _file_tissue(image_file, (int(round(offset[0])), int(round(offset[1])), *shape))
            if tissue is None and not hasattr(image, "read_region"):
                local = tissue_map(np.asarray(image))
                tissue = dataclasses.replace(local, origin=(local.origin[0] + offset[0], local.origin[1] + offset[1]))
    return Measured(columns, tissue, mpp, offset, (int(labels.shape[0]), int(labels.shape[1])), found)


def _file_tissue(path: str | None, region: tuple[int, int, int, int]) -> Any:
    """The tissue map of `region` of the image file at `path`, or None where it cannot be opened."""
    if not path:
        return None
    from nucseg.errors import NucsegError
    from nucseg.io.slides import open_slide

    try:
        with open_slide(path) as slide:
            return tissue_map(slide, region)
    except (NucsegError, OSError):
        return None


def hover_features(measured: Measured) -> dict[str, np.ndarray]:
    """The columns the status bar shows for the nucleus under the cursor (napari's ``index`` = the label)."""
    cols, micron = measured.columns, measured.mpp is not None
    out = {"index": cols["id"].astype(np.int64)}
    if micron:
        out["area (µm²)"] = np.round(cols["area_um2"], 1)
        out["perimeter (µm)"] = np.round(cols["perimeter_um"], 1)
    else:
        out["area (px)"] = cols["area_px"].astype(np.int64)
        out["perimeter (px)"] = np.round(cols["perimeter_px"], 1)
    if "mean_hematoxylin_od" in cols:
        out["mean haematoxylin (OD)"] = np.round(cols["mean_hematoxylin_od"], 3)
    return out


def _set_features(layer: Any, features: dict[str, np.ndarray] | None) -> None:
    import pandas as pd

    layer.features = pd.DataFrame(features if features is not None else {"index": np.zeros(0, np.int64)})


class _Watch:
    """Drops a layer's measurements when its data changes and measures it again after `REMEASURE_MS`."""

    def __init__(self, viewer: Any, layer: Any):
        self.viewer, self.layer = viewer, layer
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(REMEASURE_MS)
        self.timer.timeout.connect(lambda: measure_layer(self.viewer, self.layer))
        for event in (layer.events.data, layer.events.paint, layer.events.labels_update):
            event.connect(self.changed)

    def changed(self, *_: Any) -> None:
        if self.layer.metadata.pop(MEASURED_KEY, None) is not None:
            _set_features(self.layer, None)  # no stale numbers on hover
        self.timer.start()


_listeners: list[Callable[[Any, Measured], None]] = []
_running: dict[int, tuple[weakref.ref, Any]] = {}


def on_measured(callback: Callable[[Any, Measured], None]) -> None:
    """Call `callback(layer, measured)` whenever a layer has been measured (the Measurements dock listens)."""
    _listeners.append(callback)


def forget(callback: Callable[[Any, Measured], None]) -> None:
    if callback in _listeners:
        _listeners.remove(callback)


def _unwrapped(obj: Any) -> Any:
    """The object behind napari's PublicOnlyProxy (what a dock widget is given): one identity per layer."""
    return getattr(obj, "__wrapped__", obj)


def measure_layer(viewer: Any, layer: Any) -> Any:
    """Measure `layer` in a worker (unless its measurements are current or a measurement runs); returns the worker
    or None. On return its ``features`` and ``metadata[MEASURED_KEY]`` are set and the listeners called."""
    from ._workers import start_generator_worker

    viewer, layer = _unwrapped(viewer), _unwrapped(layer)
    running = _running.get(id(layer))
    # keyed by id, checked by identity: a layer of an earlier viewer whose worker never reported its end may have
    # had the same id, and this layer was then never measured
    if layer not in viewer.layers:
        return None
    if not hasattr(layer, "_nucseg_watch"):
        layer._nucseg_watch = _Watch(viewer, layer)
    # current measurements first: a worker that has returned them is still "running" until its finished signal,
    # and a dock opened in between would otherwise wait for a call that has already happened
    if MEASURED_KEY in layer.metadata:
        measured = layer.metadata[MEASURED_KEY]
        for callback in list(_listeners):
            callback(layer, measured)
        return None
    if running is not None and running[0]() is layer:
        return None
    attributes = layer_attributes(layer)
    labels = level0(layer)
    pixels, path, how = writers.find_source(labels, attributes, viewer)
    image_file = writers.image_reference(attributes).get("path")
    mpp, offset = writers.layer_mpp(attributes), writers.layer_offset(attributes)

    def done(measured: Measured) -> None:
        if layer not in viewer.layers:
            return
        layer.metadata[MEASURED_KEY] = measured
        _set_features(layer, hover_features(measured))
        for callback in list(_listeners):
            callback(layer, measured)

    def finished() -> None:
        _running.pop(id(layer), None)

    worker = start_generator_worker(lambda: measure_job(labels, pixels, path, how, mpp, offset, image_file),
                                    on_return=done,
                                    on_finished=finished, desc=f"measuring {layer.name}")
    _running[id(layer)] = (weakref.ref(layer), worker)
    return worker
