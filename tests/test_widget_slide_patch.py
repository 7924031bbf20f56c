"""Whole-slide results can be corrected (issue 20, item 4), in a real viewer on a real slide: the current view or a
drawn rectangle of a multiscale zarr result becomes a plain numpy Labels layer placed exactly over it; its edits
are written into the result's zarr when accepted, undone, and the patch goes into the training set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides" / "small_HE.svs"
needs_slide = pytest.mark.skipif(not SLIDE.is_file(), reason="needs ../shared/data/slides/small_HE.svs (OpenSlide's "
                                 "CMU-1-Small-Region, a real 20x H&E slide); not found next to the repository")


@pytest.fixture
def home(tmp_path, monkeypatch):
    from test_widget_segment import fake_model_folder

    home = tmp_path / "home"
    monkeypatch.setenv("NUCSEG_HOME", str(home))
    fake_model_folder(home)
    return home


@pytest.fixture
def blobnet(monkeypatch):
    from fake_models import BlobNet
    from nucseg.models import build

    model = BlobNet().eval()
    monkeypatch.setattr(build, "load_network", lambda spec, device="cpu", runtime="auto": model)
    return model


@pytest.fixture
def errors(monkeypatch):
    from nucseg._napari import _workers, slide_patch_widget

    seen: list[str] = []
    monkeypatch.setattr(slide_patch_widget, "show_error", seen.append)
    monkeypatch.setattr(_workers, "show_error", seen.append)
    return seen


def segment_rectangle(viewer, qtbot, image, box, model=None):
    """Segment `box` (y, x, h, w slide pixels) with the Segment widget; returns the multiscale result layer."""
    from test_widget_segment import make_widget, run_and_wait

    from nucseg._napari.segment_widget import SHAPES

    mpp = image.metadata["mpp"]
    y, x, h, w = box
    viewer.add_shapes([[[y * mpp, x * mpp], [(y + h - 1) * mpp, (x + w - 1) * mpp]]], shape_type="rectangle",
                      name="to segment", units=tuple(image.units)[-2:])
    widget = make_widget(viewer, tile=256, overlap=32)
    if model is not None:
        assert widget.model_combo.set_model(model)
    widget.region_combo.setCurrentText(SHAPES)
    widget.shapes_combo.set_layer("to segment")
    widget.image_combo.set_layer(image.name)
    run_and_wait(qtbot, widget, timeout=600000)
    (layer,) = [layer for layer in viewer.layers if "nucseg_result" in layer.metadata]
    assert layer.multiscale
    return layer


def wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120000)


@needs_slide
def test_a_slide_result_is_corrected_through_a_patch(make_napari_viewer, qtbot, home, blobnet, errors, monkeypatch):
    from nucseg._napari import layers as layer_helpers
    from nucseg._napari.slide_patch_widget import PATCH_KEY, SlidePatchWidget
    from nucseg.io.slides import open_slide
    from nucseg.jobs import slide_patches
    from nucseg.training.corrections.store import CorrectionStore

    monkeypatch.setattr(layer_helpers, "PYRAMID_MIN_SIZE", 128)  # a 600 px result shown as a 3-level pyramid
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(SLIDE), plugin="napari-nucseg")
    mpp = image.metadata["mpp"]
    slide = segment_rectangle(viewer, qtbot, image, (800, 1200, 600, 600))
    array = slide.metadata["nucseg_result"].labels
    before = np.asarray(array[:])
    assert before.max() > 10
    widget = SlidePatchWidget(viewer, store=CorrectionStore(home / "corrections"))
    assert widget.result_combo.current_layer() is slide

    # the current view becomes a patch, placed exactly over the slide result
    viewer.scene.camera.center = (1100 * mpp, 1500 * mpp)
    viewer.scene.camera.zoom = 6 / mpp
    (patch_layer,) = widget.open_view()
    patch = patch_layer.metadata[PATCH_KEY]["patch"]
    y, x, h, w = patch.box
    assert not isinstance(patch_layer.data, list) and patch_layer.data.shape == (h, w)
    assert np.array_equal(patch_layer.data, before[y : y + h, x : x + w])
    assert np.allclose(patch_layer.data_to_world((0, 0)), slide.data_to_world((y, x)))
    assert abs(y + h / 2 - 300) < 40 and abs(x + w / 2 - 300) < 40  # the view's centre: slide px (1100, 1500)

    # edits: one nucleus erased, one painted; accepted into the zarr, shown by the slide layer
    ids = np.unique(patch_layer.data)
    erased = int(ids[len(ids) // 2])
    patch_layer.data_setitem(np.nonzero(patch_layer.data == erased), 0)
    free = np.argwhere(patch_layer.data == 0)
    cy, cx = free[len(free) // 2]
    disc = np.nonzero((np.arange(h)[:, None] - cy) ** 2 + (np.arange(w)[None] - cx) ** 2 <= 16)
    patch_layer.data_setitem(disc, erased)  # painted with a free id of the patch (and of the slide)
    widget.accept()
    wait_idle(qtbot, widget)
    assert not errors
    after = np.asarray(array[:])
    assert (after == erased).sum() == len(disc[0]) and after[y + cy, x + cx] == erased
    assert np.array_equal(np.asarray(slide.data[0][y : y + h, x : x + w]), after[y : y + h, x : x + w])
    assert np.array_equal(np.asarray(slide.data[1][:]), after[::2, ::2])  # the zoomed-out level too
    outside = np.ones(after.shape, bool)
    outside[y : y + h, x : x + w] = False
    assert np.array_equal(after[outside], before[outside])
    assert [e.status for e in slide_patches.patch_entries(array)] == [slide_patches.APPLIED]

    # undo puts the blocks back
    widget.undo()
    wait_idle(qtbot, widget)
    assert np.array_equal(np.asarray(array[:]), before)
    assert np.array_equal(np.asarray(patch_layer.data), before[y : y + h, x : x + w])  # re-read: it had no edits

    # a drawn rectangle becomes a patch too, and a patch goes into the training set
    viewer.add_shapes([[[850 * mpp, 1250 * mpp], [949 * mpp, 1349 * mpp]]], shape_type="rectangle", name="fix",
                      units=tuple(image.units)[-2:])
    widget.shapes_combo.set_layer("fix")
    (drawn,) = widget.open_shapes()
    dy, dx, dh, dw = drawn.metadata[PATCH_KEY]["patch"].box
    assert dy <= 50 and dx <= 50 and dh >= 100 and dw >= 100
    widget.patch_combo.set_layer(drawn)
    widget.add_to_training()
    wait_idle(qtbot, widget)
    (entry,) = CorrectionStore(home / "corrections").entries()
    pixels, labels = entry.load()
    region = entry.provenance["region"]
    y0, x0 = slide.metadata["nucseg_result"].region[:2]  # the slide pixel the result starts at
    assert region == [y0 + dy, x0 + dx, dh, dw] and entry.reviewed == "all"
    assert np.array_equal(labels, before[dy : dy + dh, dx : dx + dw])
    truth_pixels = open_slide(str(SLIDE)).read_region(0, region[0], region[1], dh, dw)[..., :3]
    assert np.array_equal(pixels, truth_pixels)
    widget.discard()
    assert drawn not in viewer.layers and not errors


@needs_slide
@pytest.mark.skipif(not os.environ.get("NUCSEG_SCREENSHOTS"), reason="set NUCSEG_SCREENSHOTS=1 to refresh docs/")
def test_screenshot_of_a_slide_patch(make_napari_viewer, qtbot, home, monkeypatch):
    """docs/screenshots/slide_patch.png: a patch of a slide result segmented by the shipped model, being edited."""
    from nucseg._napari import layers as layer_helpers
    from nucseg._napari.slide_patch_widget import SlidePatchWidget
    from nucseg.models.registry import DEFAULT_MODEL

    monkeypatch.setattr(layer_helpers, "PYRAMID_MIN_SIZE", 256)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    (image,) = viewer.open(str(SLIDE), plugin="napari-nucseg")
    mpp = image.metadata["mpp"]
    slide = segment_rectangle(viewer, qtbot, image, (1850, 850, 700, 700), model=DEFAULT_MODEL)  # epithelium
    slide.contour = 1
    widget = SlidePatchWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Correct a slide result")
    viewer.scene.camera.center = (2180 * mpp, 1180 * mpp)
    viewer.scene.camera.zoom = 6 / mpp
    qtbot.wait(300)
    (patch_layer,) = widget.open_view()
    ids = np.unique(patch_layer.data)
    patch_layer.data_setitem(np.nonzero(patch_layer.data == ids[len(ids) // 2]), 0)  # an edit, before Accept
    viewer.scene.camera.zoom = 2.5 / mpp  # the patch and the slide result around it
    viewer.canvas.overlays.scale_bar.visible = True
    qtbot.wait(800)
    out = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
    viewer.screenshot(str(out / "slide_patch.png"), canvas_only=False)
