"""The "Segment nuclei" dock widget: pick an image, a model and settings, run `iter_predict` in a worker.

Thin by design (DESIGN.md rule 8): it reads its inputs, builds an `InferenceConfig`, starts
`nucseg.inference.predict.iter_predict` in a thread worker (`_workers.start_generator_worker`) and turns the
`PredictionResult` into layers (`layers.py`). Changing a threshold re-applies post-processing to the cached
probabilities (`reapply_postprocess`) in a worker and replaces the labels in place: the network never runs again.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import napari
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from nucseg.config import InferenceConfig, PostprocessConfig, TilingConfig
from nucseg.errors import InvalidInputError, NucsegError
from nucseg.inference.predict import PredictionResult, PredictProgress, iter_predict, reapply_postprocess
from nucseg.models.device import available_devices
from nucseg.models.registry import DEFAULT_MODEL, list_models, resolve_model

from ._native import isolate_triton
from ._workers import JobControls, error_message, start_generator_worker
from .layers import (
    ImageInput,
    LayerCombo,
    Region,
    field_of_view_region,
    image_input,
    labels_data,
    layer_mpp,
    probability_data,
    probability_transform,
    result_transform,
    shapes_to_regions,
)

BROWSE = "Browse folder…"
WHOLE, FIELD_OF_VIEW, SHAPES = "whole image", "current field of view", "drawn rectangles"
#: milliseconds to wait after the last threshold change before re-applying post-processing
REAPPLY_DELAY_MS = 300
#: image-layer metadata key: "user" when its "mpp" was given in this widget rather than read from the file
MPP_FROM = "nucseg_mpp_from"

isolate_triton()  # before torch is imported by a run: see _native


def predictions_dir() -> Path:
    """Where slide predictions are streamed: ``$NUCSEG_HOME/predictions`` (default ``~/.nucseg/predictions``)."""
    return Path(os.environ.get("NUCSEG_HOME", Path.home() / ".nucseg")) / "predictions"


def new_prediction_path(stem: str, suffix: str = "") -> Path:
    """A new, unused ``<stem>-<timestamp><suffix>.zarr`` folder name under `predictions_dir`."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "image"
    base = predictions_dir() / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"
    path, n = base.with_name(base.name + ".zarr"), 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}.zarr"), n + 1
    return path


def streams_to_disk(image: ImageInput, region: Region | None, block_size: int, model_mpp: float) -> bool:
    """Whether a run streams into zarr under `predictions_dir`: slides always, and flat images bigger than one block
    at the model's resolution, whose probabilities would otherwise sit in memory whole (a 10,000 px square 20x
    TIFF is 20,000 px square at 40x: 4.8 GB of float32 probabilities)."""
    if image.multiscale:
        return True
    h, w = (region[2], region[3]) if region is not None else image.shape
    scale = (image.mpp or model_mpp) / model_mpp
    return h * w * scale * scale > block_size * block_size


def segment_regions(image: ImageInput, config: InferenceConfig, regions: list[Region | None],
                    outs: list[Path | None], stop: threading.Event
                    ) -> Generator[PredictProgress, None, list[PredictionResult]]:
    """Run `iter_predict` on each region in turn (in a worker thread), yielding its progress records."""
    source = image.load()
    results: list[PredictionResult] = []
    for k, (region, out) in enumerate(zip(regions, outs), start=1):
        gen = iter_predict(source, config, mpp=image.mpp, region=region, out=out, stop=stop)
        while True:
            try:
                record = next(gen)
            except StopIteration as done:
                results.append(done.value)
                break
            where = f"region {k}/{len(regions)}: " if len(regions) > 1 else ""
            yield PredictProgress(record.done, record.total, f"{where}{record.stage} ({record.done}/{record.total} "
                                  "tiles)", record.block, record.blocks)
        if stop.is_set():
            break
    return results


def reapply_all(results: list[PredictionResult], postprocess: PostprocessConfig
                ) -> Generator[PredictProgress, None, list[PredictionResult]]:
    """`reapply_postprocess` on each result (in a worker thread)."""
    out = []
    for k, result in enumerate(results):
        yield PredictProgress(k, len(results), "re-applying thresholds")
        out.append(reapply_postprocess(result, postprocess))
    return out


class SegmentWidget(QWidget):
    """Segment nuclei in an image layer and show them as Labels (plus a hidden probability layer).

    Args:
        napari_viewer: the viewer whose layers are read and written.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result_layers: list[Labels] = []
        self._worker: Any = None
        self._reapply_worker: Any = None
        self._reapply_pending = False
        self._stop: threading.Event | None = None

        self.image_combo = LayerCombo(napari_viewer, (Image,))
        self.model_combo = QComboBox()
        for name, description in list_models().items():
            self.model_combo.addItem(name)
            self.model_combo.setItemData(self.model_combo.count() - 1, description, 3)  # tooltip role
        self.model_combo.addItem(BROWSE)
        if self.model_combo.findText(DEFAULT_MODEL) >= 0:
            self.model_combo.setCurrentText(DEFAULT_MODEL)
        self._model = self.model_combo.currentText()
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", *available_devices()])
        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setRange(0.1, 2.0)  # 100x to 5x: the magnifications nuclei can be segmented at
        self.mpp_spin.setDecimals(3)
        self.mpp_spin.setSingleStep(0.05)
        self.mpp_spin.setSuffix(" µm/px")
        self.mpp_note = QLabel()
        self.mpp_note.setWordWrap(True)

        tiling = TilingConfig()
        self.tile_spin = _spin(32, 4096, tiling.tile_size, step=32)
        self.overlap_spin = _spin(0, 1024, tiling.overlap, step=8)
        self.batch_spin = _spin(1, 256, tiling.batch_size)
        self.tta_check = QCheckBox("test-time augmentation (flips, 4x slower)")

        self.fg_spin = _dspin(0.01, 0.99, 0.5)
        self.marker_spin = _dspin(-0.99, 0.99, 0.4)
        self.min_area_spin = _spin(0, 100000, 30)
        self._set_threshold_defaults(self._model)

        self.region_combo = QComboBox()
        self.region_combo.addItems([WHOLE, FIELD_OF_VIEW, SHAPES])
        self.shapes_combo = LayerCombo(napari_viewer, (Shapes,))
        self.shapes_combo.setToolTip("rectangles drawn in this Shapes layer are segmented, each on its own")

        self.run_button = QPushButton("Run")
        self.controls = JobControls(self)
        self.contours_check = QCheckBox("show contours only")
        self.contours_check.setChecked(True)

        self._build_layout()
        self._reapply_timer = QTimer(self)
        self._reapply_timer.setSingleShot(True)
        self._reapply_timer.setInterval(REAPPLY_DELAY_MS)
        self._reapply_timer.timeout.connect(self.reapply_thresholds)
        for spin in (self.fg_spin, self.marker_spin, self.min_area_spin):
            spin.valueChanged.connect(self._reapply_timer.start)
        self.model_combo.currentTextChanged.connect(self._on_model_changed)
        self.image_combo.currentTextChanged.connect(self._sync_pixel_size)
        self.region_combo.currentTextChanged.connect(self._update_enabled)
        self.contours_check.toggled.connect(self._apply_contours)
        self.run_button.clicked.connect(self.run)
        self._update_enabled()
        self._sync_pixel_size()

    # -- layout and inputs -------------------------------------------------------------------------------
    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("pixel size", self.mpp_spin)
        form.addRow("", self.mpp_note)
        form.addRow("model", self.model_combo)
        form.addRow("device", self.device_combo)
        form.addRow("tile size", self.tile_spin)
        form.addRow("overlap", self.overlap_spin)
        form.addRow("batch size", self.batch_spin)
        form.addRow("", self.tta_check)
        form.addRow("region", self.region_combo)
        form.addRow("shapes layer", self.shapes_combo)
        thresholds = QGroupBox("Post-processing (re-applied live)")
        tform = QFormLayout(thresholds)
        tform.addRow("foreground threshold", self.fg_spin)
        tform.addRow("marker threshold", self.marker_spin)
        tform.addRow("min area (px)", self.min_area_spin)
        tform.addRow("", self.contours_check)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(thresholds)
        layout.addWidget(self.run_button)
        layout.addWidget(self.controls)
        layout.addStretch(1)

    def _update_enabled(self, *_: Any) -> None:
        self.shapes_combo.setEnabled(self.region_combo.currentText() == SHAPES)

    def _set_threshold_defaults(self, model: str) -> None:
        try:
            defaults = {**PostprocessConfig().to_dict(), **resolve_model(model).postprocess_defaults}
        except NucsegError:
            defaults = PostprocessConfig().to_dict()
        for spin, key in ((self.fg_spin, "foreground_threshold"), (self.marker_spin, "marker_threshold"),
                          (self.min_area_spin, "min_area")):
            spin.blockSignals(True)
            spin.setValue(defaults[key])
            spin.blockSignals(False)
        self._min_marker_area = int(defaults.get("min_marker_area", PostprocessConfig().min_marker_area))

    def _on_model_changed(self, name: str) -> None:
        if name == BROWSE:
            folder = QFileDialog.getExistingDirectory(self, "Choose a model folder (config.json + model.safetensors)")
            if not folder or not self.add_model_folder(folder):
                self.model_combo.blockSignals(True)
                self.model_combo.setCurrentText(self._model)
                self.model_combo.blockSignals(False)
            return
        self._model = name
        self._set_threshold_defaults(name)
        self._sync_pixel_size(keep_value=True)

    def _model_mpp(self) -> float:
        try:
            return resolve_model(self._model).mpp
        except NucsegError:
            return 0.25

    def _sync_pixel_size(self, *_: Any, keep_value: bool = False) -> None:
        """Show the chosen image's pixel size: the file's (fixed), or one the user gives for a file that does not
        say, as a 20x JPG would not (the model resamples it to its own; assuming 40x would halve every nucleus)."""
        layer = self.image_combo.current_layer()
        mpp = layer_mpp(layer) if layer is not None else None
        from_file = mpp is not None and layer.metadata.get(MPP_FROM) != "user"
        model_mpp = self._model_mpp()
        self.mpp_spin.setEnabled(layer is not None and not from_file)
        if from_file or not keep_value:
            self.mpp_spin.setValue(mpp or model_mpp)
        if layer is None:
            self.mpp_note.setText("")
        elif from_file:
            self.mpp_note.setText(f"from the file (about {10 / mpp:.0f}x)")
        else:
            self.mpp_note.setText(f"not in the file: set it if this is not {10 / model_mpp:.0f}x (20x is about 0.5, "
                                  f"10x about 1.0); the model works at {model_mpp:g} µm/px and resamples")

    def pixel_size(self, layer: Image) -> float | None:
        """Microns per pixel to segment `layer` at (None: unknown, taken as the model's). One the user gave is kept
        on the layer (metadata "mpp"), so corrections, fine-tuning and measurements in µm all use it."""
        mpp = layer_mpp(layer)
        if mpp is not None and layer.metadata.get(MPP_FROM) != "user":
            return mpp
        value = round(self.mpp_spin.value(), 4)
        if mpp is None and abs(value - self._model_mpp()) < 1e-6:
            return None  # left at the model's: nothing claims to know this image's pixel size (exports stay in px)
        layer.metadata["mpp"], layer.metadata[MPP_FROM] = value, "user"
        return value

    def add_model_folder(self, folder: str | Path) -> bool:
        """Add a model folder to the list and choose it; shows an error and returns False when it is not one."""
        try:
            resolve_model(folder)
        except NucsegError as err:
            show_error(error_message(err))
            return False
        text = str(folder)
        if self.model_combo.findText(text) < 0:
            self.model_combo.insertItem(self.model_combo.count() - 1, text)
        self.model_combo.setCurrentText(text)
        return True

    def postprocess_config(self) -> PostprocessConfig:
        """The thresholds as a validated config (raises ConfigError)."""
        return PostprocessConfig(foreground_threshold=self.fg_spin.value(), marker_threshold=self.marker_spin.value(),
                                 min_area=self.min_area_spin.value(), min_marker_area=self._min_marker_area)

    def inference_config(self) -> InferenceConfig:
        """Everything chosen, as a validated `InferenceConfig` (raises ConfigError with a readable message)."""
        tiling = TilingConfig(self.tile_spin.value(), self.overlap_spin.value(), self.batch_spin.value())
        return InferenceConfig(model=self._model, device=self.device_combo.currentText(), tiling=tiling,
                               postprocess=self.postprocess_config(), tta=self.tta_check.isChecked(),
                               block_size=max(InferenceConfig().block_size, tiling.tile_size))

    def regions(self, layer: Image) -> list[Region | None]:
        """The regions to segment, in level-0 pixels (None = the whole image)."""
        choice = self.region_combo.currentText()
        if choice == FIELD_OF_VIEW:
            return [field_of_view_region(self.viewer, layer)]
        if choice == SHAPES:
            shapes = self.shapes_combo.current_layer()
            if shapes is None:
                raise InvalidInputError("no Shapes layer: add one and draw rectangles on the image")
            return list(shapes_to_regions(shapes, layer))
        return [None]

    # -- running -----------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether a segmentation run is in progress."""
        return self._worker is not None

    def run(self) -> None:
        """Start a segmentation run in a worker (errors are shown, never raised)."""
        if self.running:
            return
        try:
            layer = self.image_combo.current_layer()
            if layer is None:
                raise InvalidInputError("no image layer: open an H&E image first (File > Open, or a sample)")
            config = self.inference_config()
            image = dataclasses.replace(image_input(layer), mpp=self.pixel_size(layer))
            regions = self.regions(layer)
        except NucsegError as err:
            show_error(error_message(err))
            return
        stem = Path(image.path).stem if image.path else image.name
        outs = [new_prediction_path(stem, f"-r{k}" if len(regions) > 1 else "")
                if streams_to_disk(image, region, config.block_size, self._model_mpp()) else None
                for k, region in enumerate(regions, start=1)]
        for out in outs:
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
        self._stop = stop = threading.Event()
        self.run_button.setEnabled(False)
        context = (image.name, layer.scale, layer.translate, regions, tuple(layer.units)[-2:])
        self._worker = start_generator_worker(
            lambda: segment_regions(image, config, regions, outs, stop),
            on_return=lambda results: self._show_results(results, context),
            on_finished=self._run_finished, stop_event=stop, controls=self.controls, desc=f"segmenting {image.name}",
        )

    def stop(self) -> None:
        """Ask the running segmentation to stop after its current batch."""
        self.controls.request_stop()

    def _run_finished(self) -> None:
        self._worker = None
        self.run_button.setEnabled(True)

    def _show_results(self, results: list[PredictionResult], context: tuple) -> None:
        name, scale, translate, regions, units = context
        layers: list[Labels] = []
        for k, result in enumerate(results, start=1):
            if result.stopped and result.n_nuclei == 0:
                continue
            suffix = f" {k}" if len(regions) > 1 else ""
            layers.append(self._add_result_layers(result, name, suffix, scale, translate, units))
        total = sum(r.n_nuclei for r in results)
        seconds = sum(r.seconds for r in results)
        text = f"{total} nuclei in {seconds:.1f} s"
        if any(r.stopped for r in results):
            text = f"stopped: {text} (only finished blocks are kept)"
            show_info(f"segmentation of {name} stopped; {total} nuclei kept")
        if layers:
            self.result_layers = layers
        self.controls.job_finished(text)

    def _add_result_layers(self, result: PredictionResult, name: str, suffix: str, scale: Any, translate: Any,
                           units: Any) -> Labels:
        prob, prob_multiscale, limits = probability_data(result)
        prob_shape = result.probabilities.shape[-2:]
        p_scale, p_translate = probability_transform(scale, translate, result.region, prob_shape)
        self.viewer.add_image(prob, name=f"{name} foreground probability{suffix}", colormap="magma",
                              visible=False, scale=p_scale, translate=p_translate, units=units, contrast_limits=limits,
                              multiscale=prob_multiscale, blending="additive",
                              metadata={"mpp": result.model_mpp, "nucseg_region": result.region})
        data, multiscale = labels_data(result)
        l_scale, l_translate = result_transform(scale, translate, result.region)
        labels = self.viewer.add_labels(data, name=f"{name} nuclei{suffix}", scale=l_scale, translate=l_translate, units=units,
                                        multiscale=multiscale,
                                        metadata=_result_metadata(result), opacity=0.8)
        labels.contour = 2 if self.contours_check.isChecked() else 0
        return labels

    def _apply_contours(self, checked: bool) -> None:
        for layer in self._live_result_layers():
            layer.contour = 2 if checked else 0

    def _live_result_layers(self) -> list[Labels]:
        return [layer for layer in self.result_layers if layer in self.viewer.layers]

    # -- thresholds --------------------------------------------------------------------------------------
    def reapply_thresholds(self) -> None:
        """Re-run post-processing of the last results with the current thresholds (in a worker; no network)."""
        layers = self._live_result_layers()
        if not layers:
            return
        if self._reapply_worker is not None:
            self._reapply_pending = True
            return
        try:
            post = self.postprocess_config()
        except NucsegError as err:
            show_error(error_message(err))
            return
        results = [layer.metadata["nucseg_result"] for layer in layers]
        self._reapply_worker = start_generator_worker(
            lambda: reapply_all(results, post), on_return=lambda new: self._update_labels(layers, new),
            on_finished=self._reapply_finished, desc="re-applying thresholds",
        )

    def _reapply_finished(self) -> None:
        self._reapply_worker = None
        if self._reapply_pending:
            self._reapply_pending = False
            self.reapply_thresholds()

    def _update_labels(self, layers: list[Labels], results: list[PredictionResult]) -> None:
        for layer, result in zip(layers, results):
            if layer not in self.viewer.layers:
                continue
            data, _ = labels_data(result)
            layer.metadata.update(_result_metadata(result))
            layer.data = data
        self.controls.status.setText(f"{sum(r.n_nuclei for r in results)} nuclei after re-applying thresholds")


def _result_metadata(result: PredictionResult) -> dict[str, Any]:
    return {"nucseg_result": result, "nucseg_config": result.config.to_dict(), "mpp": result.mpp,
            "nucseg_region": result.region, "nucseg_model": result.model_info}


def _spin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(lo, hi)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin


def _dspin(lo: float, hi: float, value: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(lo, hi)
    spin.setDecimals(2)
    spin.setSingleStep(0.05)
    spin.setValue(value)
    return spin
