"""Segmentation results as layers, and threshold changes that keep what the user corrected.

A `ResultView` ties a result to its two layers (labels, hidden foreground probability). An editable labels layer
(one 2-D array in memory) gets its one undo history at once (`label_editing.editing_for`), so every brush stroke
and correction is a step of it. A threshold change then goes: `snapshot` (GUI thread: the history's version, a
copy of the labels and of the pixels the user edited) -> `reapply_views` (worker: post-processing again, then
`nucseg.jobs.segment.keep_user_edits`, so every nucleus the user painted, erased, filled, added, merged or split
stays as it is) -> `apply_update` (GUI thread; refused when the user edited meanwhile, and the change is re-applied
on top). The new labels are written as one step of the history, so Ctrl+Z undoes the threshold change itself
(with the result it showed) before any earlier edit: an undone stroke never brings back an id that the new
post-processing gave to another nucleus.
Slide results in zarr are multiscale, which napari does not let anyone paint; they are re-done into a new array
beside the run's own (never written over) and shown from a pyramid built in the worker.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels

from nucseg.jobs.segment import count_nuclei, keep_user_edits

from .label_editing import EDITED_KEY, editing_for  # noqa: F401  (EDITED_KEY: imported from here too)
from .layers import ResultDisplay, probability_transform, result_display, result_transform

if TYPE_CHECKING:
    import napari

    from nucseg.config import PostprocessConfig
    from nucseg.inference.predict import PredictionResult, PredictProgress

class ResultView:
    """One result on screen.

    Attributes:
        labels: its Labels layer.
        probability: its (hidden) probability Image layer.
        editable: whether the labels are one 2-D array in memory, edited through their history (False: a
            multiscale slide result).
    """

    def __init__(self, labels: Labels, probability: Image | None, result: PredictionResult, editable: bool):
        self.labels = labels
        self.probability = probability
        self.editable = editable
        self._result = result

    @property
    def result(self) -> PredictionResult:
        """The result shown: the layer's (an undone threshold change brings back the one before)."""
        return self.labels.metadata.get("nucseg_result", self._result)

    @result.setter
    def result(self, result: PredictionResult) -> None:
        self._result = result
        self.labels.metadata["nucseg_result"] = result

    @property
    def edited(self) -> np.ndarray | None:
        """The pixels the user edited so far (None: none)."""
        edited = self.labels.metadata.get(EDITED_KEY)
        return edited if isinstance(edited, np.ndarray) and edited.any() else None


def result_metadata(result: PredictionResult) -> dict[str, Any]:
    """What other parts of the plugin read from a result's labels layer (writers, corrections, evaluate)."""
    return {"nucseg_result": result, "nucseg_config": result.config.to_dict(), "mpp": result.mpp,
            "nucseg_region": result.region, "nucseg_model": result.model_info}


def build_labels_layer(result: PredictionResult, display: ResultDisplay, title: str, geometry: tuple) -> Labels:
    """The Labels layer of a result, not yet in a viewer: napari's layer model is Qt-free, so a worker can build
    it (about 40 % of what adding it costs the GUI thread); `geometry` is the image layer's (scale, translate,
    units), read on the GUI thread when the run started."""
    scale, translate, units = geometry
    l_scale, l_translate = result_transform(scale, translate, result.region)
    return Labels(display.labels, name=title, scale=l_scale, translate=l_translate, units=units,
                  multiscale=display.labels_multiscale, metadata=result_metadata(result), opacity=0.8)


def add_result_layers(viewer: napari.viewer.Viewer, result: PredictionResult, display: ResultDisplay, title: str,
                      image_layer: Any, contours: bool) -> tuple[ResultView, list[Callable[[], None]]]:
    """Add the labels layer of a result, overlaid on `image_layer`; return it and the steps still to do.

    Adding a layer costs napari's GUI thread a few hundred ms on a slow machine (its controls, its visual, the
    first slice); showing the labels, the hidden probability layer and the contours (computed on every slice of the
    labels) are therefore left as steps the caller runs in later turns of the event loop, so no single stall adds them up.
    """
    scale, translate, units = image_layer.scale, image_layer.translate, tuple(image_layer.units)[-2:]
    labels = display.layer or build_labels_layer(result, display, title, (scale, translate, units))
    # the image the writers measure for the CSV's / GeoJSON's H&E columns
    labels.metadata["nucseg_image"] = {"name": image_layer.name, "path": image_layer.metadata.get("nucseg_path")}
    # added hidden, shown in the next step: napari's controls and visual now, its first slice and texture then
    labels.visible = False
    viewer.add_layer(labels)
    view = ResultView(labels, None, result, editable=not display.labels_multiscale)
    if view.editable:
        editing_for(labels)  # one history from the first stroke on

    def add_probability() -> None:
        if labels not in viewer.layers:
            return
        p_scale, p_translate = probability_transform(scale, translate, result.region, result.probabilities.shape[-2:])
        view.probability = Image(display.probability, name=f"{title} foreground probability", colormap="magma",
                                 visible=False, scale=p_scale, translate=p_translate, units=units,
                                 contrast_limits=display.contrast_limits, multiscale=display.probability_multiscale,
                                 blending="additive", metadata={"mpp": result.model_mpp, "nucseg_region": result.region,
                                                                     "nucseg_image": {"name": image_layer.name}})
        viewer.layers.insert(viewer.layers.index(labels), view.probability)  # under its labels
        viewer.layers.selection.active = labels  # the layer the user edits

    def show() -> None:
        labels.visible = True

    def show_contours() -> None:
        labels.contour = 2 if contours else 0

    def measure() -> None:  # in a worker: the status bar then shows each nucleus's area, perimeter, haematoxylin
        from .measurements import measure_layer

        if labels in viewer.layers:
            measure_layer(viewer, labels)

    return view, [show, add_probability, show_contours, measure]


def prewarm_layer_modules() -> None:
    """Import in the worker what napari imports on the GUI thread when the first Labels layer is added (pandas for
    layer features, the vispy overlays of labels): 0.5 s of GUI time on a shared 2-core machine."""
    import napari._vispy.overlays.labels_polygon  # noqa: F401
    import pandas  # noqa: F401


def startup_job(in_use: list) -> Generator[None, None, list[str]]:
    """What a segment widget does in a worker when it opens: remove old slide runs (sparing `in_use`, see
    `clean_predictions`), import napari's first-layer modules, and list the devices (importing torch only where an
    accelerator may be there): imports hold the GIL, so they happen here once rather than at the end of the first
    run."""
    from nucseg.jobs.segment import clean_predictions
    from nucseg.models.device import available_devices

    yield from ()
    clean_predictions(in_use)
    prewarm_layer_modules()
    return available_devices()


def start_startup_job(viewer: napari.viewer.Viewer, on_devices: Callable[[list[str]], None],
                      on_finished: Callable[[], None]) -> Any:
    """Start `startup_job` in a worker, sparing the slide runs the viewer's layers show; returns the worker."""
    from nucseg.inference.result_store import result_folder

    from ._workers import start_generator_worker

    in_use = [result_folder(layer.metadata["nucseg_result"]) for layer in viewer.layers
              if "nucseg_result" in layer.metadata]
    return start_generator_worker(lambda: startup_job([p for p in in_use if p is not None]), on_return=on_devices,
                                  on_finished=on_finished, desc="listing devices")


def preload_job(model: str) -> Generator[None, None, None]:
    """In a worker: load the network a run of `model` on the default device will use (`load_predictor`, cached by
    `nucseg.models.build.load_network`): importing torch, reading the weights and, on the CPU, exporting the
    model for ONNX Runtime the first time ever took the first run tens of seconds of "loading model". That first
    export is made in a separate process (`nucseg.models.build.export_in_child`), so on the CPU the viewer never
    imports torch: its objects would lengthen every later full garbage collection on the GUI thread."""
    from nucseg.config import InferenceConfig
    from nucseg.inference.blocks import load_predictor

    yield None
    done = _loading.setdefault(model, threading.Event())
    try:
        load_predictor(InferenceConfig(model=model), export_apart=True)
    finally:
        done.set()
        _loading.pop(model, None)


_preloading: list[Any] = []
#: models being loaded by `preload_job`: a run waits for that load instead of doing it a second time alongside
_loading: dict[str, threading.Event] = {}


def preloading(model: str | None) -> bool:
    """Whether `preload_job` is loading `model` now."""
    return str(model) in _loading


def wait_for_preload(model: str | None) -> None:
    """In a run's worker: wait until a preload of `model` that is under way has finished (it then is cached)."""
    event = _loading.get(str(model))
    if event is not None:
        event.wait()


def start_preload(model: str | None) -> Any:
    """Start `preload_job` from the GUI (a dock opened, a model chosen); None from a script or a test (nothing to
    hide a wait from), or without a model. A failure is left for the run to report."""
    from ._loop import in_event_loop
    from ._workers import start_generator_worker

    if not model or not in_event_loop():
        return None
    worker = start_generator_worker(lambda: preload_job(str(model)), on_error=lambda err: None,
                                    desc="loading the model",
                                    on_finished=lambda: _preloading.remove(worker) if worker in _preloading else None)
    _preloading.append(worker)
    return worker


def snapshot(view: ResultView) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(history version, a copy of the labels, a copy of the user's pixels) of an editable labels layer, taken on
    the GUI thread and merged in the worker; None for a multiscale slide result."""
    if not view.editable:
        return None
    editor = editing_for(view.labels).editor
    return editor.version, np.array(editor.labels, copy=True), np.array(editor.edited, copy=True)


@dataclasses.dataclass
class Update:
    """A re-applied result for one view: new labels (merged with the user's), the user's pixels, their nuclei."""

    result: PredictionResult
    display: ResultDisplay
    edited: np.ndarray | None
    kept_nuclei: int
    version: int | None  # the history version of the snapshot it was merged with


def reapply_views(jobs: list[tuple[ResultView, tuple[int, np.ndarray, np.ndarray] | None]],
                  postprocess: PostprocessConfig) -> Generator[PredictProgress, None, list[Update]]:
    """In a worker: post-process each result again and keep the user's edits (see `keep_user_edits`)."""
    from nucseg.inference.predict import PredictProgress, reapply_postprocess

    updates = []
    for k, (view, snap) in enumerate(jobs):
        yield PredictProgress(k, len(jobs), "re-applying thresholds")
        fresh = reapply_postprocess(view.result, postprocess)
        if snap is None:  # not editable: a multiscale slide result
            updates.append(Update(fresh, result_display(fresh, reuse_pyramid=False), None, 0, None))
            continue
        version, current, edited = snap
        merged, mine, kept = keep_user_edits(current, current, edited, np.asarray(fresh.labels))
        merged = merged.astype(current.dtype, copy=False)
        result = dataclasses.replace(fresh, labels=merged, n_nuclei=count_nuclei(merged))
        display = dataclasses.replace(result_display(fresh, reuse_pyramid=False), labels=merged,
                                      labels_multiscale=False)
        updates.append(Update(result, display, mine, kept, version))
    return updates


def apply_update(view: ResultView, update: Update) -> bool:
    """Show a re-applied result; False (nothing changed) when the user edited the layer after its snapshot.

    An editable layer takes it as one step of its history (consecutive threshold changes make one step), so
    Ctrl+Z brings back the labels and the result shown before.
    """
    if not view.editable:
        view.labels.metadata.update(result_metadata(update.result))
        view.labels.data = update.display.labels
        view.result = update.result
        return True
    editing = editing_for(view.labels)
    if editing.editor.version != update.version:
        return False
    editing.replace(update.display.labels, update.edited, action="thresholds", coalesce=True,
                    text=f"thresholds re-applied ({update.result.n_nuclei} nuclei)",
                    metadata=result_metadata(update.result))
    view._result = update.result
    return True
