"""The "Evaluate" dock widget: metrics of a prediction against ground truth, with the errors made visible.

Thin by design: the numbers come from `nucseg.jobs.evaluate.evaluate_planes` (the same scoring as ``nucseg
evaluate``), run in a worker; the widget shows a metrics table, TP / FP / FN overlay layers (TP cyan, FP magenta,
FN yellow, read-only), and a sortable list of the FP and FN nuclei that takes the camera to each one. A stack of
label images (N, H, W), e.g. a folder of tiles, is scored plane by plane, one column per plane.

Going to an error never changes which layer a brush stroke edits: the prediction (the layer the user corrects)
stays the active layer, so the ground truth is never edited by accident.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSignalBlocker
from qtpy.QtWidgets import QFileDialog, QFormLayout, QHBoxLayout, QLabel, QPushButton, QWidget

from nucseg.errors import InvalidInputError, NucsegError
from nucseg.jobs.evaluate import Evaluation

from . import shortcuts
from ._forms import _dspin, fit_width, scrolled
from ._workers import JobControls, error_message, start_generator_worker
from .evaluation_layers import HIGHLIGHT_LAYER, OBJECTS_LAYER, PIXELS_LAYER, go_to_error, show_overlay
from .evaluation_tables import TABLE_ROWS, ErrorTable, MetricsTable
from .layer_picker import layer_picker
from .layers import level0_data
from .side_by_side import SideBySide

__all__ = ["HIGHLIGHT_LAYER", "OBJECTS_LAYER", "PIXELS_LAYER", "TABLE_ROWS", "EvaluateWidget"]


class EvaluateWidget(QWidget):
    """Score a prediction Labels layer against a ground-truth Labels layer and review the errors.

    Args:
        napari_viewer: the viewer whose layers are read and written.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.evaluation: Evaluation | None = None
        self._layers: tuple[Labels, Labels] | None = None
        self._listed: tuple[str, Any] | None = None  # the FP / FN count whose nuclei the list shows
        self._worker: Any = None
        not_overlay = lambda layer: not layer.metadata.get("nucseg_overlay")  # noqa: E731
        self.truth_combo = layer_picker(napari_viewer, Labels, predicate=not_overlay)
        self.pred_combo = layer_picker(napari_viewer, Labels, predicate=not_overlay)
        self.prob_combo = layer_picker(napari_viewer, Image, optional=True)
        self.prob_combo.setToolTip("a foreground probability map, for the pixel ROC AUC")
        self.image_combo = layer_picker(napari_viewer, Image, optional=True, predicate=not_overlay)
        self.image_combo.setToolTip("the image shown in the side-by-side view")
        self.iou_spin = _dspin(0.05, 0.95, 0.5)
        self.iou_spin.setToolTip("objects match when their IoU is above this (see nucseg.metrics.matching)")
        self.evaluate_button = QPushButton("Evaluate")
        self.controls = JobControls(self)
        self.table = MetricsTable()
        self.errors_table = ErrorTable()
        self.export_button = QPushButton("Metrics CSV…")
        self.export_errors_button = QPushButton("Errors CSV…")
        self.side_button = QPushButton("Side by side")
        self.side_button.setCheckable(True)
        self.side_button.setToolTip("image | truth | prediction at cell level, with linked zoom and pan")
        self.side_by_side = SideBySide(napari_viewer)
        for button in (self.export_button, self.export_errors_button, self.side_button):
            button.setEnabled(False)
        self._build_layout()
        self._guess_layers()
        self.evaluate_button.clicked.connect(self.evaluate)
        self.errors_table.chosen.connect(self.go_to_error)
        self.table.count_clicked.connect(self.list_errors)
        self.export_button.clicked.connect(self._export_dialog)
        self.export_errors_button.clicked.connect(self._export_errors_dialog)
        self.side_button.toggled.connect(self.show_side_by_side)
        self._bind_shortcuts()

    def _bind_shortcuts(self) -> None:
        for name, button, action in (("evaluate", self.evaluate_button, self.evaluate),
                                     ("next_error", None, lambda: self.step_error(1)),
                                     ("previous_error", None, lambda: self.step_error(-1)),
                                     ("side_by_side", self.side_button, self.side_button.toggle),
                                     ("stop", self.controls.stop_button, self.controls.request_stop)):
            if shortcuts.bind(self.viewer, name, self, action) and button is not None:
                button.setToolTip(shortcuts.with_shortcut(button.toolTip(), name))

    def step_error(self, step: int) -> None:
        """Go to the next (`step` 1) or previous (-1) FP / FN in the list as it is sorted."""
        rows = self.errors_table.rowCount()
        if not rows:
            return
        row = self.errors_table.currentRow()
        self.errors_table.selectRow(min(max(row + step, 0), rows - 1) if row >= 0 else 0)

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("ground truth", self.truth_combo.native)
        form.addRow("prediction", self.pred_combo.native)
        form.addRow("probability (AUC)", self.prob_combo.native)
        form.addRow("image", self.image_combo.native)
        form.addRow("IoU threshold", self.iou_spin)
        buttons = QHBoxLayout()
        for button in (self.export_button, self.export_errors_button, self.side_button):
            buttons.addWidget(button)
        layout = scrolled(self)
        layout.addLayout(form)
        layout.addWidget(self.evaluate_button)
        layout.addWidget(self.controls)
        layout.addWidget(self.table)
        layout.addWidget(QLabel("False positives (magenta) and false negatives (yellow):"))
        layout.addWidget(self.errors_table, 1)
        layout.addLayout(buttons)
        fit_width(self)

    def _guess_layers(self) -> None:
        """Prefer a plugin prediction as the prediction and another Labels layer as the truth."""
        labels = self.pred_combo.layers()
        predicted = [layer for layer in labels if "nucseg_result" in layer.metadata]
        if predicted:
            self.pred_combo.set_layer(predicted[-1])
            others = [layer for layer in labels if layer not in predicted]
            if others:
                self.truth_combo.set_layer(others[0])
        images = [layer for layer in self.image_combo.layers() if getattr(layer, "rgb", False)]
        if images:
            self.image_combo.set_layer(images[0])

    # -- evaluation --------------------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Score the chosen layers in a worker; the table, overlays and list update when it is done."""
        from nucseg.jobs.evaluate import evaluate_planes

        if self._worker is not None:
            return
        truth, pred = self.truth_combo.current_layer(), self.pred_combo.current_layer()
        if truth is None or pred is None or truth is pred:
            show_error("choose a ground-truth and a (different) prediction Labels layer")
            return
        prob_layer = self.prob_combo.current_layer()
        prob = None if prob_layer is None else level0_data(prob_layer)
        truth_data, pred_data, iou = level0_data(truth), level0_data(pred), self.iou_spin.value()
        self.evaluate_button.setEnabled(False)
        self._worker = start_generator_worker(
            lambda: evaluate_planes(truth_data, pred_data, prob, iou),
            on_return=lambda evaluation: self._show(evaluation, truth, pred),
            on_finished=self._finished, controls=self.controls, desc="evaluating",
        )

    @property
    def running(self) -> bool:
        """Whether an evaluation is in progress."""
        return self._worker is not None

    def _finished(self) -> None:
        self._worker = None
        self.evaluate_button.setEnabled(True)

    def _show(self, evaluation: Evaluation, truth: Labels, pred: Labels) -> None:
        self.evaluation = evaluation
        self._layers = (truth, pred)
        self.table.fill(evaluation)
        show_overlay(self.viewer, OBJECTS_LAYER, evaluation.object_map, pred, visible=True)
        show_overlay(self.viewer, PIXELS_LAYER, evaluation.pixel_map, pred, visible=False)
        self.viewer.layers.selection.active = pred  # the layer the user corrects, never the truth or an overlay
        self.errors_table.set_errors(evaluation.errors)
        self._listed = None
        first = evaluation.summary or evaluation.rows[0]
        self.controls.job_finished(f"F1 {first['f1']:.3f}, AJI {first['aji']:.3f}, PQ {first['pq']:.3f} "
                                   f"(objects match at IoU >= {evaluation.iou_threshold:g}); "
                                   f"{first['fp']} FP, {first['fn']} FN")
        for button in (self.export_button, self.export_errors_button, self.side_button):
            button.setEnabled(True)
        fit_width(self)  # the filled tables are wider than the empty ones

    def list_errors(self, kind: str, column: int = 0) -> int:
        """List only the FP or FN nuclei counted in a column of the metrics table (a click on that count);
        the same click again lists them all. Returns how many are listed."""
        if self.evaluation is None:
            return 0
        planes = list(np.ndindex(self.evaluation.object_map.shape[:-2]))  # one column each, then MEAN (all)
        plane = planes[column] if 0 <= column < len(planes) else None
        if self._listed == (kind, plane):
            self._listed = None
            return self.errors_table.show_only(None)
        self._listed = (kind, plane)
        return self.errors_table.show_only(kind, plane)

    def table_values(self, column: int = 0) -> dict[str, Any]:
        """The metric values shown in one column of the table, by metric key."""
        return self.table.values(column)

    # -- reviewing ---------------------------------------------------------------------------------------
    def go_to_error(self, index: int) -> None:
        """Centre the camera on the index-th FP / FN nucleus (in the evaluation's order), zoom in on it and box it.

        An FN is selected in the truth layer, an FP in the prediction, but the prediction stays the ACTIVE layer
        (the one the brush edits): reviewing a missed nucleus must not turn the next stroke into an edit of the
        ground truth.
        """
        if self.evaluation is None or self._layers is None or not 0 <= index < len(self.evaluation.errors):
            return
        error = self.evaluation.errors[index]
        truth, pred = self._layers
        layer = truth if error.kind == "FN" else pred
        if layer not in self.viewer.layers:
            return
        go_to_error(self.viewer, error, layer)
        layer.selected_label = error.label
        if pred in self.viewer.layers:
            self.viewer.layers.selection.active = pred

    def export_csv(self, path: str | Path) -> Path:
        """Write the metric rows (one per image, plus the mean for stacks) to `path`, replacing it."""
        from nucseg.metrics.report import metrics_to_csv

        if self.evaluation is None:
            raise InvalidInputError("nothing to export yet: press Evaluate first")
        rows = self.evaluation.rows + ([self.evaluation.summary] if self.evaluation.summary else [])
        rows = [{**row, "iou_threshold": self.evaluation.iou_threshold} for row in rows]
        return metrics_to_csv(rows, path, overwrite=True)  # the save dialog already asked about replacing

    def _save(self, title: str, name: str, write: Any) -> None:
        path, _ = QFileDialog.getSaveFileName(self, title, name, "CSV (*.csv)")
        if not path:
            return
        try:
            written = write(path)
        except NucsegError as err:
            show_error(error_message(err))
            return
        show_info(f"written to {written}")

    def _export_dialog(self) -> None:
        self._save("Export metrics as CSV", "metrics.csv", self.export_csv)

    def _export_errors_dialog(self) -> None:
        self._save("Export the FP / FN list as CSV", "errors.csv", self.errors_table.export_csv)

    def show_side_by_side(self, on: bool = True) -> None:
        """Image | truth | prediction in napari's grid mode at cell level (on), or back to the overlay view (off).

        Centred on the chosen error when there is one, else where the camera is.
        """
        if not on:
            self.side_by_side.disable()
            return
        truth, pred = self._layers or (None, None)
        image = self.image_combo.current_layer()
        overlay = next((layer for layer in self.viewer.layers if layer.name == OBJECTS_LAYER), None)
        try:
            if image is None or truth is None or pred is None:
                raise InvalidInputError("side by side needs an image and an evaluated truth / prediction pair")
            self.side_by_side.enable(image, truth, pred, overlay, centre=self._chosen_centre(pred))
        except NucsegError as err:
            show_error(error_message(err))
            with QSignalBlocker(self.side_button):
                self.side_button.setChecked(False)

    def _chosen_centre(self, pred: Labels) -> tuple[float, float] | None:
        row = self.errors_table.currentRow()
        index = self.errors_table.error_index(row) if row >= 0 else None
        if index is None or self.evaluation is None:
            return None
        error = self.evaluation.errors[index]
        world = pred.data_to_world([*error.plane, *error.centroid])
        return float(world[-2]), float(world[-1])
