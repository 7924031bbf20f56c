"""Numbers per area in a real viewer: nuclei per mm² of tissue for the whole result, the view and a drawn region,
the density heatmap, the status bar on hover, and the Measurements table that takes the camera to a nucleus.

Screenshot: ``NUCSEG_SCREENSHOTS=1 pytest tests/test_measurements.py -k slide`` writes
docs/screenshots/measurements.png.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from test_reopen_in_place import REGION, SLIDE, blob_net, needs_slide, segment_region  # noqa: F401 (fixture)
from test_widget_segment import make_widget, nucseg_home, run_and_wait  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("blob_net")]

ROOT = Path(__file__).resolve().parents[1]


def hover(viewer, layer, data_yx):
    """The status napari shows with the cursor over pixel `data_yx` of `layer`."""
    world = layer.data_to_world(data_yx)
    status = layer.get_status(world, view_direction=None, dims_displayed=[0, 1], world=True)
    return status["coordinates"] if isinstance(status, dict) else str(status)


def measured_dock(viewer, qtbot):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-nucseg", "Measurements")
    qtbot.waitUntil(lambda: widget.measured is not None, timeout=120000)
    return widget


@needs_slide
@pytest.mark.shared_data
def test_slide_region_numbers_per_mm2_heatmap_hover_and_table(make_napari_viewer, qtbot, tmp_path):
    from nucseg.io.slides import open_slide
    from nucseg.metrics.density import summarize, tissue_map

    viewer = make_napari_viewer(show=True)
    viewer.open(str(SLIDE), plugin="napari-nucseg")
    image, labels = segment_region(viewer, qtbot, REGION)
    # the result is measured in the background: hover shows the nucleus's numbers
    qtbot.waitUntil(lambda: "nucseg_measured" in labels.metadata, timeout=120000)
    data = np.asarray(labels.data)
    k = int(np.bincount(data.ravel())[1:].argmax()) + 1  # the biggest nucleus
    rr, cc = np.nonzero(data == k)
    status = hover(viewer, labels, [rr[len(rr) // 2], cc[len(cc) // 2]])
    assert "area (µm²)" in status and "perimeter (µm)" in status and "mean haematoxylin (OD)" in status
    from napari.utils.status_messages import format_feature_value

    assert f"area (µm²): {format_feature_value(np.round(rr.size * 0.499 ** 2, 1))}" in status

    widget = measured_dock(viewer, qtbot)
    measured = widget.measured
    assert len(measured.columns["id"]) == len(np.unique(data)) - 1
    with open_slide(SLIDE) as slide:
        tissue = tissue_map(slide, REGION)
    whole = summarize(measured.centroids, tissue, 0.499)
    assert widget.whole_label.text() == whole.text() and "/mm²" in whole.text() and whole.nuclei > 5

    # the field of view: a window of the region, recounted when the camera moves
    corners = [labels.data_to_world([40, 50]), labels.data_to_world([99, 129])]
    viewer.scene.camera.center = tuple((np.asarray(corners[0]) + np.asarray(corners[1])) / 2)
    from nucseg._napari.layers import field_of_view_region

    qtbot.wait(400)
    y, x, h, w = field_of_view_region(viewer, labels)
    assert widget.view_label.text() == summarize(measured.centroids, tissue, 0.499,
                                                 window=(y + REGION[0], x + REGION[1], h, w)).text()
    # a drawn region: a polygon in µm over the image
    poly_world = np.array([labels.data_to_world(p) for p in ([10, 10], [10, 150], [120, 80])])
    shapes = viewer.add_shapes([poly_world], shape_type="polygon", name="tumour", units=labels.units)
    widget.shapes_combo.set_layer(shapes)
    qtbot.wait(100)
    polygon = np.array([[10, 10], [10, 150], [120, 80]], float) + 0.5 + np.array(REGION[:2])
    expected = summarize(measured.centroids, tissue, 0.499, polygon=[polygon])
    assert widget.drawn_label.text() == expected.text() and expected.nuclei < whole.nuclei

    heat = widget.add_heatmap()
    assert heat.name.endswith("(nuclei per mm²)") and str(heat.units[0]) == "micrometer"
    assert np.nanmax(heat.data) > 0
    # the grid starts at the region's corner and covers it (pixel edges: centres -/+ half a pixel)
    half_cell, half_px = np.asarray(heat.scale) / 2, np.asarray(labels.scale) / 2
    lo, hi = heat.extent.world[:, -2:] + [-half_cell, half_cell]
    llo, lhi = labels.extent.world[:, -2:] + [-half_px, half_px]
    assert np.allclose(lo, llo, atol=1e-4) and np.all(hi >= lhi - 1e-4)

    # the table: sort by area, click the first row: the camera goes to that nucleus
    widget.table.sortByColumn(1, widget.table.horizontalHeader().sortIndicatorOrder().DescendingOrder)
    top = widget.model.row_of(0)
    assert top["id"] == k
    widget.table.clicked.emit(widget.model.index(0, 0))
    centre = np.asarray(labels.world_to_data(viewer.scene.camera.center))[-2:]
    assert np.allclose(centre, [rr.mean(), cc.mean()], atol=0.05) and labels.selected_label == k
    if os.environ.get("NUCSEG_SCREENSHOTS"):
        from nucseg._napari.evaluation_layers import centre_on

        viewer.window._qt_window.resize(1600, 1000)
        qtbot.wait(300)
        centre_on(viewer, labels, (), (REGION[2] / 2, REGION[3] / 2), max(REGION[2:]), fraction=0.8)
        viewer.status = hover(viewer, labels, [rr[len(rr) // 2], cc[len(cc) // 2]])  # as the cursor there shows
        qtbot.wait(500)
        viewer.screenshot(str(ROOT / "docs" / "screenshots" / "measurements.png"), canvas_only=False)

    # an edit drops the numbers at once (none stale on hover) and they come back for the edited layer
    labels.paint((rr[0], cc[0]), 0)
    labels.data[data == k] = 0
    labels.events.data(value=labels.data)
    assert "nucseg_measured" not in labels.metadata and k not in set(labels.features.get("index", []))
    qtbot.waitUntil(lambda: "nucseg_measured" in labels.metadata, timeout=120000)
    assert k not in set(labels.metadata["nucseg_measured"].columns["id"].tolist())


def test_without_a_pixel_size_everything_stays_in_pixels(make_napari_viewer, qtbot, tmp_path):
    from fake_models import blob_image

    viewer = make_napari_viewer(show=True)
    image, _ = blob_image((200, 260), n=15, seed=2)
    image[:, :] = np.where(image.sum(-1, keepdims=True) > 600, np.array([200, 120, 170], np.uint8), image)
    viewer.add_image(image, name="tile", rgb=True)
    widget = make_widget(viewer)
    run_and_wait(qtbot, widget)
    (labels,) = widget.result_layers
    qtbot.waitUntil(lambda: "nucseg_measured" in labels.metadata, timeout=60000)
    rr, cc = np.nonzero(np.asarray(labels.data) == 1)
    status = hover(viewer, labels, [rr[0], cc[0]])
    assert "area (px)" in status and "µm" not in status
    dock = measured_dock(viewer, qtbot)
    text = dock.whole_label.text()
    assert "10⁶ px²" in text and "mm²" not in text and "unknown" in text
    heat = dock.add_heatmap()
    assert heat.name.endswith("(nuclei per 10^6 px²)")


def test_a_layer_is_measured_even_if_an_earlier_layer_had_its_id(make_napari_viewer, qtbot):
    """The running measurements were keyed by id(layer): a layer of a closed viewer whose worker never reported its
    end left its id behind, and a new layer that got the same id was never measured (the Measurements dock waited
    forever: test_measurements after test_widget_segment)."""
    import weakref

    from nucseg._napari import measurements

    viewer = make_napari_viewer()
    labels = np.zeros((64, 64), np.uint32)
    labels[10:20, 10:20] = 1
    layer = viewer.add_labels(labels)

    class Gone:
        pass

    gone = Gone()
    measurements._running[id(layer)] = (weakref.ref(gone), None)
    del gone
    worker = measurements.measure_layer(viewer, layer)
    assert worker is not None
    qtbot.waitUntil(lambda: measurements.MEASURED_KEY in layer.metadata, timeout=60000)


def test_a_dock_opened_between_a_measurements_return_and_its_worker_end_gets_them(make_napari_viewer, qtbot):
    """The worker's return (metadata set) and its finished signal (no longer running) are two events; asked in
    between, the current measurements are handed over at once, not left waiting for a call already made."""
    import weakref

    from fake_models import blob_image
    from nucseg._napari import measurements

    viewer = make_napari_viewer()
    image, truth = blob_image((200, 260), n=15, seed=2)
    viewer.add_image(image, name="tile", rgb=True)
    layer = viewer.add_labels(truth, name="tile nuclei")
    measurements.measure_layer(viewer, layer)
    qtbot.waitUntil(lambda: measurements.MEASURED_KEY in layer.metadata and id(layer) not in measurements._running,
                    timeout=60000)
    measurements._running[id(layer)] = (weakref.ref(layer), None)  # returned, finished signal still queued
    heard = []
    measurements.on_measured(lambda lay, measured: heard.append(lay))
    try:
        assert measurements.measure_layer(viewer, layer) is None
        assert heard == [layer]
    finally:
        measurements._running.pop(id(layer), None)
        measurements._listeners.pop()
