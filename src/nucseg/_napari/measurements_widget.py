"""The "Measurements" dock: nuclei per mm² of tissue for the whole labels, the field of view and a drawn region, a
density heatmap layer, and a table of every nucleus that takes the camera to it.

Thin by design: the numbers come from `measurements.measure_layer` (a worker over `nucseg.metrics.density` and
`nucseg.io.measure`, the functions ``nucseg predict`` writes its JSON with) and `nucseg.metrics.density.summarize`;
µm and mm² only when the pixel size is known. The view's figures follow the camera (recounted from the kept
centroids, no pixel read); the drawn region is every shape of the chosen Shapes layer together.
"""

from __future__ import annotations

from typing import Any

import napari
import numpy as np
from napari.layers import Labels, Shapes
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from nucseg.errors import InvalidInputError
from nucseg.metrics.density import density_grid, summarize

from . import measurements, shortcuts
from .evaluation_layers import centre_on
from .layer_picker import layer_picker
from .layers import field_of_view_region

#: the view's figures are recounted once the camera has stayed still this long
VIEW_DELAY_MS = 150


class NucleiModel(QAbstractTableModel):
    """Every nucleus of a `Measured`, one row each, sortable by any column (numbers as numbers)."""

    def __init__(self):
        super().__init__()
        self.headers: list[str] = []
        self.keys: list[str] = []
        self.columns: dict[str, np.ndarray] = {}
        self.order = np.zeros(0, np.int64)

    def set_measured(self, measured: measurements.Measured | None) -> None:
        self.beginResetModel()
        if measured is None:
            self.headers, self.keys, self.columns, self.order = [], [], {}, np.zeros(0, np.int64)
        else:
            cols, micron = measured.columns, measured.mpp is not None
            spec = [("id", "id"), ("area (µm²)" if micron else "area (px)", "area_um2" if micron else "area_px"),
                    ("perimeter (µm)" if micron else "perimeter (px)", "perimeter_um" if micron else "perimeter_px"),
                    *([("haematoxylin (OD)", "mean_hematoxylin_od")] if "mean_hematoxylin_od" in cols else []),
                    ("x (px)", "centroid_x"), ("y (px)", "centroid_y")]
            self.headers, self.keys = [h for h, _ in spec], [k for _, k in spec]
            self.columns = {k: np.asarray(cols[k]) for k in self.keys}
            self.order = np.arange(len(cols["id"]))
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008 - Qt's names
        return 0 if parent.isValid() else int(self.order.size)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.keys)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role != Qt.ItemDataRole.DisplayRole or not index.isValid():
            return None
        value = self.columns[self.keys[index.column()]][self.order[index.row()]]
        if self.keys[index.column()] == "id":
            return str(int(value))
        return f"{value:.3f}" if "hematoxylin" in self.keys[index.column()] else f"{value:.1f}"

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.headers[section]
        return None

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        if not self.keys:
            return
        self.layoutAboutToBeChanged.emit()
        rank = np.argsort(self.columns[self.keys[column]], kind="stable")
        self.order = rank[::-1] if order == Qt.SortOrder.DescendingOrder else rank
        self.layoutChanged.emit()

    def row_of(self, row: int) -> dict[str, float]:
        k = self.order[row]
        return {key: float(values[k]) for key, values in self.columns.items()}


class MeasurementsWidget(QWidget):
    """Nuclei per area and per-nucleus measurements of a nuclei (Labels) layer.

    Args:
        napari_viewer: the viewer.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.measured: measurements.Measured | None = None
        self._layer: Labels | None = None
        not_overlay = lambda layer: not layer.metadata.get("nucseg_overlay")  # noqa: E731
        self.labels_combo = layer_picker(napari_viewer, Labels, predicate=not_overlay)
        self.labels_combo.setToolTip("the nuclei layer to measure (a segmentation result, corrected or not)")
        self.shapes_combo = layer_picker(napari_viewer, Shapes, optional=True, predicate=not_overlay)
        self.shapes_combo.setToolTip("draw rectangles or polygons in a Shapes layer: their nuclei and tissue are "
                                     "summed here (all shapes together)")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.whole_label, self.view_label, self.drawn_label = QLabel("–"), QLabel("–"), QLabel("–")
        for label in (self.whole_label, self.view_label, self.drawn_label):
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.heatmap_button = QPushButton("Density heatmap")
        self.heatmap_button.setToolTip("add an image layer of nuclei per mm² of tissue in 100 µm squares (per 10⁶ "
                                       "px² in 256 px squares when the pixel size is unknown); squares with under a "
                                       "quarter of tissue stay empty")
        self.heatmap_button.setEnabled(False)
        self.model = NucleiModel()
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setToolTip("click a nucleus to go to it; click a header to sort")
        self._build_layout()

        self._view_timer = QTimer(self)
        self._view_timer.setSingleShot(True)
        self._view_timer.setInterval(VIEW_DELAY_MS)
        self._view_timer.timeout.connect(self.update_view)
        self.viewer.scene.camera.events.center.connect(self._camera_moved)
        self.viewer.scene.camera.events.zoom.connect(self._camera_moved)
        self.labels_combo.changed.connect(self._labels_chosen)
        self.shapes_combo.changed.connect(self._shapes_chosen)
        self.heatmap_button.clicked.connect(self.add_heatmap)
        self.table.clicked.connect(lambda index: self.go_to(index.row()))
        napari_viewer.layers.events.inserted.connect(self._layer_added)
        measurements.on_measured(self._measured)
        self.destroyed.connect(lambda *_: measurements.forget(self._measured))
        self._watched_shapes: Shapes | None = None
        if shortcuts.bind(napari_viewer, "heatmap", self, self.add_heatmap):
            self.heatmap_button.setToolTip(shortcuts.with_shortcut(self.heatmap_button.toolTip(), "heatmap"))
        self._prefer_newest_result()
        self._labels_chosen()

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("nuclei layer", self.labels_combo.native)
        form.addRow("whole layer", self.whole_label)
        form.addRow("field of view", self.view_label)
        form.addRow("drawn region", self.shapes_combo.native)
        form.addRow("", self.drawn_label)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.heatmap_button)
        layout.addWidget(self.status)
        layout.addWidget(self.table, 1)

    def _camera_moved(self, *_: Any) -> None:
        self._view_timer.start()

    # -- choosing and measuring --------------------------------------------------------------------------
    def _prefer_newest_result(self) -> None:
        results = [layer for layer in self.labels_combo.layers() if "nucseg_result" in layer.metadata]
        if results:
            self.labels_combo.set_layer(results[-1])

    def _layer_added(self, event: Any) -> None:
        if "nucseg_result" in event.value.metadata:  # a new segmentation: measure it
            QTimer.singleShot(0, self._prefer_newest_result)

    def _labels_chosen(self, *_: Any) -> None:
        layer = self.labels_combo.current_layer()
        self._layer, self.measured = layer, None
        self.model.set_measured(None)
        self.heatmap_button.setEnabled(False)
        for label in (self.whole_label, self.view_label, self.drawn_label):
            label.setText("–")
        if layer is None:
            self.status.setText("open or segment an image: its nuclei layer is measured here")
            return
        self.status.setText(f"measuring {layer.name}…")
        measurements.measure_layer(self.viewer, layer)

    def _measured(self, layer: Any, measured: measurements.Measured) -> None:
        if self._layer is None or layer is not measurements._unwrapped(self._layer):
            return
        self.measured = measured
        self.model.set_measured(measured)
        n = len(measured.columns["id"])
        size = f"{measured.mpp:g} µm/px" if measured.mpp else "pixel size unknown: px only"
        image = "" if measured.tissue is not None else f"; no tissue area ({measured.image})"
        self.status.setText(f"{n} nuclei measured ({size}){image}")
        self.heatmap_button.setEnabled(measured.tissue is not None)
        self.whole_label.setText(self._summary_text())
        self.update_view()
        self.update_drawn()

    def _summary_text(self, **where: Any) -> str:
        measured = self.measured
        if measured is None:
            return "–"
        if measured.tissue is None:
            inside = np.ones(len(measured.columns["id"]), bool)
            if where:
                from nucseg.metrics.density import _inside

                inside = _inside(measured.centroids, where.get("window"), where.get("polygon"))
            return f"{int(inside.sum())} nuclei (no image under the labels: no tissue area)"
        return summarize(measured.centroids, measured.tissue, measured.mpp, **where).text()

    # -- view and drawn region ---------------------------------------------------------------------------
    def update_view(self) -> None:
        """Recount the nuclei and tissue in the field of view."""
        if self.measured is None or self._layer is None or self._layer not in self.viewer.layers:
            return
        try:
            y, x, h, w = field_of_view_region(self.viewer, self._layer)
        except InvalidInputError:
            self.view_label.setText("the layer is not in view")
            return
        oy, ox = self.measured.offset
        self.view_label.setText(self._summary_text(window=(y + oy, x + ox, h, w)))

    def _shapes_chosen(self, *_: Any) -> None:
        if self._watched_shapes is not None:
            self._watched_shapes.events.data.disconnect(self.update_drawn)
        self._watched_shapes = self.shapes_combo.current_layer()
        if self._watched_shapes is not None:
            self._watched_shapes.events.data.connect(self.update_drawn)
        self.update_drawn()

    def drawn_polygons(self) -> list[np.ndarray]:
        """The chosen Shapes layer's shapes as polygons in full-resolution pixels of the source image."""
        shapes, layer, measured = self.shapes_combo.current_layer(), self._layer, self.measured
        if shapes is None or layer is None or measured is None:
            return []
        polygons = []
        for vertices in shapes.data:
            world = [shapes.data_to_world(v) for v in np.asarray(vertices)]
            # labels pixel i spans [i - 0.5, i + 0.5) in data coordinates: + 0.5 gives the corner convention
            data = np.array([np.asarray(layer.world_to_data(p))[-2:] for p in world]) + 0.5
            polygons.append(data + np.asarray(measured.offset))
        return polygons

    def update_drawn(self, *_: Any) -> None:
        polygons = self.drawn_polygons()
        if self.measured is None or self.shapes_combo.current_layer() is None:
            self.drawn_label.setText("choose a Shapes layer and draw rectangles or polygons")
        elif not polygons:
            self.drawn_label.setText("the Shapes layer is empty: draw a rectangle or polygon")
        else:
            self.drawn_label.setText(self._summary_text(polygon=polygons))

    # -- heatmap and going to a nucleus ------------------------------------------------------------------
    def add_heatmap(self) -> Any:
        """Add (or replace) the density heatmap of the measured layer as an image layer over it."""
        measured, layer = self.measured, self._layer
        if measured is None or measured.tissue is None or layer is None:
            return None
        grid = density_grid(measured.centroids, measured.tissue, measured.mpp)
        scale = np.asarray(layer.scale[-2:], float)
        # level-0 coordinate Y (pixel corners) sits at world translate + (Y - offset - 0.5) * scale
        first_centre = np.asarray(grid.origin) + grid.cell / 2 - np.asarray(measured.offset) - 0.5
        translate = np.asarray(layer.translate[-2:], float) + first_centre * scale
        name = f"{layer.name} density ({grid.unit})"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        finite = grid.density[np.isfinite(grid.density)]
        top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        heat = self.viewer.add_image(grid.density, name=name, colormap="inferno", opacity=0.55,
                                     contrast_limits=(0.0, top), scale=scale * grid.cell, translate=translate,
                                     units=tuple(layer.units)[-2:],
                                     metadata={"nucseg_overlay": True, "nucseg_region": measured.region,
                                               "nucseg_density": grid.unit})
        self.viewer.layers.selection.active = layer
        return heat

    def go_to(self, row: int) -> None:
        """Centre the view on the nucleus in table row `row` (as sorted) and show it in its layer."""
        layer = self._layer
        if layer is None or self.measured is None or layer not in self.viewer.layers:
            return
        nucleus = self.model.row_of(row)
        oy, ox = self.measured.offset
        centre = (nucleus["centroid_y"] - oy - 0.5, nucleus["centroid_x"] - ox - 0.5)  # data coordinates
        area = nucleus.get("area_px", nucleus.get("area_um2", 100.0) / (self.measured.mpp or 1.0) ** 2)
        centre_on(self.viewer, layer, (), centre, max(2.0 * np.sqrt(area), 8.0))
        layer.selected_label = int(nucleus["id"])
