"""The "Segment nuclei" dock widget: pick an image, a model and settings, run the segment job in a worker.

Thin by design (DESIGN.md rule 8): it reads its inputs, builds an `InferenceConfig`, starts
`nucseg.jobs.segment.segment_regions` in a thread worker (`_workers.start_generator_worker`) and turns the results
into layers (`result_layers.py`). Everything slow happens in the worker: opening the image, loading the model,
predicting, and preparing what the layers show (a zarr pyramid for slides). Changing a threshold re-applies
post-processing to the cached probabilities in a worker, keeping every edit the user made to the labels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QFormLayout, QPushButton, QWidget

from nucseg.config import InferenceConfig, PostprocessConfig, TilingConfig, default_block_size
from nucseg.errors import InvalidInputError, ModelError, NucsegError
from nucseg.inference.predict import PredictProgress
from nucseg.jobs.segment import layer_title, prediction_outputs, segment_regions
from nucseg.models.registry import resolve_model

from . import rerun_choice, shortcuts
from . import result_layers as result_steps  # start_startup_job, start_preload
from ._forms import _dspin, _spin, fit_width, scrolled  # noqa: F401  (_dspin, _spin: imported from here)
from ._loop import StepQueue, collect_garbage
from ._native import isolate_triton_before_torch
from ._workers import JobControls, error_message, start_generator_worker
from .fluorescence import FluorescenceGuard
from .label_editing import editing_for
from .layer_picker import layer_picker
from .layers import Region, chosen_regions, image_input, result_display
from .model_list import ModelCombo
from .pixel_size import PixelSizeField, show_in_microns
from .result_layers import (
    ResultView,
    add_result_layers,
    apply_update,
    reapply_views,
    result_metadata,
    snapshot,
)
from .thresholds import ThresholdsBox

WHOLE, FIELD_OF_VIEW, SHAPES = "whole image", "current field of view", "drawn rectangles"

isolate_triton_before_torch()  # see _native


class SegmentWidget(QWidget):
    """Segment nuclei in an image layer and show them as Labels (plus a hidden probability layer).

    Args:
        napari_viewer: the viewer whose layers are read and written.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.views: list[ResultView] = []
        self._worker: Any = None
        self._reapply_worker: Any = None
        self._reapply_pending = False
        self._stop: threading.Event | None = None
        self._replace: Labels | None = None  # the corrected layer a run replaces (asked first)
        self._steps = StepQueue(lambda: self.run_button.setEnabled(self._worker is None))

        self.image_combo = layer_picker(napari_viewer, Image, predicate=lambda lay: "nucseg_region" not in lay.metadata)
        self.model_combo = ModelCombo()
        self.device_combo = QComboBox()
        self.device_combo.addItem("auto")  # the devices are listed by a worker: finding them imports torch
        self.fluorescence = FluorescenceGuard()
        self.pixel_size = PixelSizeField(self._model_mpp)
        self.mpp_spin, self.mpp_note = self.pixel_size.spin, self.pixel_size.note
        tiling = TilingConfig()
        self.tile_spin = _spin(32, 4096, tiling.tile_size, step=32)
        self.overlap_spin = _spin(0, 1024, tiling.overlap, step=8)
        self.batch_spin = _spin(1, 256, tiling.batch_size)
        self.tta_check = QCheckBox("test-time augmentation (4x slower)")
        self.thresholds = ThresholdsBox()
        self.fg_spin, self.marker_spin, self.min_area_spin = self.thresholds.spins
        self.contours_check = self.thresholds.contours_check
        self.region_combo = QComboBox()
        self.region_combo.addItems([WHOLE, FIELD_OF_VIEW, SHAPES])
        self.shapes_combo = layer_picker(napari_viewer, Shapes)
        self.shapes_combo.setToolTip("rectangles drawn in this Shapes layer are segmented, each on its own")
        self.run_button = QPushButton("Run")
        self.controls = JobControls(self)
        self._build_layout()
        self._set_threshold_defaults()

        self.thresholds.changed.connect(self.reapply_thresholds)
        self.model_combo.model_chosen.connect(self._on_model_chosen)
        self.model_combo.model_lost.connect(show_info)
        self.model_combo.browse_requested.connect(self._browse)
        self.image_combo.changed.connect(self._sync_pixel_size)
        self.region_combo.currentTextChanged.connect(self._update_enabled)
        self.contours_check.toggled.connect(self._apply_contours)
        self.run_button.clicked.connect(self.run)
        self._update_enabled()
        self._sync_pixel_size()
        self._background = result_steps.start_startup_job(napari_viewer, self._devices_found, self._startup_finished)
        result_steps.start_preload(self.model_combo.current_model())  # the first Run does not wait for it
        for name, button, action in (("segment_run", self.run_button, self.run),
                                     ("stop", self.controls.stop_button, self.stop)):
            if shortcuts.bind(napari_viewer, name, self, action):
                button.setToolTip(shortcuts.with_shortcut(button.toolTip(), name))

    # -- layout and inputs -------------------------------------------------------------------------------
    def _build_layout(self) -> None:
        form = QFormLayout()
        for label, widget in (("image", self.image_combo.native), ("", self.fluorescence), ("pixel size", self.mpp_spin),
                              ("", self.mpp_note),
                              ("model", self.model_combo), ("device", self.device_combo),
                              ("tile size", self.tile_spin), ("overlap", self.overlap_spin),
                              ("batch size", self.batch_spin), ("", self.tta_check), ("region", self.region_combo),
                              ("shapes layer", self.shapes_combo.native)):
            form.addRow(label, widget)
        layout = scrolled(self)
        layout.addLayout(form)
        layout.addWidget(self.thresholds)
        layout.addWidget(self.run_button)
        layout.addWidget(self.controls)
        layout.addStretch(1)
        fit_width(self)

    def _update_enabled(self, *_: Any) -> None:
        self.shapes_combo.enabled = self.region_combo.currentText() == SHAPES

    def _devices_found(self, devices: list[str]) -> None:
        self.device_combo.addItems([d for d in devices if self.device_combo.findText(d) < 0])

    def _startup_finished(self) -> None:
        self._background = None

    def _spec(self):
        model = self.model_combo.current_model()
        if model is None:
            raise ModelError("no trained model to segment with: pick one, or browse to a model folder")
        return resolve_model(model)

    def _set_threshold_defaults(self) -> None:
        try:
            self.thresholds.set_defaults(self._spec().postprocess_defaults)
        except NucsegError:
            self.thresholds.set_defaults({})

    def _on_model_chosen(self, _: str) -> None:
        self._set_threshold_defaults()
        self._sync_pixel_size()
        result_steps.start_preload(self.model_combo.current_model())

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder (config.json + model.safetensors)")
        if folder:
            self.add_model_folder(folder)

    def _model_mpp(self) -> float | None:
        with contextlib.suppress(NucsegError):
            return self._spec().mpp
        return None

    def _sync_pixel_size(self, *_: Any) -> None:
        self.pixel_size.sync(self.image_combo.current_layer())
        self.fluorescence.sync(self.image_combo.current_layer())

    def add_model_folder(self, folder: str | Path) -> bool:
        """Add a model folder to the list and choose it; shows an error and returns False when it is not one."""
        try:
            resolve_model(folder)
        except NucsegError as err:
            show_error(error_message(err))
            return False
        return self.model_combo.set_model(folder)

    def postprocess_config(self) -> PostprocessConfig:
        """The thresholds as a validated config (raises ConfigError)."""
        return self.thresholds.config()

    def inference_config(self) -> InferenceConfig:
        """Everything chosen, as a validated `InferenceConfig` (raises ConfigError with a readable message)."""
        tiling = TilingConfig(self.tile_spin.value(), self.overlap_spin.value(), self.batch_spin.value())
        return InferenceConfig(model=str(self.model_combo.current_model()), device=self.device_combo.currentText(),
                               tiling=tiling, postprocess=self.postprocess_config(), tta=self.tta_check.isChecked(),
                               block_size=default_block_size(tiling.tile_size))

    def regions(self, layer: Image) -> list[Region | None]:
        """The regions to segment, in level-0 pixels (None = the whole image)."""
        choice = {WHOLE: "whole", FIELD_OF_VIEW: "view", SHAPES: "shapes"}[self.region_combo.currentText()]
        return chosen_regions(choice, self.viewer, layer, self.shapes_combo.current_layer())

    # -- running -----------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether a segmentation run is in progress (until its last layer is added)."""
        return self._worker is not None or bool(self._steps)

    def run(self) -> None:
        """Start a segmentation run in a worker (errors are shown, never raised)."""
        if self.running:
            return
        self.model_combo.refresh()  # a version renamed or deleted since the list was last read
        try:
            layer = self.image_combo.current_layer()
            if layer is None:
                raise InvalidInputError("no image layer: open an H&E image first (File > Open, or a sample)")
            self.fluorescence.check(layer)  # as nucseg predict refuses it without --allow-fluorescence
            spec = self._spec()
            config = self.inference_config()
            image = dataclasses.replace(image_input(layer), mpp=self.pixel_size.value_for(layer))
            regions = self.regions(layer)
        except NucsegError as err:
            show_error(error_message(err))
            return
        show_in_microns(self.viewer, layer, image.mpp)  # a size the user typed: image and results in µm
        outs = prediction_outputs(image.path or image.name, image.shape, image.multiscale, image.mpp, regions,
                                  config, spec.mpp)
        title = f"{image.name} nuclei ({layer_title({'name': spec.name, 'version': spec.info.get('version')})})"
        self._stop = stop = threading.Event()

        geometry = (tuple(layer.scale), tuple(layer.translate), tuple(layer.units)[-2:])
        names = [f"{title} {k}" if len(regions) > 1 else title for k in range(1, len(regions) + 1)]
        asked = self._ask_about_corrections(layer, names, regions)
        if asked is None:
            return
        names, self._replace = asked

        def job() -> Generator[Any, None, list]:
            if result_steps.preloading(config.model):  # the dock started loading it: no second load alongside
                yield PredictProgress(0, 0, "loading the model")
                result_steps.wait_for_preload(config.model)
            results = yield from segment_regions(image.load, config, regions, outs, stop, mpp=image.mpp)
            yield PredictProgress(1, 1, "preparing the layers")
            shown = [(r, result_display(r), name) for r, name in zip(results, names) if not (r.stopped and not r.n_nuclei)]
            for r, display, name in shown:  # the Labels layer model too: less to do on the GUI thread
                display.layer = result_steps.build_labels_layer(r, display, name, geometry)
            return [(r, display) for r, display, _ in shown]

        self.run_button.setEnabled(False)
        self._worker = start_generator_worker(
            job, on_return=lambda shown: self._steps.extend([collect_garbage,
                                                             lambda: self._show_results(shown, layer)]),
            on_finished=self._run_finished, stop_event=stop, controls=self.controls, desc=f"segmenting {image.name}")

    def _ask_about_corrections(self, image_layer: Image, names: list[str], regions: list
                               ) -> tuple[list[str], Labels | None] | None:
        """Before a run on an image whose labels a person corrected: ask (`rerun_choice`). Returns the layer
        names to use and the corrected layer to replace (None: new layers), or None when the person cancelled."""
        corrected = rerun_choice.corrected_layers(self.viewer, image_layer.name)
        if not corrected:
            return names, None
        target = corrected[-1]
        new_names = [rerun_choice.new_run_name(self.viewer, name) for name in names]
        can_replace = len(regions) == 1
        choice = rerun_choice.ask(self, target, new_names[0], can_replace)
        if choice is None:
            return None
        if choice == rerun_choice.REPLACE and can_replace:
            return names, target
        return new_names, None

    def _replace_labels(self, target: Labels, result: Any, display: Any) -> bool:
        """Put a run's labels into a corrected layer as one step of its history; False when they do not fit."""
        if display.labels_multiscale or target not in self.viewer.layers:
            return False
        labels = np.asarray(display.labels)
        if labels.shape != target.data.shape:
            return False
        editing_for(target).replace(labels.astype(target.data.dtype, copy=False), np.zeros(labels.shape, bool),
                                    action="new run", text=f"replaced by a new run ({result.n_nuclei} nuclei)",
                                    metadata=result_metadata(result))
        view = next((v for v in self.views if v.labels is target), None)
        if view is None:
            view = ResultView(target, None, result, editable=True)
            editing_for(target).changed.connect(functools.partial(self._history_moved, view))
        view._result = result
        if view.probability is not None and view.probability in self.viewer.layers:
            view.probability.data = display.probability
        self.views = [view]
        return True

    def stop(self) -> None:
        """Ask the running segmentation to stop after its current batch."""
        self.controls.request_stop()

    def _run_finished(self) -> None:
        self._worker = None
        self.run_button.setEnabled(not self._steps)

    def _show_results(self, shown: list, image_layer: Image) -> None:
        target, self._replace = self._replace, None
        replaced = ""
        if target is not None and len(shown) == 1 and self._replace_labels(target, *shown[0]):
            replaced, shown = target.name, []
        added = [add_result_layers(self.viewer, result, display, display.layer.name, image_layer,
                                   self.contours_check.isChecked()) for result, display in shown]
        for view, _ in added:
            if view.editable:
                editing_for(view.labels).changed.connect(functools.partial(self._history_moved, view))
        self._steps.then([step for _, steps in added for step in steps])  # a step itself: `then`, not `extend`
        results = [view.result for view, _ in added] or ([target.metadata["nucseg_result"]] if replaced else [])
        n = sum(r.n_nuclei for r in results)
        text = f"{n} nuclei in {sum(r.seconds for r in results):.1f} s"
        corrected = rerun_choice.corrected_layers(self.viewer, image_layer.name)
        if replaced:
            text += f"; replaced the labels of {replaced!r} (Ctrl+Z there brings your corrections back)"
        elif corrected and added:
            text += (f"; your corrected layer {corrected[-1].name!r} is kept as it is, the new run is "
                     f"{added[0][0].labels.name!r}")
        if self._stop is not None and self._stop.is_set():
            text = f"stopped: {text} (only what the tiles done so far found is kept)"
            show_info(f"segmentation of {image_layer.name} stopped; {n} nuclei kept")
        self.views = [view for view, _ in added] or self.views
        self.controls.job_finished(text)
        if corrected and (added or replaced):
            show_info(text)

    def _history_moved(self, view: ResultView, step: Any) -> None:
        """A threshold change undone or redone in a result layer: the boxes show the thresholds it shows."""
        if step is not None and step.action == "thresholds" and view.labels in self.viewer.layers:
            self.thresholds.set_defaults(view.result.config.postprocess.to_dict())

    @property
    def result_layers(self) -> list[Labels]:
        """The labels layers of the last run (still in the viewer)."""
        return [view.labels for view in self._live_views()]

    def _live_views(self) -> list[ResultView]:
        return [view for view in self.views if view.labels in self.viewer.layers]

    def _apply_contours(self, checked: bool) -> None:
        for layer in self.result_layers:
            layer.contour = 2 if checked else 0

    @property
    def ready(self) -> bool:
        """Whether the work started when the widget opened (`startup_job`) is done."""
        return self._background is None

    # -- thresholds --------------------------------------------------------------------------------------
    def reapply_thresholds(self) -> None:
        """Re-run post-processing of the last results with the current thresholds (in a worker; no network),
        keeping every nucleus the user edited."""
        views = self._live_views()
        if not views:
            return
        if self._reapply_worker is not None:
            self._reapply_pending = True
            return
        try:
            post = self.postprocess_config()
        except NucsegError as err:
            show_error(error_message(err))
            return
        jobs = [(view, snapshot(view)) for view in views]
        self._reapply_worker = start_generator_worker(
            lambda: reapply_views(jobs, post), on_return=lambda updates: self._update_labels(views, updates),
            on_finished=self._reapply_finished, desc="re-applying thresholds")

    def _reapply_finished(self) -> None:
        self._reapply_worker = None
        if self._reapply_pending:
            self._reapply_pending = False
            self.reapply_thresholds()

    def _update_labels(self, views: list[ResultView], updates: list) -> None:
        kept = 0
        for view, update in zip(views, updates):
            if view.labels not in self.viewer.layers:
                continue
            if not apply_update(view, update):
                self._reapply_pending = True  # the user painted meanwhile: merge again, on top of that stroke
                continue
            kept += update.kept_nuclei
        text = f"{sum(v.result.n_nuclei for v in views)} nuclei after re-applying thresholds"
        self.controls.status.setText(text + (f"; your edits to {kept} nuclei kept" if kept else ""))
