"""Nothing uncorrected trains the model: running again on edited labels asks first, the Corrections widget never
chooses a layer nobody edited, and only reviewed regions or the neighbourhood of edits become training pairs."""

from __future__ import annotations

import numpy as np
import pytest
from test_correction_tools import FAINT, centre_of, nuclei_by_area, tools_image
from test_widget_segment import make_widget, net, nuclei_layer, nucseg_home, run_and_wait  # noqa: F401 - fixtures

from nucseg.training.corrections.reviewed_regions import edit_neighbourhood, region_boxes


def test_edit_neighbourhood_is_the_edits_and_background_near_them_never_an_untouched_nucleus():
    labels = np.zeros((80, 80), np.uint32)
    labels[10:20, 10:20] = 1  # edited
    labels[10:20, 24:34] = 2  # untouched, close by
    labels[60:70, 60:70] = 3  # untouched, far away
    edited = labels == 1
    near = edit_neighbourhood(edited, labels, margin=8)
    assert near[10:20, 10:20].all() and near[21, 15] and near[15, 22]  # the nucleus and background around it
    assert not near[labels == 2].any() and not near[labels == 3].any()
    assert not near[40, 40] and not edit_neighbourhood(np.zeros_like(edited), labels).any()
    boxes = region_boxes(near, min_side=32)
    assert len(boxes) == 1 and boxes[0][2] >= 32 and boxes[0][3] >= 32
    two = region_boxes((labels == 1) | (labels == 3), min_side=16)
    assert len(two) == 2
    assert len(region_boxes((labels == 1) | (labels == 3), min_side=64)) == 1  # grown boxes that overlap: merged


@pytest.fixture
def asked(monkeypatch):
    """Replace the dialog: answers are taken from the list; what it was asked is recorded."""
    from nucseg._napari import rerun_choice

    record = {"answers": [], "calls": []}

    def ask(parent, corrected, new_name, can_replace):
        record["calls"].append((corrected.name, new_name, can_replace))
        return record["answers"].pop(0)

    monkeypatch.setattr(rerun_choice, "ask", ask)
    return record


def segment_and_edit(make_napari_viewer, qtbot):
    from nucseg._napari.corrections_widget import CorrectionsWidget

    viewer = make_napari_viewer()
    viewer.add_image(tools_image(), name="blobs", rgb=True)
    segment = make_widget(viewer)
    run_and_wait(qtbot, segment)
    labels = nuclei_layer(viewer, "blobs")
    corrections = CorrectionsWidget(viewer)
    assert corrections.labels_combo.currentText() == "(none)"  # a fresh prediction: nobody checked it
    viewer.layers.selection.active = labels
    tools = corrections.tools_box.tools
    tools.activate("delete")
    gone = nuclei_by_area(labels.data)[0]
    tools.click(centre_of(labels.data, gone))
    tools.activate("add")
    tools.click(FAINT)
    assert labels.data[FAINT] and not (labels.data == gone).any()
    assert corrections.labels_combo.current_layer() is labels  # edited: now it is chosen
    return viewer, segment, corrections, labels, gone


@pytest.mark.gui
def test_running_again_on_an_edited_layer_asks_and_says_which_layer_is_which(make_napari_viewer, qtbot, net, asked):  # noqa: F811
    """Before: Run stacked an unedited "... [1]" over the corrected layer without a word, and the Corrections
    widget then chose that new layer."""
    viewer, segment, corrections, labels, gone = segment_and_edit(make_napari_viewer, qtbot)
    corrected = np.array(labels.data, copy=True)
    n_layers = len(viewer.layers)

    asked["answers"] = [None]  # cancel: nothing runs
    segment.run_button.click()
    assert not segment.running and len(viewer.layers) == n_layers

    asked["answers"] = ["keep"]
    run_and_wait(qtbot, segment)
    name, new_name, can_replace = asked["calls"][-1]
    assert name == labels.name and new_name == f"{labels.name} (new run)" and can_replace
    new = viewer.layers[new_name]
    assert np.array_equal(labels.data, corrected) and (new.data == gone).any()  # the new run has it again
    status = segment.controls.status.text()
    assert repr(labels.name) in status and repr(new_name) in status
    assert corrections.labels_combo.current_layer() is labels  # never the new, unedited run

    asked["answers"] = ["replace"]
    run_and_wait(qtbot, segment)
    assert len(viewer.layers) == n_layers + 2  # no third labels layer (the second brought its probability)
    assert not np.array_equal(labels.data, corrected) and labels.data[FAINT] == 0
    assert "Ctrl+Z" in segment.controls.status.text()
    labels.undo()  # the corrections come back
    assert np.array_equal(labels.data, corrected) and labels.metadata["nucseg_edited"].any()


@pytest.mark.gui
def test_only_reviewed_regions_and_the_neighbourhood_of_edits_become_training_pairs(make_napari_viewer, qtbot, net):  # noqa: F811
    """Before: with nothing marked as reviewed, the edits could not be saved at all, and a marked view or the
    'whole region' box took every nucleus in it, checked or not. Now the edits vouch for their neighbourhood only."""
    from nucseg._napari.corrections_widget import REVIEWED_AREAS
    from nucseg._napari.reviewed_regions import reviewed_layer

    viewer, _, corrections, labels, gone = segment_and_edit(make_napari_viewer, qtbot)
    assert corrections.region_combo.currentText() == REVIEWED_AREAS
    corrections.add_correction()
    qtbot.waitUntil(lambda: corrections._worker is None and len(corrections.store) > 0, timeout=20000)
    entries = corrections.store.entries()
    near = edit_neighbourhood(labels.metadata["nucseg_edited"], labels.data)
    stored = np.zeros(labels.data.shape, bool)
    for entry in entries:
        y, x, h, w = entry.provenance["region"]
        assert entry.reviewed == "mask"
        mask = entry.load_reviewed()
        assert np.array_equal(mask, near[y : y + h, x : x + w])
        stored[y : y + h, x : x + w] |= mask
    assert stored[FAINT] and stored.sum() == near.sum()
    untouched = (labels.data > 0) & ~labels.metadata["nucseg_edited"]
    assert not (stored & untouched).any()  # no nucleus nobody touched is taught as checked
    assert stored.mean() < 0.5

    image = viewer.layers["blobs"]
    reviewed = reviewed_layer(viewer, image)
    reviewed.add_rectangles([np.array([[150, 200], [150, 250], [190, 250], [190, 200]])])
    corrections.add_correction()
    qtbot.waitUntil(lambda: corrections._worker is None and len(corrections.store) > len(entries), timeout=20000)
    newest = [e for e in corrections.store.entries() if e.id not in {e.id for e in entries}]
    assert any(y <= 150 and x <= 200 and y + h >= 191 and x + w >= 251
               for y, x, h, w in (e.provenance["region"] for e in newest))
