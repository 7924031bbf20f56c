"""The "Evaluate" dock widget: metrics of a prediction against ground truth, with the errors made visible.

Thin by design: the numbers come from `nucseg.metrics.report.evaluate_labels` (the same as `nucseg evaluate`), the
overlays from `nucseg.metrics.overlays`, computed in a worker; the widget shows a table, TP / FP / FN overlay
layers (TP cyan, FP magenta, FN yellow), and a list of the FP and FN nuclei that takes the camera to each one.
A stack of label images (N, H, W), e.g. a folder of tiles, is scored plane by plane, one column per plane.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSignalBlocker, Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from nucseg.errors import InvalidInputError, NucsegError
from nucseg.metrics.overlays import CONFUSION_COLORS

from ._workers import JobControls, error_message, start_generator_worker
from .layers import LayerCombo, SideBySide, level0_data
from .segment_widget import _dspin

OBJECTS_LAYER, PIXELS_LAYER = "TP/FP/FN (objects)", "TP/FP/FN (pixels)"
HIGHLIGHT_LAYER = "selected FP / FN"
#: (row label, metric key) of the table, in order
TABLE_ROWS = (("pixel IoU", "iou"), ("pixel Dice", "dice"), ("pixel precision", "precision"),
              ("pixel recall", "recall"), ("pixel accuracy", "accuracy"), ("pixel AUC", "auc"),
              ("object precision", "object_precision"), ("object recall", "object_recall"), ("object F1", "f1"),
              ("AJI", "aji"), ("PQ", "pq"), ("SQ", "sq"), ("DQ", "dq"), ("TP", "tp"), ("FP", "fp"), ("FN", "fn"),
              ("nuclei in truth", "n_truth"), ("nuclei predicted", "n_pred"))


def confusion_colormap() -> DirectLabelColormap:
    """TP cyan, FP magenta, FN yellow, everything else transparent."""
    colors: dict[int | None, Any] = {None: "transparent", 0: "transparent"}
    colors.update({code: np.array([*rgb, 255]) / 255 for code, rgb in CONFUSION_COLORS.items()})
    return DirectLabelColormap(color_dict=colors)


@dataclasses.dataclass(frozen=True)
class ErrorObject:
    """A false positive (predicted, unmatched) or false negative (missed truth) nucleus.

    Attributes:
        kind: "FP" or "FN".
        label: its id in the prediction (FP) or the truth (FN).
        plane: index of its plane in a stack, () for a single image.
        centroid: (y, x) in data pixels of its plane.
        box: (y0, x0, y1, x1) bounding box in pixels (end exclusive).
        area: pixels.
    """

    kind: str
    label: int
    plane: tuple[int, ...]
    centroid: tuple[float, float]
    box: tuple[int, int, int, int]
    area: int

    def text(self) -> str:
        where = f"image {self.plane[0]}: " if self.plane else ""
        side = "missed truth" if self.kind == "FN" else "extra prediction"
        return (f"{self.kind}  {where}{side} #{self.label}  at (y {self.centroid[0]:.0f}, x {self.centroid[1]:.0f}), "
                f"{self.area} px")


@dataclasses.dataclass
class Evaluation:
    """Everything one evaluation shows: per-image metric rows, a summary, overlay maps and the error list."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any] | None
    object_map: np.ndarray
    pixel_map: np.ndarray
    errors: list[ErrorObject]
    iou_threshold: float


def _error_objects(kind: str, labels: np.ndarray, ids: np.ndarray, plane: tuple[int, ...]) -> list[ErrorObject]:
    from scipy import ndimage as ndi

    if not len(ids):
        return []
    ids = np.sort(np.asarray(ids))  # compact index k + 1 <-> ids[k], whatever the ids' range
    position = np.searchsorted(ids, labels)
    hit = (position < len(ids)) & (ids[np.minimum(position, len(ids) - 1)] == labels)
    compact = np.where(hit, position + 1, 0).astype(np.int32)
    boxes = ndi.find_objects(compact, max_label=len(ids))
    centres = ndi.center_of_mass(np.ones(labels.shape), compact, np.arange(1, len(ids) + 1))
    areas = np.bincount(compact.ravel(), minlength=len(ids) + 1)[1:]
    return [ErrorObject(kind, int(ids[k]), plane, (float(c[0]), float(c[1])), (b[0].start, b[1].start, b[0].stop,
                                                                               b[1].stop), int(areas[k]))
            for k, (b, c) in enumerate(zip(boxes, centres)) if b is not None]


def evaluate_planes(truth: Any, pred: Any, prob: Any | None, iou_threshold: float
                    ) -> Generator[tuple[int, int, str], None, Evaluation]:
    """Score `pred` against `truth` (2-D, or stacks scored plane by plane) in a worker; yields (done, total, text)."""
    from nucseg.metrics.matching import match_instances
    from nucseg.metrics.overlays import object_overlay, pixel_confusion_map
    from nucseg.metrics.report import COUNT_KEYS, RATIO_KEYS, evaluate_labels

    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise InvalidInputError(f"truth {truth.shape} and prediction {pred.shape} differ in shape; pick layers of the "
                                "same image (a region's prediction covers only that region)")
    prob = None if prob is None else _probability_like(np.asarray(prob), truth.shape)
    planes = list(np.ndindex(truth.shape[:-2]))
    rows, errors = [], []
    object_map, pixel_map = np.zeros(truth.shape, np.uint8), np.zeros(truth.shape, np.uint8)
    for k, plane in enumerate(planes):
        yield k, len(planes), f"scoring image {k + 1} of {len(planes)}"
        t, p = truth[plane], pred[plane]
        metrics = evaluate_labels(t, p, None if prob is None else prob[plane], iou_threshold)
        match = match_instances(t, p, iou_threshold)
        object_map[plane] = object_overlay(t, p, match)
        pixel_map[plane] = pixel_confusion_map(t, p)
        errors += _error_objects("FN", t, match.fn_ids, plane) + _error_objects("FP", p, match.fp_ids, plane)
        rows.append({"image": f"image {plane[0]}" if plane else "value", **metrics, "n_truth": match.n_truth,
                     "n_pred": match.n_pred})
    summary = None
    if len(rows) > 1:
        summary = {"image": "MEAN"}
        for key in RATIO_KEYS:
            values = [float(r[key]) for r in rows if key in r and not math.isnan(float(r[key]))]
            if any(key in r for r in rows):
                summary[key] = float(np.mean(values)) if values else float("nan")
        summary.update({key: int(sum(r[key] for r in rows)) for key in (*COUNT_KEYS, "n_truth", "n_pred")})
    yield len(planes), len(planes), "done"
    return Evaluation(rows, summary, object_map, pixel_map, errors, iou_threshold)


def _probability_like(prob: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A foreground probability map resampled to the labels' shape when it is at another resolution."""
    prob = prob.astype(np.float32) / 255.0 if prob.dtype == np.uint8 else prob.astype(np.float32)
    if prob.shape != shape:
        if prob.ndim != len(shape):
            raise InvalidInputError(f"probability map {prob.shape} does not match the labels {shape}")
        from skimage.transform import resize

        prob = resize(prob, shape, order=1, preserve_range=True, anti_aliasing=False).astype(np.float32)
    return prob


def _format(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


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
        self._worker: Any = None
        not_overlay = lambda layer: not layer.metadata.get("nucseg_overlay")  # noqa: E731
        self.truth_combo = LayerCombo(napari_viewer, (Labels,), predicate=not_overlay)
        self.pred_combo = LayerCombo(napari_viewer, (Labels,), predicate=not_overlay)
        self.prob_combo = LayerCombo(napari_viewer, (Image,), optional=True)
        self.prob_combo.setToolTip("a foreground probability map, for the pixel ROC AUC")
        self.image_combo = LayerCombo(napari_viewer, (Image,), optional=True, predicate=not_overlay)
        self.image_combo.setToolTip("the image shown in the side-by-side view")
        self.iou_spin = _dspin(0.05, 0.95, 0.5)
        self.evaluate_button = QPushButton("Evaluate")
        self.controls = JobControls(self)
        self.table = QTableWidget(0, 1)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        self.errors_list = QListWidget()
        self.errors_list.setToolTip("click a nucleus to centre the view on it")
        self.export_button = QPushButton("Export CSV…")
        self.side_button = QPushButton("Side by side")
        self.side_button.setCheckable(True)
        self.side_by_side = SideBySide(napari_viewer)
        for button in (self.export_button, self.side_button):
            button.setEnabled(False)
        self._build_layout()
        self._guess_layers()
        self.evaluate_button.clicked.connect(self.evaluate)
        self.errors_list.currentRowChanged.connect(self.go_to_error)
        self.errors_list.itemClicked.connect(lambda item: self.go_to_error(self.errors_list.row(item)))
        self.export_button.clicked.connect(self._export_dialog)
        self.side_button.toggled.connect(self.show_side_by_side)

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("ground truth", self.truth_combo)
        form.addRow("prediction", self.pred_combo)
        form.addRow("probability (AUC)", self.prob_combo)
        form.addRow("image", self.image_combo)
        form.addRow("IoU threshold", self.iou_spin)
        buttons = QHBoxLayout()
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.side_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.evaluate_button)
        layout.addWidget(self.controls)
        layout.addWidget(self.table, 3)
        layout.addWidget(QLabel("False positives (magenta) and false negatives (yellow):"))
        layout.addWidget(self.errors_list, 2)
        layout.addLayout(buttons)

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
            progress_of=lambda record: record,
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
        self._fill_table(evaluation)
        self._show_overlay(OBJECTS_LAYER, evaluation.object_map, pred, visible=True)
        self._show_overlay(PIXELS_LAYER, evaluation.pixel_map, pred, visible=False)
        self.viewer.layers.selection.active = self.viewer.layers[OBJECTS_LAYER]
        with QSignalBlocker(self.errors_list):
            self.errors_list.clear()
            for error in evaluation.errors:
                item = QListWidgetItem(error.text())
                item.setForeground(Qt.GlobalColor.darkYellow if error.kind == "FN" else Qt.GlobalColor.magenta)
                self.errors_list.addItem(item)
        first = evaluation.summary or evaluation.rows[0]
        self.controls.job_finished(f"F1 {first['f1']:.3f}, AJI {first['aji']:.3f}, PQ {first['pq']:.3f} "
                                   f"(objects match at IoU > {evaluation.iou_threshold:g}); "
                                   f"{first['fp']} FP, {first['fn']} FN")
        self.export_button.setEnabled(True)
        self.side_button.setEnabled(True)

    def _fill_table(self, evaluation: Evaluation) -> None:
        columns = evaluation.rows + ([evaluation.summary] if evaluation.summary else [])
        self.table.clear()
        self.table.setRowCount(len(TABLE_ROWS))
        self.table.setColumnCount(len(columns))
        self.table.setVerticalHeaderLabels([label for label, _ in TABLE_ROWS])
        self.table.setHorizontalHeaderLabels([str(c["image"]) for c in columns])
        for j, column in enumerate(columns):
            for i, (_, key) in enumerate(TABLE_ROWS):
                value = column.get(key, float("nan"))
                item = QTableWidgetItem(_format(value))
                item.setData(Qt.ItemDataRole.UserRole, value)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()

    def table_values(self, column: int = 0) -> dict[str, Any]:
        """The metric values shown in one column of the table, by metric key."""
        return {key: self.table.item(i, column).data(Qt.ItemDataRole.UserRole) for i, (_, key) in enumerate(TABLE_ROWS)}

    def _show_overlay(self, name: str, data: np.ndarray, like: Labels, visible: bool) -> None:
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = data
            layer.scale, layer.translate, layer.units = like.scale, like.translate, like.units
            return
        self.viewer.add_labels(data, name=name, colormap=confusion_colormap(), opacity=0.6, visible=visible,
                               scale=like.scale, translate=like.translate, units=like.units,
                               metadata={"nucseg_overlay": True})

    # -- reviewing ---------------------------------------------------------------------------------------
    def go_to_error(self, row: int) -> None:
        """Centre the camera on the row-th FP / FN nucleus, zoom in on it and select it in its labels layer."""
        if self.evaluation is None or self._layers is None or not 0 <= row < len(self.evaluation.errors):
            return
        error = self.evaluation.errors[row]
        layer = self._layers[0] if error.kind == "FN" else self._layers[1]
        if layer not in self.viewer.layers:
            return
        world = np.asarray(layer.data_to_world([*error.plane, *error.centroid]), float)
        for axis in range(len(error.plane)):
            self.viewer.dims.set_point(self.viewer.dims.ndim - layer.ndim + axis, world[axis])
        camera = self.viewer.scene.camera
        camera.center = tuple(world[-2:])
        y0, x0, y1, x1 = error.box
        extent = max((y1 - y0) * abs(layer.scale[-2]), (x1 - x0) * abs(layer.scale[-1]), 1e-9)
        height, width = self.viewer.canvas.viewbox_size(self.viewer.layers)
        camera.zoom = min(height, width) / (extent * 8)  # the nucleus fills about an eighth of the view
        self._highlight(error, layer)
        layer.selected_label = error.label
        self.viewer.layers.selection.active = layer

    def _highlight(self, error: ErrorObject, like: Labels) -> None:
        """A white box around the nucleus, in a Shapes layer of its own (user layers are left as they are)."""
        (y0, x0, y1, x1), pad = error.box, 2.5  # pad: pixels around the nucleus (pixel i spans i +- 0.5)
        ys, xs = (y0 - pad, y1 - 1 + pad), (x0 - pad, x1 - 1 + pad)
        box = np.array([[*error.plane, ys[i], xs[j]] for i, j in ((0, 0), (0, 1), (1, 1), (1, 0))], float)
        layer = next((lay for lay in self.viewer.layers if lay.name == HIGHLIGHT_LAYER), None)
        if layer is None or layer.ndim != box.shape[1]:
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_shapes(ndim=box.shape[1], name=HIGHLIGHT_LAYER, metadata={"nucseg_overlay": True})
        layer.scale, layer.translate, layer.units = like.scale, like.translate, like.units
        layer.data = []
        layer.add_rectangles([box], edge_width=1.0, edge_color="white", face_color="transparent")
        layer.visible = True

    def export_csv(self, path: str | Path) -> Path:
        """Write the metric rows (one per image, plus the mean for stacks) to `path`, replacing it."""
        from nucseg.metrics.report import metrics_to_csv

        if self.evaluation is None:
            raise InvalidInputError("nothing to export yet: press Evaluate first")
        rows = self.evaluation.rows + ([self.evaluation.summary] if self.evaluation.summary else [])
        rows = [{**row, "iou_threshold": self.evaluation.iou_threshold} for row in rows]
        return metrics_to_csv(rows, path, overwrite=True)  # the save dialog already asked about replacing

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export metrics as CSV", "metrics.csv", "CSV (*.csv)")
        if not path:
            return
        try:
            written = self.export_csv(path)
        except NucsegError as err:
            show_error(error_message(err))
            return
        show_info(f"metrics written to {written}")

    def show_side_by_side(self, on: bool = True) -> None:
        """Image | truth | prediction in napari's grid mode (on), or back to the overlay view (off)."""
        if not on:
            self.side_by_side.disable()
            return
        truth, pred = self._layers or (None, None)
        image = self.image_combo.current_layer()
        overlay = next((layer for layer in self.viewer.layers if layer.name == OBJECTS_LAYER), None)
        try:
            if image is None or truth is None or pred is None:
                raise InvalidInputError("side by side needs an image and an evaluated truth / prediction pair")
            self.side_by_side.enable(image, truth, pred, overlay)
        except NucsegError as err:
            show_error(error_message(err))
            with QSignalBlocker(self.side_button):
                self.side_button.setChecked(False)
