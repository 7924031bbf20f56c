"""The "Classify nuclei" dock: teach nucleus types by clicking, train, apply, count, export.

Choose the nuclei (a Labels layer, e.g. from Segment nuclei) and their H&E image. Pick a class (Shift+1..9) and
click nuclei: each click is kept at once in ``$NUCSEG_HOME/classify/labels/`` as the points CSV that
``nucseg classify train`` reads, so closing napari loses nothing; Undo takes the last change back. *Train* fits
the classifier (`nucseg.classify`) in a worker; *Apply* classifies the view, the drawn region or the whole slide
block by block, with progress and Stop. Nuclei are shown as points in their class's colour, the uncertain ones
ringed in white; *Suggest next* jumps to the most uncertain nucleus not yet labelled. The table counts each class
(per mm² when the pixel size is known) in the view, the region and the slide, with the lymphocyte : tumour ratio.
*Save* keeps the classifier as a new version (``$NUCSEG_HOME/classifiers/NAME/vNNN``); *Export* writes the
CSV and QuPath GeoJSON with each nucleus's class.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from nucseg.classify.apply import ClassifiedNuclei
from nucseg.classify.clicks import ClickStore
from nucseg.classify.learner import ClassifierSettings, TrainedClassifier
from nucseg.classify.store import list_classifiers, load_trained, save_classifier
from nucseg.errors import InvalidInputError, NucsegError

from ._forms import fit_width, scrolled
from ._workers import JobControls, error_message, start_generator_worker
from .classify_classes import ClassList
from .classify_jobs import apply_job, export_job, merge, train_job, window
from .classify_view import (
    MARKER_PX,
    NucleiSource,
    density_text,
    inside_box,
    inside_polygons,
    marker_style,
    nuclei_source,
    ratio_text,
    region_polygons,
    scope_box,
)
from .layer_roles import OVERLAY, REVIEWED, TRUTH, layer_role

SCOPES = {"view": "current view", "region": "drawn region", "slide": "whole slide"}
CLICKS_LAYER, CLASSES_LAYER, REGION_LAYER = "class labels", "nucleus classes", "classify region"


class ClassifyWidget(QWidget):
    """Teach nucleus classes by clicks, train, apply and count (see the module docstring)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, choose_color=None):
        super().__init__()
        from .layer_picker import layer_picker

        self.viewer = napari_viewer
        self.source: NucleiSource | None = None
        self.store: ClickStore | None = None
        self.trained: TrainedClassifier | None = None
        self.result: ClassifiedNuclei | None = None
        self.slide_done = False
        self.suggestions: list[int] = []
        self._worker: Any = None
        self._stop = threading.Event()
        self.labels_combo = layer_picker(napari_viewer, Labels,
                                         predicate=lambda la: layer_role(la) not in (OVERLAY, REVIEWED, TRUTH))
        self.image_combo = layer_picker(napari_viewer, Image, predicate=lambda la: layer_role(la) != OVERLAY)
        self.labels_combo.changed.connect(self._nuclei_changed)
        self.image_combo.changed.connect(self._nuclei_changed)
        self.classes = ClassList(choose_color)
        self.classes.changed.connect(self._show_clicks)
        self.click_check = QCheckBox("label nuclei by clicking")
        self.click_check.setChecked(True)
        self.undo_button, self.train_button = QPushButton("Undo"), QPushButton("Train")
        self.clicks_text = QLabel("")
        self.clicks_text.setWordWrap(True)
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(list(SCOPES.values()))
        self.apply_button, self.suggest_button = QPushButton("Apply"), QPushButton("Suggest next")
        self.controls = JobControls(self)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["view", "region", "slide"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setWordWrap(True)
        self.ratio_text = QLabel("")
        self.ratio_text.setWordWrap(True)
        self.name_edit = QLineEdit("my-classifier")
        self.save_button, self.export_button = QPushButton("Save classifier"), QPushButton("Export…")
        self.saved_combo, self.load_button = QComboBox(), QPushButton("Load")
        self.undo_button.clicked.connect(self.undo)
        self.train_button.clicked.connect(self.start_training)
        self.apply_button.clicked.connect(lambda: self.start_apply())
        self.suggest_button.clicked.connect(self.suggest_next)
        self.save_button.clicked.connect(lambda: self.save())
        self.load_button.clicked.connect(lambda: self.load(self.saved_combo.currentText()))
        self.export_button.clicked.connect(lambda: self.export())
        self.viewer.scene.camera.events.center.connect(self._update_counts)
        self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        for i in range(9):
            self.viewer.bind_key(f"Shift-{i + 1}", lambda _v, i=i: self.classes.select(i), overwrite=True)
        self._layout()
        self._refresh_saved()
        self._nuclei_changed()

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("nuclei", self.labels_combo.native)
        form.addRow("image", self.image_combo.native)
        layout = scrolled(self)
        layout.addLayout(form)
        layout.addWidget(_wrapped("classes (click a nucleus to give it the selected one):"))
        layout.addWidget(self.classes)
        row = QHBoxLayout()
        row.addWidget(self.click_check)
        row.addWidget(self.undo_button)
        layout.addLayout(row)
        layout.addWidget(self.clicks_text)
        layout.addWidget(self.train_button)
        apply_row = QHBoxLayout()
        apply_row.addWidget(self.scope_combo)
        apply_row.addWidget(self.apply_button)
        apply_row.addWidget(self.suggest_button)
        layout.addLayout(apply_row)
        layout.addWidget(self.controls)
        layout.addWidget(_wrapped("nuclei per class (per mm² when the pixel size is known):"))
        layout.addWidget(self.table)
        layout.addWidget(self.ratio_text)
        save_row = QHBoxLayout()
        save_row.addWidget(self.name_edit)
        save_row.addWidget(self.save_button)
        layout.addLayout(save_row)
        load_row = QHBoxLayout()
        load_row.addWidget(self.saved_combo, 1)
        load_row.addWidget(self.load_button)
        layout.addLayout(load_row)
        layout.addWidget(self.export_button)
        layout.addStretch()
        fit_width(self)

    # ---- the nuclei and the clicks ----------------------------------------------------------------------------
    def _nuclei_changed(self, *_: Any) -> None:
        labels = self.labels_combo.current_layer()
        if labels is not None and isinstance(labels.metadata.get("nucseg_image"), dict):
            name = labels.metadata["nucseg_image"].get("name")
            if name in [la.name for la in self.image_combo.layers()] and self.image_combo.currentText() != name:
                self.image_combo.set_layer(name)  # calls back here
                return
        try:
            self.source = nuclei_source(labels, self.image_combo.current_layer())
        except NucsegError:
            self.source = self.store = None
            self.clicks_text.setText("choose the nuclei and their image")
            return
        self.store = ClickStore(self.source.key)
        self.store.set_ids([self.source.nucleus_at(c.x, c.y) for c in self.store.clicks])
        self.result, self.slide_done, self.suggestions = None, False, []
        self._show_clicks()

    def label_at(self, x: float, y: float) -> bool:
        """Give the nucleus under full-resolution (x, y) the selected class; False when there is none."""
        if self.source is None or self.store is None:
            return False
        nucleus = self.source.nucleus_at(x, y)
        if not nucleus:
            self.clicks_text.setText("no nucleus there: click inside a segmented nucleus")
            return False
        self.store.add(x, y, self.classes.current().name, nucleus)
        self._show_clicks()
        return True

    def _on_mouse(self, viewer: Any, event: Any):
        if not self.click_check.isChecked() or self.source is None or event.button != 1 or event.modifiers:
            return
        start = np.asarray(event.position, float)
        yield
        moved = False
        while event.type == "mouse_move":
            moved = moved or bool(np.abs(np.asarray(event.position, float) - start).max() > 2 / viewer.scene.camera.zoom)
            yield
        if not moved:
            self.label_at(*self.source.world_to_point(start))

    def undo(self) -> None:
        if self.store is not None and self.store.undo():
            self.store.set_ids([self.source.nucleus_at(c.x, c.y) for c in self.store.clicks])
            self._show_clicks()

    def _points_layer(self, name: str, **kwargs: Any) -> Points:
        layer = next((la for la in self.viewer.layers if la.name == name and isinstance(la, Points)), None)
        if layer is None:
            image = self.source.image_layer
            layer = self.viewer.add_points(np.zeros((0, 2)), name=name, scale=image.scale[-2:],
                                           translate=image.translate[-2:], units=tuple(image.units)[-2:], **kwargs)
            layer.metadata["nucseg"] = {"role": OVERLAY}
        return layer

    def _show_clicks(self) -> None:
        if self.store is None or self.source is None:
            return
        counts = self.store.counts()
        self.clicks_text.setText(f"{len(self.store)} labelled: " + (", ".join(f"{k} {v}" for k, v in counts.items())
                                                                     or "click nuclei to label them"))
        colors = self.classes.colors()
        clicks = self.store.clicks
        data = np.array([[c.y - 0.5, c.x - 0.5] for c in clicks]).reshape(-1, 2)
        layer = self._points_layer(CLICKS_LAYER, symbol="square", size=MARKER_PX * 1.6, opacity=0.9)
        layer.data = data
        if len(clicks):
            layer.face_color = np.zeros((len(clicks), 4))
            layer.border_color = [(*(np.array(colors.get(c.klass, (128, 128, 128))) / 255), 1.0) for c in clicks]
            layer.border_width = 0.25
        layer.refresh()

    # ---- training ------------------------------------------------------------------------------------------
    def _busy(self) -> bool:
        if self._worker is not None:
            show_error("wait for the running job to finish (or stop it)")
            return True
        return False

    def start_training(self) -> None:
        if self._busy():
            return
        if self.source is None or self.store is None or not len(self.store):
            show_error("label some nuclei of at least two classes first")
            return
        source, points, classes = self.source, self.store.points(), list(self.classes.classes)
        settings = ClassifierSettings()

        self._worker = start_generator_worker(lambda: train_job(source, points, classes, settings),
                                              on_return=self._trained, on_finished=self._done,
                                              controls=self.controls, desc="training")

    def _trained(self, value: tuple[TrainedClassifier, list]) -> None:
        self.trained, skipped = value
        counts = ", ".join(f"{k} {v}" for k, v in self.trained.data.counts().items() if v)
        self.controls.status.setText(f"trained on {len(self.trained.data.examples)} nuclei ({counts})"
                                     + (f"; {len(skipped)} clicks off nuclei skipped" if skipped else ""))

    def _done(self) -> None:
        self._worker = None

    # ---- applying ------------------------------------------------------------------------------------------
    def scope(self) -> str:
        return list(SCOPES)[self.scope_combo.currentIndex()]

    def _region_layer(self) -> Shapes | None:
        return next((la for la in self.viewer.layers if la.name == REGION_LAYER and isinstance(la, Shapes)), None)

    def start_apply(self, scope: str | None = None) -> None:
        if self._busy():
            return
        if self.trained is None or self.source is None:
            show_error("train (or load) a classifier first")
            return
        scope = scope or self.scope()
        try:
            box = scope_box(scope, self.viewer, self.source, self._region_layer())
        except NucsegError as err:
            show_error(str(err))
            return
        source, trained, self._stop = self.source, self.trained, threading.Event()
        whole = window(source, box)[-1]
        self._worker = start_generator_worker(
            lambda: apply_job(source, trained, box, self._stop), on_return=lambda r: self._applied(r, whole),
            on_finished=self._done, stop_event=self._stop, controls=self.controls, desc="classifying")

    def _applied(self, result: ClassifiedNuclei, whole: bool) -> None:
        result = merge(self.result, result)
        self.result = result
        self.slide_done = self.slide_done or (whole and not result.stopped)
        self.suggestions = []
        self._show_classes()
        self._update_counts()
        self.controls.status.setText(f"{len(result)} nuclei classified" + (" (stopped: the blocks done are kept)"
                                                                          if result.stopped else ""))

    def _show_classes(self) -> None:
        result = self.result
        layer = self._points_layer(CLASSES_LAYER, size=MARKER_PX, opacity=0.85)
        layer.data = np.stack([result.y - 0.5, result.x - 0.5], axis=1) if len(result) else np.zeros((0, 2))
        if len(result):
            face, border, width = marker_style(result.names, result.probability, self.trained.colors,
                                               self.trained.settings.uncertain_below)
            layer.face_color, layer.border_color, layer.border_width = face, border, width
        layer.refresh()
        clicks = next((la for la in self.viewer.layers if la.name == CLICKS_LAYER), None)
        if clicks is not None:  # the clicked labels stay on top
            self.viewer.layers.move(self.viewer.layers.index(clicks), len(self.viewer.layers))

    def suggest_next(self) -> int | None:
        """Centre the view on the next most uncertain nucleus not labelled yet; returns its id."""
        if self.result is None or not len(self.result):
            show_error("apply the classifier first")
            return None
        if not self.suggestions:
            labelled = [c.nucleus_id for c in self.store.clicks] if self.store else []
            self.suggestions = list(self.result.most_uncertain(exclude=labelled, k=50))
        if not self.suggestions:
            show_info("no uncertain nucleus left")
            return None
        i = self.suggestions.pop(0)
        r = self.result
        self.viewer.scene.camera.center = self.source.point_to_world(r.x[i], r.y[i])[-2:]
        layer = self.viewer.layers[CLASSES_LAYER]
        layer.selected_data = {int(i)}
        top = np.argsort(r.probabilities[i])[::-1][:2]
        self.controls.status.setText(f"nucleus {r.ids[i]}: " + ", ".join(
            f"{r.classes[k]} {r.probabilities[i, k]:.2f}" for k in top) + "; click it to label it")
        return int(r.ids[i])

    # ---- counts --------------------------------------------------------------------------------------------
    def counts(self) -> dict[str, tuple[dict[str, int], float] | None]:
        """{scope: (counts per class, area in pixels²) or None when not available} for view, region, slide."""
        out: dict[str, Any] = {"view": None, "region": None, "slide": None}
        r = self.result
        if r is None or self.source is None:
            return out
        try:
            box = scope_box("view", self.viewer, self.source, None)
            out["view"] = (r.counts(inside_box(r.x, r.y, box)), float(box[2] * box[3]))
        except InvalidInputError:
            pass
        shapes = self._region_layer()
        if shapes is not None and len(shapes.data):
            inside, area = inside_polygons(r.x, r.y, region_polygons(shapes, self.source.image_layer))
            out["region"] = (r.counts(inside), area)
        h, w = self.source.labels.shape[-2:]
        out["slide"] = (r.counts(), float(h * w))
        return out

    def _update_counts(self, *_: Any) -> None:
        if self.result is None:
            return
        counts, classes = self.counts(), self.result.classes
        self.table.setRowCount(len(classes))
        self.table.setVerticalHeaderLabels(classes)
        self.table.setHorizontalHeaderLabels(["view", "region", "slide" if self.slide_done else "classified"])
        for col, scope in enumerate(("view", "region", "slide")):
            for row, name in enumerate(classes):
                cell = counts[scope]
                text = density_text(cell[0][name], cell[1], self.source.mpp) if cell else "–"
                self.table.setItem(row, col, QTableWidgetItem(text))
        ratios = [f"{scope} {ratio_text(counts[scope][0])}" for scope in ("view", "region", "slide") if counts[scope]
                  and ratio_text(counts[scope][0])]
        self.ratio_text.setText("lymphocytes per tumour cell: " + ", ".join(ratios) if ratios else "")

    # ---- keeping -------------------------------------------------------------------------------------------
    def _refresh_saved(self) -> None:
        self.saved_combo.clear()
        self.saved_combo.addItems([f"{i.name}/{i.version}" for i in list_classifiers()])

    def save(self, name: str | None = None) -> Path | None:
        if self.trained is None:
            show_error("train a classifier first")
            return None
        try:
            folder = save_classifier(self.trained.data, name or self.name_edit.text().strip())
        except NucsegError as err:
            show_error(str(err))
            return None
        self._refresh_saved()
        show_info(f"classifier saved in {folder}")
        return folder

    def load(self, name: str) -> None:
        try:
            self.trained, folder = load_trained(name)
        except NucsegError as err:
            show_error(str(err))
            return
        self.controls.status.setText(f"loaded {folder} ({len(self.trained.data.examples)} examples)")

    def export(self, folder: str | Path | None = None) -> None:
        """Write <stem>_nuclei.csv and .geojson with each nucleus's class and <stem>_classes.json (counts)."""
        if self._busy():
            return
        if self.trained is None or self.source is None:
            show_error("train (or load) a classifier first")
            return
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Export nuclei with classes to")
            if not folder:
                return
        from nucseg.jobs.batch import plain_stem

        source, trained, folder = self.source, self.trained, Path(folder)
        stem = plain_stem(Path(source.key))
        self._worker = start_generator_worker(
            lambda: export_job(source, trained, folder, stem), on_return=lambda p: self.controls.status.setText("exported " + ", ".join(str(v) for v in p.values())),
            on_error=lambda err: show_error(error_message(err)), on_finished=self._done, controls=self.controls,
            desc="exporting")

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        if self._on_mouse in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse)
        for i in range(9):  # the class shortcuts go with the dock
            self.viewer.bind_key(f"Shift-{i + 1}", None, overwrite=True)
        super().closeEvent(event)


def _wrapped(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label
