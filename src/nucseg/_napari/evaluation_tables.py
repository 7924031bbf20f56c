"""The Evaluate widget's two tables: the metrics (one column per image) and the FP / FN list (sortable by any
column, exported as CSV in the order shown)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from nucseg.jobs.evaluate import ErrorObject, Evaluation, errors_to_csv

#: (row label, metric key) of the metrics table, in order
TABLE_ROWS = (("pixel IoU", "iou"), ("pixel Dice", "dice"), ("pixel precision", "precision"),
              ("pixel recall", "recall"), ("pixel accuracy", "accuracy"), ("pixel AUC", "auc"),
              ("object precision", "object_precision"), ("object recall", "object_recall"), ("object F1", "f1"),
              ("AJI", "aji"), ("PQ", "pq"), ("SQ", "sq"), ("DQ", "dq"), ("TP", "tp"), ("FP", "fp"), ("FN", "fn"),
              ("nuclei in truth", "n_truth"), ("nuclei predicted", "n_pred"))
#: (header, ErrorObject.row() key) of the error table
ERROR_HEADERS = (("kind", "kind"), ("image", "plane"), ("label", "label"), ("y", "centroid_y"), ("x", "centroid_x"),
                 ("area (px)", "area_px"))
#: FN yellow and FP magenta text, as the overlay colours them (darker yellow to stay readable on white)
KIND_COLOURS = {"FN": QColor(170, 140, 0), "FP": QColor(200, 0, 200)}


def _format(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


class _SortItem(QTableWidgetItem):
    """A cell that sorts by its value (numbers as numbers), not by its text."""

    def __lt__(self, other: QTableWidgetItem) -> bool:
        mine, theirs = self.data(Qt.ItemDataRole.UserRole + 1), other.data(Qt.ItemDataRole.UserRole + 1)
        try:
            return mine < theirs
        except TypeError:
            return str(mine) < str(theirs)


#: the count rows of the metrics table that list their nuclei when clicked
COUNT_KINDS = {"fp": "FP", "fn": "FN"}


class MetricsTable(QTableWidget):
    """Metric rows (`TABLE_ROWS`) by image columns (plus MEAN for stacks); compact rows so it fits a dock.

    Signals:
        count_clicked(str, int): the FP or FN count of a column was clicked: ("FP" | "FN", column).
    """

    count_clicked = Signal(str, int)

    def __init__(self):
        super().__init__(0, 1)
        self.cellClicked.connect(self._clicked)
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 4)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        # the whole table visible without scrolling: 18 rows and the header
        self.setMinimumHeight((len(TABLE_ROWS) + 1) * (self.fontMetrics().height() + 4) + 6)

    def fill(self, evaluation: Evaluation) -> None:
        columns = evaluation.rows + ([evaluation.summary] if evaluation.summary else [])
        self.clear()
        self.setRowCount(len(TABLE_ROWS))
        self.setColumnCount(len(columns))
        self.setVerticalHeaderLabels([label for label, _ in TABLE_ROWS])
        self.setHorizontalHeaderLabels([str(c["image"]) for c in columns])
        for j, column in enumerate(columns):
            for i, (_, key) in enumerate(TABLE_ROWS):
                value = column.get(key, float("nan"))
                item = QTableWidgetItem(_format(value))
                item.setData(Qt.ItemDataRole.UserRole, value)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if key in COUNT_KINDS:
                    item.setForeground(KIND_COLOURS[COUNT_KINDS[key]])
                    item.setToolTip(f"click: list these {COUNT_KINDS[key]} nuclei below (click again: all)")
                self.setItem(i, j, item)
        self.resizeColumnsToContents()

    def _clicked(self, row: int, column: int) -> None:
        key = TABLE_ROWS[row][1] if 0 <= row < len(TABLE_ROWS) else ""
        if key in COUNT_KINDS:
            self.count_clicked.emit(COUNT_KINDS[key], column)

    def values(self, column: int = 0) -> dict[str, Any]:
        """The metric values shown in one column, by metric key."""
        return {key: self.item(i, column).data(Qt.ItemDataRole.UserRole) for i, (_, key) in enumerate(TABLE_ROWS)}


class ErrorTable(QTableWidget):
    """The FP and FN nuclei, one row each; click a header to sort, click a row to go to the nucleus.

    Signals:
        chosen(int): the index (in the evaluation's error list) of the nucleus the user picked.
    """

    chosen = Signal(int)

    def __init__(self):
        super().__init__(0, len(ERROR_HEADERS))
        self.setHorizontalHeaderLabels([h for h, _ in ERROR_HEADERS])
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 4)
        self.horizontalHeader().setStretchLastSection(True)
        self.setToolTip("click a nucleus to centre the view on it; click a header to sort")
        self.errors: list[ErrorObject] = []
        self.currentCellChanged.connect(lambda row, *_: self._choose(row))
        self.cellClicked.connect(lambda row, _: self._choose(row))

    def set_errors(self, errors: list[ErrorObject]) -> None:
        self.errors = list(errors)
        self.blockSignals(True)
        self.setSortingEnabled(False)
        self.clearContents()
        self.setRowCount(len(self.errors))
        for r, error in enumerate(self.errors):
            row = error.row()
            for c, (_, key) in enumerate(ERROR_HEADERS):
                value = row[key]
                item = _SortItem(f"{value:.0f}" if isinstance(value, float) else str(value))
                item.setData(Qt.ItemDataRole.UserRole, r)
                item.setData(Qt.ItemDataRole.UserRole + 1, value)
                item.setForeground(KIND_COLOURS.get(error.kind, QColor("white")))
                self.setItem(r, c, item)
        self.setSortingEnabled(True)
        self.blockSignals(False)
        self.setColumnHidden(1, not any(e.plane for e in self.errors))  # "image": only for stacks
        self.resizeColumnsToContents()

    def show_only(self, kind: str | None, plane: tuple[int, ...] | None = None) -> int:
        """Show only the errors of `kind` ("FP" / "FN"; None: all), of `plane` when given; returns how many."""
        shown = 0
        for r in range(self.rowCount()):
            index = self.error_index(r)
            error = self.errors[index] if index is not None else None
            visible = error is not None and (kind is None or error.kind == kind) and (
                plane is None or tuple(error.plane) == tuple(plane))
            self.setRowHidden(r, not visible)
            shown += visible
        return shown

    def error_index(self, row: int) -> int | None:
        """The evaluation's error index shown in table row `row` (rows move when sorted)."""
        item = self.item(row, 0)
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    def row_of(self, index: int) -> int:
        """The table row that shows error `index`."""
        return next(r for r in range(self.rowCount()) if self.error_index(r) == index)

    def shown(self) -> list[ErrorObject]:
        """The errors in the order shown."""
        return [self.errors[self.error_index(r)] for r in range(self.rowCount())]

    def _choose(self, row: int) -> None:
        index = self.error_index(row) if row >= 0 else None
        if index is not None:
            self.chosen.emit(index)

    def export_csv(self, path: str | Path) -> Path:
        """The errors, in the order shown, as CSV (replacing `path`: the save dialog asked)."""
        return errors_to_csv(self.shown(), path, overwrite=True)
