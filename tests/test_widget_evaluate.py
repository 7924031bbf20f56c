"""The Evaluate widget: numbers equal the core and the CLI, overlays, error list navigation, stacks, side by side."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from fake_models import blob_image
from nucseg.metrics.report import evaluate_labels

pytestmark = pytest.mark.gui


def truth_and_prediction(seed: int = 0, shape=(200, 260)):
    """Truth discs, and a prediction that misses two (FN), adds two (FP) and has other ids."""
    image, truth = blob_image(shape, n=14, seed=seed)
    pred = np.where(truth > 0, truth + 100, 0).astype(np.uint32)
    pred[np.isin(truth, [1, 2])] = 0
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    free = ndi.distance_transform_edt(truth == 0)
    for k, (cy, cx) in enumerate(np.argwhere(free > 15)[[0, -1]], start=1):
        pred[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 500 + k
    prob = ndi.gaussian_filter((truth > 0).astype(np.float32), 2)
    return image, truth, pred, prob


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9
    return a == b


def evaluated_widget(viewer, qtbot, truth, pred, prob=None, image=None):
    from nucseg._napari.evaluate_widget import EvaluateWidget

    if image is not None:
        viewer.add_image(image, name="image", rgb=True)
    viewer.add_labels(truth, name="truth")
    viewer.add_labels(pred, name="pred")
    if prob is not None:
        viewer.add_image(prob, name="prob", visible=False)
    widget = EvaluateWidget(viewer)
    widget.truth_combo.set_layer("truth")
    widget.pred_combo.set_layer("pred")
    if prob is not None:
        widget.prob_combo.set_layer("prob")
    widget.evaluate_button.click()
    qtbot.waitUntil(lambda: widget.evaluation is not None and not widget.running, timeout=30000)
    return widget


def test_numbers_equal_core_and_cli(make_napari_viewer, qtbot, tmp_path, capsys):
    import tifffile

    from nucseg._napari.evaluate_widget import OBJECTS_LAYER, PIXELS_LAYER, TABLE_ROWS
    from nucseg.cli import main
    from nucseg.cli.evaluate import JSON_KEYS
    from nucseg.metrics.matching import match_instances
    from nucseg.metrics.overlays import object_overlay, pixel_confusion_map

    viewer = make_napari_viewer()
    _, truth, pred, prob = truth_and_prediction()
    widget = evaluated_widget(viewer, qtbot, truth, pred, prob)
    shown = widget.table_values(0)
    expected = evaluate_labels(truth, pred, prob, 0.5)
    for _, key in TABLE_ROWS:
        if key in expected:
            assert same(shown[key], expected[key]), key
    assert expected["fn"] == 2 and expected["fp"] == 2 and not math.isnan(expected["auc"])
    assert widget.table.item(0, 0).text() == f"{expected['iou']:.4f}"

    tifffile.imwrite(tmp_path / "truth.tif", truth)
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    np.save(tmp_path / "prob.npy", prob)
    capsys.readouterr()
    assert main(["evaluate", "--truth", str(tmp_path / "truth.tif"), "--pred", str(tmp_path / "pred.tif"),
                 "--prob", str(tmp_path / "prob.npy"), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    for key in JSON_KEYS:
        assert same(shown[key], cli[key]), key

    match = match_instances(truth, pred, 0.5)
    objects, pixels = viewer.layers[OBJECTS_LAYER], viewer.layers[PIXELS_LAYER]
    assert np.array_equal(objects.data, object_overlay(truth, pred, match))
    assert np.array_equal(pixels.data, pixel_confusion_map(truth, pred)) and not pixels.visible
    colors = objects.colormap.map(np.array([0, 1, 2, 3]))
    assert np.allclose(colors, [[0, 0, 0, 0], [0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1]])
    assert widget.errors_table.rowCount() == 4
    kinds = [widget.errors_table.item(i, 0).text() for i in range(4)]
    assert kinds.count("FN") == 2 and kinds.count("FP") == 2
    assert OBJECTS_LAYER not in [layer.name for layer in widget.truth_combo.layers()]  # overlays: not offered

    out = widget.export_csv(tmp_path / "metrics.csv")
    with open(out) as fh:
        (row,) = list(csv.DictReader(fh))
    assert float(row["dice"]) == pytest.approx(expected["dice"], abs=1e-5) and int(row["fn"]) == 2
    widget.export_csv(tmp_path / "metrics.csv")  # replacing is allowed: the dialog asked


def test_clicking_an_fn_item_moves_the_camera_and_keeps_the_prediction_active(make_napari_viewer, qtbot):
    """Going to a missed nucleus selects it in the truth, but the brush must keep editing the prediction: before,
    the truth became the active layer and the next stroke edited the ground truth."""
    from qtpy.QtCore import Qt

    from nucseg._napari.evaluate_widget import HIGHLIGHT_LAYER, OBJECTS_LAYER

    viewer = make_napari_viewer()
    _, truth, pred, _ = truth_and_prediction()
    widget = evaluated_widget(viewer, qtbot, truth, pred)
    viewer.layers["truth"].scale = (0.5, 0.5)  # world != data coordinates
    viewer.layers["pred"].scale = (0.5, 0.5)
    viewer.window.add_dock_widget(widget)
    widget.show()
    viewer.reset_view()
    zoom_before = viewer.scene.camera.zoom
    assert viewer.layers.selection.active is viewer.layers["pred"]  # after Evaluate: not the overlay
    assert not viewer.layers[OBJECTS_LAYER].editable
    index = next(i for i, e in enumerate(widget.evaluation.errors) if e.kind == "FN")
    error = widget.evaluation.errors[index]
    table = widget.errors_table
    item = table.item(table.row_of(index), 2)
    table.scrollToItem(item)
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=table.visualItemRect(item).center())
    ys, xs = np.nonzero(truth == error.label)
    assert error.label in (1, 2)
    assert np.allclose(viewer.scene.camera.center[-2:], (ys.mean() * 0.5, xs.mean() * 0.5), atol=1e-6)
    assert viewer.scene.camera.zoom > zoom_before
    assert viewer.layers["truth"].selected_label == error.label
    assert viewer.layers.selection.active is viewer.layers["pred"]  # the brush still edits the prediction
    (box,) = viewer.layers[HIGHLIGHT_LAYER].data  # a white box around the nucleus, in the same pixel frame
    assert box[:, 0].min() < ys.min() and box[:, 0].max() > ys.max() and box[:, 1].min() < xs.min()


def test_stack_of_tiles_gives_one_row_per_image(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    pairs = [truth_and_prediction(seed) for seed in (0, 1)]
    truth = np.stack([p[1] for p in pairs])
    pred = np.stack([p[2] for p in pairs])
    widget = evaluated_widget(viewer, qtbot, truth, pred)
    assert widget.table.columnCount() == 3
    assert [widget.table.horizontalHeaderItem(j).text() for j in range(3)] == ["image 0", "image 1", "MEAN"]
    for j in (0, 1):
        expected = evaluate_labels(truth[j], pred[j])
        shown = widget.table_values(j)
        assert all(same(shown[k], v) for k, v in expected.items())
    mean = widget.table_values(2)
    assert same(mean["f1"], float(np.mean([widget.table_values(j)["f1"] for j in (0, 1)])))
    assert mean["fn"] == 4
    index = next(i for i, e in enumerate(widget.evaluation.errors) if e.plane == (1,))
    widget.errors_table.setCurrentCell(widget.errors_table.row_of(index), 0)
    assert viewer.dims.current_step[0] == 1


def test_error_list_sorts_and_exports_in_the_order_shown(make_napari_viewer, qtbot, tmp_path):
    from qtpy.QtCore import Qt

    from nucseg.jobs.evaluate import ERROR_COLUMNS, sort_errors

    viewer = make_napari_viewer()
    _, truth, pred, _ = truth_and_prediction()
    widget = evaluated_widget(viewer, qtbot, truth, pred)
    table = widget.errors_table
    area_column = 5
    table.sortByColumn(area_column, Qt.SortOrder.DescendingOrder)
    shown = table.shown()
    assert [e.area for e in shown] == sorted((e.area for e in widget.evaluation.errors), reverse=True)
    assert shown == sort_errors(widget.evaluation.errors, "area_px", descending=True)
    table.setCurrentCell(0, 0)  # the biggest error: the camera goes to it, whatever row it was before sorting
    biggest = shown[0]
    layer = viewer.layers["truth" if biggest.kind == "FN" else "pred"]
    assert layer.selected_label == biggest.label
    out = table.export_csv(tmp_path / "errors.csv")
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(ERROR_COLUMNS)
    assert [int(r["area_px"]) for r in rows] == [e.area for e in shown]
    assert {(r["kind"], int(r["label"])) for r in rows} == {(e.kind, e.label) for e in widget.evaluation.errors}


def test_side_by_side_shows_three_panels_and_restores(make_napari_viewer, qtbot):
    from nucseg._napari.evaluation_layers import CELL_VIEW_PX
    from nucseg._napari.side_by_side import SideBySide

    viewer = make_napari_viewer()
    image, truth, pred, _ = truth_and_prediction()
    widget = evaluated_widget(viewer, qtbot, truth, pred, image=image)
    before = [(layer.name, layer.visible) for layer in viewer.layers]
    widget.side_button.click()
    grid = viewer.canvas.grid
    assert grid.enabled and widget.side_by_side.enabled
    names = [layer.name for layer in viewer.layers]
    panels = {}
    for index, layer in enumerate(viewer.layers):
        if layer.visible:
            panels.setdefault(grid.position(index, viewer.layers), []).append(layer.name)
    prefix = SideBySide.PREFIX
    # the user's own labels over copies of the image: corrections there are corrections to them
    assert panels == {(0, 0): ["image"], (0, 1): [f"{prefix}image under truth", "truth"],
                      (0, 2): [f"{prefix}image under pred", "pred"]}, (panels, names)
    assert viewer.layers.selection.active.name == "pred"  # ready for corrections, with its own undo history
    height, width = viewer.canvas.viewbox_size(viewer.layers)  # one panel
    assert viewer.scene.camera.zoom == pytest.approx(min(height, width) / CELL_VIEW_PX)  # cells, not the image
    widget.side_button.click()
    assert not grid.enabled
    assert [(layer.name, layer.visible) for layer in viewer.layers] == before


def test_shape_mismatch_is_shown_not_raised(make_napari_viewer, qtbot, monkeypatch):
    from nucseg._napari import _workers, evaluate_widget

    seen: list[str] = []
    monkeypatch.setattr(_workers, "show_error", seen.append)
    monkeypatch.setattr(evaluate_widget, "show_error", seen.append)
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((20, 20), np.uint32), name="truth")
    viewer.add_labels(np.zeros((20, 30), np.uint32), name="pred")
    widget = evaluate_widget.EvaluateWidget(viewer)
    widget.truth_combo.set_layer("truth")
    widget.pred_combo.set_layer("pred")
    widget.evaluate_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=10000)
    assert seen and "differ in shape" in seen[-1]
    assert widget.evaluate_button.isEnabled() and widget.evaluation is None


@pytest.mark.skipif(not os.environ.get("NUCSEG_SCREENSHOTS"), reason="set NUCSEG_SCREENSHOTS=1 to refresh docs/")
def test_screenshot_evaluate_widget(make_napari_viewer, qtbot, monkeypatch):
    """docs/screenshots/evaluate_widget.png and side_by_side.png on the sample tile (the default model's prediction)."""
    from PIL import Image as PILImage

    from nucseg._napari.evaluate_widget import EvaluateWidget
    from nucseg.config import InferenceConfig, PostprocessConfig, TilingConfig
    from nucseg.inference.predict import predict
    from nucseg.models.registry import DEFAULT_MODEL, resolve_model, shipped_models

    if DEFAULT_MODEL not in shipped_models():
        pytest.skip("no default model shipped")
    root = Path(__file__).resolve().parents[1]
    image = np.asarray(PILImage.open(root / "sample_data" / "he_breast_monuseg.png").convert("RGB"))
    truth = np.asarray(PILImage.open(root / "sample_data" / "he_breast_monuseg_labels.png")).astype(np.uint32)
    config = InferenceConfig(model=DEFAULT_MODEL, device="cpu", tiling=TilingConfig(512, 64, 2),
                             postprocess=PostprocessConfig(**resolve_model(DEFAULT_MODEL).postprocess_defaults))
    result = predict(image, config)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    kwargs = {"scale": (0.25, 0.25), "units": "um"}
    viewer.add_image(image, name="H&E breast (MoNuSeg)", rgb=True, metadata={"mpp": 0.25}, **kwargs)
    viewer.add_labels(truth, name="ground truth", visible=False, **kwargs)
    viewer.add_labels(result.labels, name="prediction", visible=False, metadata={"nucseg_result": result}, **kwargs)
    widget = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Evaluate")
    assert widget.truth_combo.currentText() == "ground truth" and widget.pred_combo.currentText() == "prediction"
    widget.evaluate_button.click()
    qtbot.waitUntil(lambda: widget.evaluation is not None and not widget.running, timeout=60000)
    viewer.reset_view()
    viewer.canvas.overlays.scale_bar.visible = True
    qtbot.wait(500)
    out = root / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out / "evaluate_widget.png"), canvas_only=False)
    centre = np.array(truth.shape) / 2  # the FN nearest the image centre: panels full of cells
    index = min((i for i, e in enumerate(widget.evaluation.errors) if e.kind == "FN"),
                key=lambda i: float(np.hypot(*(np.array(widget.evaluation.errors[i].centroid) - centre))))
    widget.errors_table.setCurrentCell(widget.errors_table.row_of(index), 0)
    qtbot.wait(300)
    viewer.screenshot(str(out / "evaluate_fn_zoom.png"), canvas_only=False)
    widget.side_button.click()  # centred on the chosen FN, at cell level
    qtbot.wait(500)
    viewer.screenshot(str(out / "side_by_side.png"), canvas_only=False)
    widget.side_button.click()
