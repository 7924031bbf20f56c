"""Evaluate: every FP, FN and TP counted in the table shows in its colour on the overlay, and the FP / FN counts
list their nuclei when clicked."""

from __future__ import annotations

import numpy as np
import pytest
from test_widget_evaluate import evaluated_widget, truth_and_prediction

from nucseg.metrics.overlays import FN, FP, TP

pytestmark = pytest.mark.gui


def test_every_counted_error_is_visible_on_the_overlay_and_listed_from_its_count(make_napari_viewer, qtbot):
    """Before, an FP lying on a missed nucleus was painted over by the FN's yellow: no magenta at all."""
    from nucseg._napari.evaluate_widget import OBJECTS_LAYER, TABLE_ROWS

    viewer = make_napari_viewer()
    _, truth, pred, _ = truth_and_prediction()
    missed = np.argwhere(truth == 1)  # the prediction misses truth nuclei 1 and 2...
    cy, cx = missed.mean(axis=0).astype(int)
    pred[cy - 1 : cy + 2, cx - 1 : cx + 2] = 900  # ...and puts a small FP inside nucleus 1
    widget = evaluated_widget(viewer, qtbot, truth, pred)
    overlay = np.asarray(viewer.layers[OBJECTS_LAYER].data)
    values = widget.table_values()
    errors = widget.evaluation.errors
    fps = [e for e in errors if e.kind == "FP"]
    fns = [e for e in errors if e.kind == "FN"]
    assert len(fps) == values["fp"] == 3 and len(fns) == values["fn"] == 2
    assert any(e.label == 900 for e in fps)
    for e in fps:
        assert (overlay[pred == e.label] == FP).any(), e
    for e in fns:
        assert (overlay[truth == e.label] == FN).any(), e
    assert all((overlay[pred == p] == TP).any() for p in np.unique(pred) if p and p not in {e.label for e in fps})

    rows = {key: i for i, (_, key) in enumerate(TABLE_ROWS)}
    table = widget.table
    table.cellClicked.emit(rows["fp"], 0)  # a click on the FP count
    listed = [r for r in range(widget.errors_table.rowCount()) if not widget.errors_table.isRowHidden(r)]
    assert len(listed) == 3 and {widget.errors_table.errors[widget.errors_table.error_index(r)].kind
                                 for r in listed} == {"FP"}
    for r in listed:  # each one is reached from the list and shows on the overlay
        widget.errors_table.cellClicked.emit(r, 0)
        error = widget.errors_table.errors[widget.errors_table.error_index(r)]
        assert viewer.layers["pred"].selected_label == error.label and (overlay[pred == error.label] == FP).any()
    table.cellClicked.emit(rows["fn"], 0)
    assert sum(not widget.errors_table.isRowHidden(r) for r in range(widget.errors_table.rowCount())) == 2
    table.cellClicked.emit(rows["fn"], 0)  # the same count again: all of them
    assert not any(widget.errors_table.isRowHidden(r) for r in range(widget.errors_table.rowCount()))
