"""Correction tools: the core functions on label arrays (nucseg.editing), their one undo history, and the tools on
a labels layer in a real viewer (clicks, keys, undo / redo across threshold changes)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_widget_segment import (  # noqa: F401 - fixtures
    MODEL_NAME,
    make_widget,
    net,
    nuclei_layer,
    nucseg_home,
    run_and_wait,
)

from fake_models import blob_image
from nucseg.config import PostprocessConfig
from nucseg.editing import tools
from nucseg.editing.grow import MapWindow, grow_nucleus
from nucseg.editing.history import LabelEditor


def discs(shape=(60, 90), centres=((20, 15, 8), (20, 27, 8), (20, 60, 6), (45, 60, 6))) -> np.ndarray:
    """Labels: a dumbbell (two overlapping discs, one id) and two separate discs."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint32)
    ids = [1, 1, 2, 3]
    for (cy, cx, r), i in zip(centres, ids):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i
    return labels


def one_piece_each(labels: np.ndarray) -> bool:
    return all(n == 1 for n in tools.pieces_per_id(labels).values())


# -- the tools as pure functions ------------------------------------------------------------------------------
def test_delete_merge_split_and_cut_edit_only_what_they_say():
    labels = discs()
    edit = tools.delete_nucleus(labels, (20, 60))
    assert edit.action == "delete" and np.all(edit.values == 0) and len(edit) == (labels == 2).sum()
    with pytest.raises(tools.EditRefused, match="no nucleus"):
        tools.delete_nucleus(labels, (2, 2))

    split = tools.split_by_seeds(labels, [(20, 12), (20, 30)], 4)
    after = labels.copy()
    after.reshape(-1)[split.indices] = split.values
    assert split.ids == (1, 4) and one_piece_each(after)
    assert after[20, 12] == 1 and after[20, 30] == 4 and ((after == 1) | (after == 4)).sum() == (labels == 1).sum()
    with pytest.raises(tools.EditRefused, match="same nucleus"):
        tools.split_by_seeds(labels, [(20, 12), (20, 60)], 4)
    with pytest.raises(Exception, match="already names"):
        tools.split_by_seeds(labels, [(20, 12), (20, 30)], 2)

    cut = tools.split_by_line(labels, [(5, 21), (35, 21)], 4)
    after = labels.copy()
    after.reshape(-1)[cut.indices] = cut.values
    assert cut.ids == (1, 4) and one_piece_each(after)
    with pytest.raises(tools.EditRefused, match="crosses no nucleus"):
        tools.split_by_line(labels, [(55, 2), (55, 10)], 4)
    with pytest.raises(tools.EditRefused, match="does not cut"):
        tools.split_by_line(labels, [(5, 60), (19, 60)], 4)  # into the disc, not across it

    merged = after.copy()
    merge = tools.merge_nuclei(merged, (20, 12), (20, 30))
    merged.reshape(-1)[merge.indices] = merge.values
    assert np.array_equal(merged > 0, labels > 0) and np.array_equal(merged == 1, labels == 1)
    with pytest.raises(tools.EditRefused, match="do not touch"):
        tools.merge_nuclei(labels, (20, 60), (45, 60))


def test_merge_fills_a_thin_gap_and_the_result_is_one_piece():
    labels = np.zeros((20, 30), np.uint32)
    labels[5:15, 3:12] = 1
    labels[5:15, 14:25] = 2  # two columns of background between them
    edit = tools.merge_nuclei(labels, (10, 5), (10, 20))
    labels.reshape(-1)[edit.indices] = edit.values
    assert set(np.unique(labels)) == {0, 1} and np.all(labels[6:14, 12:14] == 1) and one_piece_each(labels)


def test_add_takes_free_pixels_and_fragments_never_a_neighbour():
    labels = discs()
    mask = np.zeros(labels.shape, bool)
    mask[35:56, 50:58] = True  # covers a third of nucleus 3 (a neighbour: kept)
    edit = tools.add_nucleus(labels, mask, (36, 51), 9)
    assert np.all(labels.reshape(-1)[edit.indices] == 0) and set(edit.values) == {9}
    with pytest.raises(tools.EditRefused, match="inside nucleus"):
        tools.add_nucleus(labels, mask, (45, 60), 9)
    mask[35:56, 50:71] = True  # nucleus 3 lies wholly inside: a fragment of the missed one, taken in whole
    edit = tools.add_nucleus(labels, mask, (36, 51), 9)
    after = labels.copy()
    after.reshape(-1)[edit.indices] = edit.values
    assert not (after == 3).any() and np.all(after[labels == 3] == 9) and edit.ids == (9, 3)
    assert one_piece_each(after)


def maps_with(shape, centre, radius, peak):
    """Synthetic model maps: a disc of foreground probability `peak`, distance highest in its middle."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.sqrt((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2)
    fg = np.where(d < radius, peak, 0.01).astype(np.float32)
    dist = np.clip(1 - d / radius, 0, 1).astype(np.float32) * fg
    return np.stack([fg, np.zeros_like(fg), dist])


def test_grow_takes_the_nucleus_the_model_half_saw_and_nothing_where_it_saw_none():
    shape = (64, 64)
    config = PostprocessConfig().resolved()  # the fallback thresholds, every setting given
    seen = MapWindow(maps_with(shape, (30, 30), 8, 0.9), (0, 0, 64, 64), config)
    grown = grow_nucleus(seen, (30, 30), shape)
    assert grown is not None and abs(int(grown.sum()) - int(np.pi * 64)) < 30
    faint = MapWindow(maps_with(shape, (30, 30), 8, 0.3), (0, 0, 64, 64), config)  # under the 0.5 threshold
    grown = grow_nucleus(faint, (30, 30), shape)
    assert grown is not None and abs(int(grown.sum()) - int(np.pi * 64)) < 30
    none = MapWindow(maps_with(shape, (30, 30), 8, 0.02), (0, 0, 64, 64), config)
    assert grow_nucleus(none, (30, 30), shape) is None
    # a map at half the labels' resolution, covering labels pixels (100, 200) onwards
    half = MapWindow(maps_with((32, 32), (15, 15), 4, 0.9), (100, 200, 64, 64), config)
    grown = grow_nucleus(half, (130, 230), (300, 400))
    ys, xs = np.nonzero(grown)
    assert 120 < ys.mean() < 140 and 220 < xs.mean() < 240 and abs(int(grown.sum()) - int(np.pi * 64)) < 40


def test_the_history_returns_exactly_to_every_earlier_state():
    labels = discs()
    editor = LabelEditor(labels)
    states = [labels.copy()]
    editor.apply(tools.split_by_seeds(labels, [(20, 12), (20, 30)], editor.next_id()))
    states.append(labels.copy())
    painted = np.ravel_multi_index(np.nonzero(np.zeros((5, 5)) == 0), labels.shape) + 50 * 90 + 5
    before = labels.reshape(-1)[painted].copy()
    labels.reshape(-1)[painted] = editor.next_id()  # a brush stroke the viewer wrote...
    editor.record(np.concatenate([painted, painted[:3]]), np.concatenate([before, [7, 7, 7]]))  # ...repeats too
    states.append(labels.copy())
    fresh = labels.copy()
    fresh[fresh == 3] = 0  # the program's re-application drops a nucleus
    editor.replace(fresh, editor.edited, action="thresholds")
    states.append(labels.copy())
    assert editor.edited[20, 12] and editor.edited[52, 7] and not editor.edited[45, 60]
    assert editor.next_id() == 6  # 4 (split) and 5 (painted) were used: never handed out again
    for expected in reversed(states[:-1]):
        assert editor.undo() is not None and np.array_equal(labels, expected)
    assert editor.undo() is None and not editor.edited.any()
    for expected in states[1:]:
        assert editor.redo() is not None and np.array_equal(labels, expected)
    assert editor.next_id() == 6


# -- in a real viewer ---------------------------------------------------------------------------------------
FAINT = (100, 130)  # a nucleus the fake model half sees (foreground ~0.18 at its centre)


def tools_image():
    image, truth = blob_image((200, 260), n=15, seed=2)
    yy, xx = np.mgrid[:200, :260]
    faint = (yy - FAINT[0]) ** 2 + (xx - FAINT[1]) ** 2 <= 49
    assert not truth[(yy - FAINT[0]) ** 2 + (xx - FAINT[1]) ** 2 <= 200].any()
    image[faint] = 150
    return image


def segmented(make_napari_viewer, qtbot, show=False):
    from nucseg._napari.corrections_widget import CorrectionsWidget

    viewer = make_napari_viewer(show=show)
    viewer.add_image(tools_image(), name="blobs", rgb=True)
    segment = make_widget(viewer)
    run_and_wait(qtbot, segment)
    labels = nuclei_layer(viewer, "blobs")
    corrections = CorrectionsWidget(viewer)
    viewer.layers.selection.active = labels
    return viewer, segment, corrections, labels


def centre_of(labels: np.ndarray, label: int) -> tuple[float, float]:
    ys, xs = np.nonzero(labels == label)
    return float(ys.mean()), float(xs.mean())


def nuclei_by_area(labels: np.ndarray) -> list[int]:
    areas = np.bincount(labels.ravel())
    return [int(i) for i in np.argsort(-areas) if i and areas[i]]


@pytest.mark.gui
def test_brush_strokes_then_thresholds_then_undo_keep_ids_whole(make_napari_viewer, qtbot, net):  # noqa: F811
    """The bug: Ctrl+Z after a threshold change put erased pixels back under their old id, which by then belonged
    to another nucleus (one label in two pieces). napari's own editing path only: it failed before the fix."""
    viewer, segment, _, labels = segmented(make_napari_viewer, qtbot)
    first = np.asarray(labels.data).copy()
    small = [i for i in nuclei_by_area(first)[::-1]][:4]
    victim = min(i for i in nuclei_by_area(first) if i > max(small[:2]))  # an id renumbering will hand out again
    labels.data_setitem(np.nonzero(first == victim), 0)  # the eraser takes a whole nucleus
    labels.data_setitem(tuple(np.mgrid[2:12, 2:12].reshape(2, -1)), int(first.max()) + 1)  # a painted one
    result = labels.metadata["nucseg_result"]
    areas = np.bincount(first.ravel())
    segment.min_area_spin.setValue(int(sorted(areas[small[:2]])[-1]) + 1)  # drops the two smallest: renumbering
    qtbot.waitUntil(lambda: labels.metadata["nucseg_result"] is not result and segment._reapply_worker is None,
                    timeout=30000)
    assert not np.asarray(labels.data)[first == victim].any()
    for _ in range(4):
        labels.undo()  # what Ctrl+Z calls
        assert one_piece_each(np.asarray(labels.data)), tools.pieces_per_id(np.asarray(labels.data))
    assert np.array_equal(np.asarray(labels.data), first)


@pytest.mark.gui
def test_every_tool_then_thresholds_then_undo_and_redo(make_napari_viewer, qtbot, net):  # noqa: F811
    """Each tool is one step; a threshold change is one step; undo walks back through exactly the states the
    person saw (so no id is ever in two pieces or names another nucleus), and redo forward again."""
    viewer, segment, corrections, labels = segmented(make_napari_viewer, qtbot)
    box = corrections.tools_box
    assert box.tools.layer is labels and all(b.isEnabled() for b in box.buttons.values())
    data = labels.data
    states = [np.array(data, copy=True)]
    by_area = nuclei_by_area(data)

    def did(expect_change=True):
        assert not np.array_equal(data, states[-1]) or not expect_change, box.status.text()
        assert one_piece_each(data), tools.pieces_per_id(data)
        states.append(np.array(data, copy=True))

    # brush: napari's own stroke (one history item of several dabs), then the eraser trims a nucleus
    box.buttons["brush"].click()
    assert labels.mode == "paint"
    labels.selected_label = int(data.max()) + 1
    with labels.block_history():
        for x in (6, 9, 12):
            labels.paint((190, x), labels.selected_label)
    did()
    labels.mode = "erase"
    assert box.tools.tool == "eraser" and box.buttons["eraser"].isChecked()
    y, x = centre_of(data, by_area[-1])
    labels.paint((y, x + 3), 0)
    did()
    # add: the faint nucleus the model half saw, grown from the cached maps
    box.buttons["add"].click()
    assert labels.mode == "pan_zoom" and not labels.mouse_pan
    assert data[FAINT] == 0
    box.tools.click(FAINT)
    did()
    added = int(data[FAINT])
    assert 100 < (data == added).sum() < 250, box.status.text()  # about the disc of radius 7 (154 px)
    # delete, split (two seeds), cut (a line), merge (the two halves back)
    box.tools.activate("delete")
    box.tools.click(centre_of(data, by_area[1]))
    did()
    big = by_area[0]
    cy, cx = centre_of(data, big)
    box.tools.activate("split")
    box.tools.click((cy, cx - 4))
    assert "now click" in box.status.text()
    box.tools.click((cy, cx + 4))
    did()
    third = by_area[2]
    cy, cx = centre_of(data, third)
    box.tools.activate("cut")
    box.tools.cut([(cy - 15, cx), (cy + 15, cx)])
    did()
    halves = (int(data[int(cy), int(cx) - 3]), int(data[int(cy), int(cx) + 3]))
    assert halves[0] != halves[1] and all(halves)
    box.tools.activate("merge")
    box.tools.click((cy, cx - 3))
    box.tools.click((cy, cx + 3))
    did()
    assert data[int(cy), int(cx) - 3] == data[int(cy), int(cx) + 3]
    # a refusal changes nothing and says why
    box.tools.activate("delete")
    box.tools.click((1, 250))
    assert "no nucleus" in box.status.text() and np.array_equal(data, states[-1])
    # thresholds: re-applied live, the edits kept, one step
    result = labels.metadata["nucseg_result"]
    old_min_area = segment.min_area_spin.value()
    segment.min_area_spin.setValue(200)
    qtbot.waitUntil(lambda: labels.metadata["nucseg_result"] is not result and segment._reapply_worker is None,
                    timeout=30000)
    assert (data == added).sum() > 100  # the added nucleus (under 200 px) is the user's: kept
    did()
    steps = len(states) - 1
    assert len(labels.metadata.get("nucseg_edited").shape) == 2

    for expected in reversed(states[:-1]):  # Ctrl+Z all the way back
        labels.undo()
        assert np.array_equal(data, expected) and one_piece_each(data)
        if len(states) - 1 == steps:
            assert segment.min_area_spin.value() == old_min_area  # the threshold change undone: its boxes too
            steps = -1
    assert labels.metadata["nucseg_result"] is result and not labels.metadata["nucseg_edited"].any()
    for expected in states[1:]:  # and Ctrl+Shift+Z forward again
        labels.redo()
        assert np.array_equal(data, expected)
    assert segment.min_area_spin.value() == 200
    assert not labels._undo_history  # napari's own history stays empty: one history only


def world_to_canvas(viewer, layer, point):
    """Screen position (logical pixels of the canvas widget) of a data point of `layer`."""
    canvas = viewer.window._qt_viewer.canvas
    world = np.asarray(layer.data_to_world(point))[-2:]
    mapped = canvas.view.scene.transform.map([world[1], world[0], 0, 1])
    return canvas, mapped[:2] / mapped[3]


@pytest.mark.gui
def test_keys_and_real_clicks_on_the_canvas(make_napari_viewer, qtbot, net):  # noqa: F811
    """Under Xvfb, in a shown viewer: D then a mouse click deletes the nucleus under the cursor; A then a click on
    the faint nucleus adds it; Ctrl+Z (napari's key binding) undoes the last."""
    from qtpy.QtCore import QPoint, Qt

    viewer, _, corrections, labels = segmented(make_napari_viewer, qtbot, show=True)
    viewer.window._qt_window.resize(1200, 900)
    viewer.reset_view()
    qtbot.wait(300)
    data = labels.data
    before = np.array(data, copy=True)
    target = nuclei_by_area(data)[0]
    canvas, pos = world_to_canvas(viewer, labels, centre_of(data, target))
    native = canvas._scene_canvas.native
    native.setFocus()
    qtbot.keyClick(native, Qt.Key.Key_D)
    assert corrections.tools_box.tools.tool == "delete" and corrections.tools_box.buttons["delete"].isChecked()
    qtbot.mouseClick(native, Qt.MouseButton.LeftButton, pos=QPoint(int(pos[0]), int(pos[1])))
    qtbot.waitUntil(lambda: not (data == target).any(), timeout=5000)
    qtbot.keyClick(native, Qt.Key.Key_A)
    _, pos = world_to_canvas(viewer, labels, FAINT)
    qtbot.mouseClick(native, Qt.MouseButton.LeftButton, pos=QPoint(int(pos[0]), int(pos[1])))
    qtbot.waitUntil(lambda: data[FAINT] != 0, timeout=5000)
    qtbot.keyClick(native, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert data[FAINT] == 0 and not (data == target).any()
    qtbot.keyClick(native, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert np.array_equal(data, before)


@pytest.mark.gui
def test_add_on_labels_without_a_prediction_runs_the_engine_on_a_window(make_napari_viewer, qtbot, net):  # noqa: F811
    """Labels the plugin did not predict (opened from a file): the model runs on a small window around the click
    in a worker, once; the next click nearby reuses it. Without an image, a disc of the typical size is added."""
    from nucseg._napari.corrections_widget import CorrectionsWidget

    viewer = make_napari_viewer()
    image = tools_image()
    _, truth = blob_image((200, 260), n=15, seed=2)
    viewer.add_image(image, name="blobs", rgb=True)
    labels = viewer.add_labels(truth.copy(), name="blobs nuclei (opened)",
                               metadata={"nucseg_config": {"model": f"{nucseg_home_path()}/models/{MODEL_NAME}"}})
    corrections = CorrectionsWidget(viewer)
    viewer.layers.selection.active = labels
    tools_ = corrections.tools_box.tools
    tools_.activate("add")
    calls = net.calls
    tools_.click(FAINT)
    qtbot.waitUntil(lambda: labels.data[FAINT] != 0, timeout=60000)
    assert net.calls > calls and 100 < (labels.data == labels.data[FAINT]).sum() < 250
    calls = net.calls
    labels.undo()
    tools_.click((FAINT[0] + 1, FAINT[1]))
    assert labels.data[FAINT] != 0 and net.calls == calls  # the cached window: no network, no worker

    bare = viewer.add_labels(truth.copy(), name="hand-drawn")
    corrections.image_combo.native.clear()  # no image to run the model on
    corrections.image_of = lambda layer: None
    corrections.tools_box.tools.image_for = lambda layer: None
    viewer.layers.selection.active = bare
    tools_.activate("add")
    tools_.click((5, 5))
    assert bare.data[5, 5] != 0 and "disc of the typical nucleus size" in corrections.tools_box.status.text()


def nucseg_home_path():
    import os

    return os.environ["NUCSEG_HOME"]


@pytest.mark.gui
def test_ground_truth_and_slides_are_never_edited_by_the_tools(make_napari_viewer):
    from nucseg._napari.corrections_widget import CorrectionsWidget

    viewer = make_napari_viewer()
    _, truth = blob_image((64, 64), n=4, seed=1)
    gt = viewer.add_labels(truth, name="ground truth")
    corrections = CorrectionsWidget(viewer)
    viewer.layers.selection.active = gt
    assert corrections.tools_box.tools.layer is None
    assert not corrections.tools_box.buttons["delete"].isEnabled()


@pytest.mark.gui
@pytest.mark.skipif(not os.environ.get("NUCSEG_SCREENSHOTS"), reason="set NUCSEG_SCREENSHOTS=1 to refresh docs/")
def test_screenshot_correction_tools(make_napari_viewer, qtbot):
    """docs/screenshots/correction_tools.png: the sample tile segmented by the default model, a missed nucleus added
    with one click (A), a false one deleted (D); correction_tools_split.png: a nucleus split by two clicks (S)."""
    from pathlib import Path

    from PIL import Image as PILImage

    from nucseg._napari.corrections_widget import CorrectionsWidget
    from nucseg._napari.segment_widget import SegmentWidget
    from nucseg.metrics.matching import match_instances
    from nucseg.models.registry import DEFAULT_MODEL, shipped_models

    if DEFAULT_MODEL not in shipped_models():
        pytest.skip("no default model shipped")
    root = Path(__file__).resolve().parents[1]
    image = np.asarray(PILImage.open(root / "sample_data" / "he_breast_monuseg.png").convert("RGB"))
    truth = np.asarray(PILImage.open(root / "sample_data" / "he_breast_monuseg_labels.png")).astype(np.int64)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    viewer.add_image(image, name="H&E breast (MoNuSeg)", rgb=True, metadata={"mpp": 0.25})
    segment = SegmentWidget(viewer)
    assert segment.model_combo.set_model(DEFAULT_MODEL)
    segment.run_button.click()
    qtbot.waitUntil(lambda: not segment.running, timeout=900000)
    labels = segment.result_layers[0]
    corrections = CorrectionsWidget(viewer)
    viewer.window.add_dock_widget(corrections, name="Corrections")
    viewer.layers.selection.active = labels
    tools_ = corrections.tools_box.tools
    data = labels.data
    match = match_instances(truth, data)
    from nucseg.editing.grow import grow_nucleus
    from nucseg.editing.maps import ResultMaps

    result = labels.metadata["nucseg_result"]
    maps = ResultMaps(result.probabilities, data.shape, result.config.postprocess)
    clicked = None
    for t in match.fn_ids:  # a missed nucleus whose one-click result fits it (for the picture)
        free = (truth == t) & (data == 0)
        if free.sum() < 0.6 * (truth == t).sum():
            continue
        ys, xs = np.nonzero(free)
        point = (int(np.median(ys)), int(np.median(xs)))
        if min(point) < 50 or max(point) > min(data.shape) - 50:
            continue  # away from the edges, so the zoomed view is all tissue
        grown = grow_nucleus(maps.window(point), point, data.shape)
        if free[point] and grown is not None and ((grown & (truth == t)).sum() / (grown | (truth == t)).sum()) > 0.5:
            clicked = point
            break
    assert clicked is not None
    near = [p for p in match.fp_ids if np.hypot(*(np.argwhere(data == p).mean(0) - clicked)) < 60]
    if near:
        tools_.activate("delete")
        tools_.click(tuple(np.argwhere(data == near[0])[0]))
    tools_.activate("add")
    tools_.click(clicked)  # the status line says what was added
    assert data[clicked]
    viewer.camera.center = tuple(np.clip(clicked, 90, min(data.shape) - 90))
    viewer.camera.zoom = 5
    qtbot.wait(500)
    out = root / "docs" / "screenshots"
    viewer.screenshot(str(out / "correction_tools.png"), canvas_only=False)
    # split: a nucleus the model drew over two truth nuclei
    for p in np.unique(data[data > 0]):
        inside = np.unique(truth[data == p])
        big = [t for t in inside if t and ((truth == t) & (data == p)).sum() > 0.6 * (truth == t).sum()]
        if len(big) == 2:
            seeds = [tuple(int(v) for v in np.argwhere((truth == t) & (data == p)).mean(0)) for t in big]
            centre = np.mean(seeds, axis=0)
            if all(data[s] == p for s in seeds) and 100 < centre.min() and centre.max() < min(data.shape) - 100:
                break
    else:
        pytest.skip("no under-segmented nucleus in the sample")
    viewer.camera.center = tuple(np.mean(seeds, axis=0))
    viewer.camera.zoom = 8
    labels.contour = 0  # filled: the two parts in two colours
    qtbot.wait(300)
    viewer.screenshot(str(out / "correction_tools_before_split.png"), canvas_only=True)
    tools_.activate("split")
    tools_.click(seeds[0])
    tools_.click(seeds[1])
    assert data[seeds[0]] != data[seeds[1]]
    qtbot.wait(300)
    viewer.screenshot(str(out / "correction_tools_split.png"), canvas_only=True)
