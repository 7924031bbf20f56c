"""The Segment widget with a deterministic fake network: results, stop, live thresholds, regions, slides, errors."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fake_inputs import MODEL_NAME, fake_model_folder  # noqa: F401 - fake_model_folder: imported from here too
from fake_models import BlobNet, blob_image
from nucseg.config import PostprocessConfig
from nucseg.inference.predict import reapply_postprocess

pytestmark = pytest.mark.gui

@pytest.fixture(autouse=True)
def nucseg_home(tmp_path, monkeypatch):
    """A fresh NUCSEG_HOME for each test, holding the fake model."""
    home = tmp_path / "home"
    monkeypatch.setenv("NUCSEG_HOME", str(home))
    fake_model_folder(home)
    return home


def nuclei_layer(viewer, image_name: str, suffix: str = ""):
    """The labels layer a run on `image_name` made with the fake model."""
    return viewer.layers[f"{image_name} nuclei ({MODEL_NAME} v1){suffix}"]


class CountingNet(BlobNet):
    """BlobNet that counts forward calls and can sleep in each, like a real CPU model."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.calls = 0
        self.delay = delay
        self.lock = threading.Lock()
        self.threads: set[str] = set()  # the threads the forward passes ran on

    def forward(self, x):
        with self.lock:
            self.calls += 1
            self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        return super().forward(x)


@pytest.fixture
def net(monkeypatch):
    from nucseg.models import build

    model = CountingNet().eval()
    monkeypatch.setattr(build, "load_network", lambda spec, device="cpu", runtime="auto": model)
    return model


@pytest.fixture
def errors(monkeypatch):
    """Messages passed to show_error by the widget and the worker helper."""
    from nucseg._napari import _workers, segment_widget

    seen: list[str] = []
    monkeypatch.setattr(segment_widget, "show_error", seen.append)
    monkeypatch.setattr(_workers, "show_error", seen.append)
    return seen


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def make_widget(viewer, tile=128, overlap=32, batch=4):
    from nucseg._napari.segment_widget import SegmentWidget

    widget = SegmentWidget(viewer)
    assert widget.model_combo.set_model(os.environ["NUCSEG_HOME"] + f"/models/{MODEL_NAME}")
    widget.tile_spin.setValue(tile)
    widget.overlap_spin.setValue(overlap)
    widget.batch_spin.setValue(batch)
    return widget


def run_and_wait(qtbot, widget, timeout=60000):
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def test_run_adds_labels_and_hidden_probabilities(make_napari_viewer, qtbot, net):
    viewer = make_napari_viewer()
    image, truth = blob_image((200, 260), n=15, seed=2)
    viewer.add_image(image, name="blobs", rgb=True, scale=(0.5, 0.5), translate=(3, 4))
    widget = make_widget(viewer)
    run_and_wait(qtbot, widget)
    labels = nuclei_layer(viewer, "blobs")  # named with the model and its version
    assert labels.data.shape == truth.shape and labels.data.max() == truth.max()
    assert str(labels.units[0]) == str(viewer.layers["blobs"].units[0])
    assert same_partition(np.asarray(labels.data), truth)
    assert tuple(labels.scale) == (0.5, 0.5) and tuple(labels.translate) == (3, 4)
    assert labels.contour == 2
    assert "mpp" not in viewer.layers["blobs"].metadata  # pixel size left at the model's: not claimed as known
    meta = labels.metadata
    assert meta["nucseg_result"].n_nuclei == truth.max() and meta["nucseg_config"]["model"].endswith(MODEL_NAME)
    prob = viewer.layers[f"{labels.name} foreground probability"]
    assert not prob.visible and prob.colormap.name == "magma"
    assert prob.data.shape == truth.shape and tuple(prob.scale) == (0.5, 0.5)
    assert f"{truth.max()} nuclei" in widget.controls.status.text()
    widget.contours_check.setChecked(False)
    assert labels.contour == 0
    assert widget.run_button.isEnabled()


def test_pixel_size_from_the_file_or_given_for_a_tile_without_it(make_napari_viewer, qtbot, net):
    viewer = make_napari_viewer()
    image, truth = blob_image((120, 150), n=6, seed=3)
    viewer.add_image(image, name="slide crop", rgb=True, metadata={"mpp": 0.5})
    widget = make_widget(viewer)
    assert not widget.mpp_spin.isEnabled() and widget.mpp_spin.value() == 0.5
    assert "from the file" in widget.mpp_note.text()

    tile = viewer.add_image(image, name="20x jpg", rgb=True)  # a plain tile says nothing of its pixel size
    widget.image_combo.set_layer(tile)
    assert widget.mpp_spin.isEnabled() and widget.mpp_spin.text() == "unknown" and "not in the file" in widget.mpp_note.text()
    widget.mpp_spin.setValue(0.5)
    run_and_wait(qtbot, widget)
    labels = nuclei_layer(viewer, "20x jpg")
    result = labels.metadata["nucseg_result"]
    assert labels.data.shape == truth.shape  # labels at the tile's own pixels...
    assert result.probabilities.shape[-2:] == (240, 300)  # ...after the network saw it at its 0.25 um/px
    assert tile.metadata["mpp"] == 0.5 and labels.metadata["mpp"] == 0.5  # corrections and exports use it too
    widget.image_combo.set_layer("slide crop")
    widget.image_combo.set_layer(tile)
    assert widget.mpp_spin.isEnabled() and widget.mpp_spin.value() == 0.5  # the user's value stays changeable


def test_stop_takes_effect_within_one_batch(make_napari_viewer, qtbot, net):
    viewer = make_napari_viewer()
    image, _ = blob_image((512, 512), n=40, seed=1)
    viewer.add_image(image, name="big", rgb=True)
    net.delay = 0.05
    widget = make_widget(viewer, tile=64, overlap=0, batch=1)  # 64 batches
    widget.run_button.click()
    qtbot.waitUntil(lambda: net.calls >= 3, timeout=30000)
    assert widget.controls.stop_button.isEnabled()
    calls_at_stop = net.calls
    widget.stop()
    qtbot.waitUntil(lambda: not widget.running, timeout=30000)
    assert net.calls <= calls_at_stop + 1, (calls_at_stop, net.calls)
    assert "stopped" in widget.controls.status.text()
    # what the tiles done so far found is kept (glass is skipped, so the first tiles already hold nuclei), and
    # only that: a small part of the 40 nuclei, said to be a stopped run's
    shown = [layer for layer in viewer.layers if layer.name.endswith(")") and "nuclei" in layer.name]
    assert all(layer.metadata["nucseg_result"].stopped for layer in shown)
    assert all(layer.data.max() < 40 for layer in shown)
    assert widget.run_button.isEnabled() and not widget.controls.stop_button.isEnabled()


def test_thresholds_reapply_without_the_network(make_napari_viewer, qtbot, net):
    viewer = make_napari_viewer()
    image, truth = blob_image((200, 260), n=15, seed=2)
    viewer.add_image(image, name="blobs", rgb=True)
    widget = make_widget(viewer)
    run_and_wait(qtbot, widget)
    labels = nuclei_layer(viewer, "blobs")
    first = labels.metadata["nucseg_result"]
    calls = net.calls
    widget.min_area_spin.setValue(200)  # drops the smaller discs (radius 5..10 px -> 78..314 px)
    qtbot.waitUntil(lambda: labels.metadata["nucseg_result"] is not first and widget._reapply_worker is None,
                    timeout=30000)
    assert net.calls == calls  # no forward pass
    expected = reapply_postprocess(first, PostprocessConfig(min_area=200)).labels
    assert np.array_equal(labels.data, expected)
    assert 0 < labels.data.max() < truth.max()
    assert labels.metadata["nucseg_config"]["postprocess"]["min_area"] == 200


def test_otsu_cut_is_selectable_and_reapplied_without_the_network(make_napari_viewer, qtbot, net):
    viewer = make_napari_viewer()
    image, _ = blob_image((200, 260), n=15, seed=3)
    viewer.add_image(image, name="blobs", rgb=True)
    widget = make_widget(viewer)
    run_and_wait(qtbot, widget)
    labels = nuclei_layer(viewer, "blobs")
    first, calls = labels.metadata["nucseg_result"], net.calls
    widget.thresholds.otsu_check.setChecked(True)
    assert not widget.thresholds.fg_spin.isEnabled()  # the fixed cut no longer applies
    qtbot.waitUntil(lambda: labels.metadata["nucseg_result"] is not first and widget._reapply_worker is None,
                    timeout=30000)
    assert net.calls == calls
    config = labels.metadata["nucseg_config"]["postprocess"]
    assert config["foreground_method"] == "otsu"
    expected = reapply_postprocess(first, PostprocessConfig(**config)).labels
    assert np.array_equal(labels.data, expected)


def test_drawn_rectangle_region_is_translated(make_napari_viewer, qtbot, net):
    from nucseg._napari.segment_widget import SHAPES
    from nucseg.inference.predict import predict

    viewer = make_napari_viewer()
    image, _ = blob_image((240, 300), n=25, seed=4)
    viewer.add_image(image, name="blobs", rgb=True, scale=(0.5, 0.5), translate=(10, 20))
    # image pixels y 50..149, x 60..179 in world coordinates (pixel centres at translate + i * scale)
    viewer.add_shapes([[[35, 50], [84.5, 50], [84.5, 109.5], [35, 109.5]]], shape_type="rectangle", name="roi")
    widget = make_widget(viewer)
    widget.region_combo.setCurrentText(SHAPES)
    widget.shapes_combo.set_layer("roi")
    widget.image_combo.set_layer("blobs")
    run_and_wait(qtbot, widget)
    labels = nuclei_layer(viewer, "blobs")
    assert labels.metadata["nucseg_region"] == (50, 60, 100, 120)
    assert labels.data.shape == (100, 120)
    assert tuple(labels.translate) == (35, 50) and tuple(labels.scale) == (0.5, 0.5)
    crop = predict(image[50:150, 60:180], widget.inference_config())
    assert same_partition(np.asarray(labels.data), crop.labels)


def test_field_of_view_region(make_napari_viewer):
    from nucseg._napari.layers import field_of_view_region

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((1000, 1000, 3), np.uint8), rgb=True, scale=(2, 2))
    height, width = viewer.canvas.viewbox_size(viewer.layers)
    viewer.scene.camera.center = (400, 600)  # world = 2 x pixels
    viewer.scene.camera.zoom = 4.0
    y, x, h, w = field_of_view_region(viewer, layer)
    assert abs(y + h / 2 - 200) <= 1 and abs(x + w / 2 - 300) <= 1
    assert abs(h - height / 4 / 2) <= 1 and abs(w - width / 4 / 2) <= 1


def test_flat_images_bigger_than_a_block_at_the_models_resolution_stream_to_disk():
    from nucseg.jobs.segment import streams_to_disk

    def flat(shape, mpp=None, multiscale=False):
        return shape, multiscale, mpp

    assert streams_to_disk(*flat((100, 100), multiscale=True), None, 2048, 0.25)  # slides always
    assert not streams_to_disk(*flat((2000, 2000)), None, 2048, 0.25)
    assert streams_to_disk(*flat((2000, 2000), mpp=0.5), None, 2048, 0.25)  # 4000 px square at the model's 40x
    assert streams_to_disk(*flat((3000, 3000)), None, 2048, 0.25)
    assert not streams_to_disk(*flat((3000, 3000)), (0, 0, 1000, 1000), 2048, 0.25)  # a region of it: in memory


def test_big_flat_image_at_20x_streams_into_zarr(make_napari_viewer, qtbot, net, nucseg_home):
    viewer = make_napari_viewer()
    image, truth = blob_image((1100, 1100), n=60, seed=8, radius=(5, 8))
    viewer.add_image(image, name="big tile", rgb=True, metadata={"mpp": 0.5})  # 2200 px square at 0.25 um/px
    widget = make_widget(viewer, tile=512, overlap=64)
    run_and_wait(qtbot, widget, timeout=120000)
    labels = nuclei_layer(viewer, "big tile")
    assert not isinstance(labels.metadata["nucseg_result"].labels, np.ndarray)  # zarr, not memory
    assert len(list((nucseg_home / "predictions").glob("big_tile-*.zarr"))) == 1
    data = labels.data[0] if labels.multiscale else labels.data
    assert data.shape == truth.shape and 0.9 * truth.max() <= np.asarray(data).max() <= 1.1 * truth.max()


def test_multiscale_slide_streams_into_zarr(make_napari_viewer, qtbot, net, nucseg_home, monkeypatch):
    from nucseg._napari import layers as layer_helpers

    monkeypatch.setattr(layer_helpers, "PYRAMID_MIN_SIZE", 160)
    viewer = make_napari_viewer()
    image, truth = blob_image((256, 320), n=20, seed=6)
    viewer.add_image([image, image[::2, ::2]], name="slide", rgb=True, multiscale=True, metadata={"mpp": 0.25})
    widget = make_widget(viewer)
    run_and_wait(qtbot, widget)
    labels = nuclei_layer(viewer, "slide")
    assert labels.multiscale and len(labels.data) == 2
    assert labels.data[0].shape == truth.shape and labels.data[1].shape == (128, 160)
    assert same_partition(np.asarray(labels.data[0]), truth)
    folders = list((nucseg_home / "predictions").glob("slide-*.zarr"))
    assert len(folders) == 1
    assert labels.metadata["mpp"] == 0.25
    widget.min_area_spin.setValue(200)  # re-applied into a new array beside the old one
    first = labels.metadata["nucseg_result"]
    qtbot.waitUntil(lambda: labels.metadata["nucseg_result"] is not first and widget._reapply_worker is None,
                    timeout=30000)
    assert 0 < np.asarray(labels.data[0]).max() < truth.max()


def test_errors_are_shown_and_the_widget_recovers(make_napari_viewer, qtbot, net, errors, monkeypatch):
    from nucseg.errors import ModelError
    from nucseg.models import build

    viewer = make_napari_viewer()
    widget = make_widget(viewer)
    widget.run_button.click()  # no image layer
    assert errors and "no image layer" in errors[-1]
    image, _ = blob_image((100, 120), n=4)
    viewer.add_image(image, name="blobs", rgb=True)
    widget.tile_spin.setValue(100)  # not a multiple of 32
    widget.run_button.click()
    assert "multiple of 32" in errors[-1] and not widget.running

    def broken(spec, device="cpu", runtime="auto"):
        raise ModelError("weights file is corrupt; download it again")

    monkeypatch.setattr(build, "load_network", broken)
    widget.tile_spin.setValue(128)
    run_and_wait(qtbot, widget)
    assert errors[-1] == "weights file is corrupt; download it again"
    assert widget.run_button.isEnabled() and not [layer.name for layer in viewer.layers if "nuclei" in layer.name]
    assert widget.add_model_folder("/nonexistent/model") is False


SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides" / "small_HE.svs"


@pytest.mark.shared_data
@pytest.mark.skipif(not SLIDE.is_file(), reason="needs ../shared/data/slides/small_HE.svs")
def test_field_of_view_of_a_real_slide(make_napari_viewer, qtbot, net, nucseg_home):
    """An SVS opened by the plugin's reader, segmented in the visible region: labels in zarr, aligned."""
    from nucseg._napari.segment_widget import FIELD_OF_VIEW

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(SLIDE), plugin="napari-nucseg")
    mpp = image.metadata["mpp"]
    assert image.multiscale and tuple(image.scale) == (mpp, mpp)
    widget = make_widget(viewer, tile=256, overlap=32)
    widget.region_combo.setCurrentText(FIELD_OF_VIEW)
    viewer.scene.camera.center = (1000 * mpp, 1500 * mpp)
    viewer.scene.camera.zoom = 4 / mpp  # 4 screen pixels per slide pixel
    (region,) = widget.regions(image)
    run_and_wait(qtbot, widget)
    labels = nuclei_layer(viewer, image.name)
    assert labels.metadata["nucseg_region"] == region and abs(region[0] + region[2] / 2 - 1000) <= 1
    assert np.allclose(labels.translate, (region[0] * mpp, region[1] * mpp)) and np.allclose(labels.scale, mpp)
    assert labels.metadata["mpp"] == pytest.approx(mpp)
    assert len(list((nucseg_home / "predictions").glob("small_HE-*.zarr"))) == 1


@pytest.mark.skipif(not os.environ.get("NUCSEG_SCREENSHOTS"), reason="set NUCSEG_SCREENSHOTS=1 to refresh docs/")
def test_screenshot_segment_widget(make_napari_viewer, qtbot):
    """docs/screenshots/segment_widget.png: the sample H&E tile segmented by the shipped default model."""
    from PIL import Image as PILImage

    from nucseg.models.registry import DEFAULT_MODEL, shipped_models

    if DEFAULT_MODEL not in shipped_models():
        pytest.skip("no default model shipped")

    root = Path(__file__).resolve().parents[1]
    image = np.asarray(PILImage.open(root / "sample_data" / "he_breast_monuseg.png").convert("RGB"))
    from nucseg.models import versions

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    viewer.add_image(image, name="H&E breast (MoNuSeg)", rgb=True, scale=(0.25, 0.25), units="um",
                     metadata={"mpp": 0.25})
    widget = make_widget(viewer, tile=512, overlap=64)
    assert widget.model_combo.set_model(DEFAULT_MODEL)
    viewer.window.add_dock_widget(widget, name="Segment nuclei")
    run_and_wait(qtbot, widget, timeout=120000)
    viewer.reset_view()
    viewer.canvas.overlays.scale_bar.visible = True
    qtbot.wait(500)
    out = root / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out / "segment_widget.png"), canvas_only=False)
    # a user edit, then a threshold change: the edit survives
    labels = widget.result_layers[0]
    labels.data_setitem(tuple(np.mgrid[40:80, 40:80].reshape(2, -1)), int(labels.data.max()) + 1)
    viewer.scene.camera.center, viewer.scene.camera.zoom = (45, 60), 5
    first = labels.metadata["nucseg_result"]
    widget.min_area_spin.setValue(400)
    qtbot.waitUntil(lambda: labels.metadata["nucseg_result"] is not first and widget._reapply_worker is None,
                    timeout=60000)
    qtbot.wait(500)
    viewer.screenshot(str(out / "segment_edits_kept.png"), canvas_only=False)
    # a new version appears in the open widget's list (made with the versions API, as fine-tuning does)
    new = versions.export_version(DEFAULT_MODEL, versions.user_models_dir() / "nucseg-default-ft-breast")
    versions.versions_changed.emit()
    qtbot.waitUntil(lambda: str(new.resolve()) in widget.model_combo.model_keys(), timeout=10000)
    widget.model_combo.set_model(new)
    qtbot.wait(500)
    viewer.screenshot(str(out / "segment_new_version.png"), canvas_only=False)


def test_threshold_change_keeps_the_users_edits(make_napari_viewer, qtbot, net):
    """Lost work, before: a threshold change after correcting the labels replaced them with a fresh post-processing.
    Now every nucleus the user painted, erased or changed stays as it is; the rest is re-applied."""
    viewer = make_napari_viewer()
    image, truth = blob_image((200, 260), n=15, seed=2)
    viewer.add_image(image, name="blobs", rgb=True)
    widget = make_widget(viewer)
    run_and_wait(qtbot, widget)
    labels = nuclei_layer(viewer, "blobs")
    first = np.asarray(labels.data).copy()
    areas = np.bincount(first.ravel())
    small = [i for i in range(1, len(areas)) if 0 < areas[i] < 200]
    big = [i for i in range(1, len(areas)) if areas[i] >= 200]
    assert len(small) >= 3 and len(big) >= 2
    kept_small, erased_big = small[0], big[0]
    # the user's corrections, through napari's own editing path (undo history, events)
    labels.data_setitem(np.nonzero(first == erased_big), 0)  # a false positive erased
    new = int(first.max()) + 1
    painted = (slice(2, 12), slice(2, 12))
    assert not first[painted].any()
    labels.data_setitem(tuple(np.mgrid[painted].reshape(2, -1)), new)  # a missed nucleus painted (100 px)
    edited_small = np.nonzero(first == kept_small)
    labels.data_setitem((edited_small[0][:1], edited_small[1][:1]), kept_small)  # unchanged value: not an edit
    labels.data_setitem(np.nonzero(first == small[1]), small[1])
    yy, xx = np.nonzero(first == kept_small)
    labels.data_setitem((yy[:3], xx[:3]), 0)  # a small nucleus trimmed by 3 px
    corrected = np.asarray(labels.data).copy()

    first_result = labels.metadata["nucseg_result"]
    widget.min_area_spin.setValue(200)  # drops nuclei under 200 px: the painted one (100 px) and the trimmed one
    qtbot.waitUntil(lambda: labels.metadata["nucseg_result"] is not first_result and widget._reapply_worker is None,
                    timeout=30000)
    data = np.asarray(labels.data)
    assert np.all(data[painted] == new)  # the painted nucleus survived, though smaller than min area
    assert not data[first == erased_big].any()  # the erased one stays erased
    trimmed = corrected == kept_small
    assert np.array_equal(data == kept_small, trimmed)  # the trimmed one kept exactly as the user left it
    for i in small[1:]:  # untouched small nuclei (small[1] was set to its own value: not an edit) re-applied away
        assert not data[first == i].any()
    for i in big[1:]:
        assert np.array_equal(data[first == i] > 0, np.ones((first == i).sum(), bool))  # the rest still there
    assert "your edits to" in widget.controls.status.text()
    assert labels.metadata["nucseg_edited"][painted].all()

    widget.min_area_spin.setValue(30)  # a second change: the edits are still the user's
    second = labels.metadata["nucseg_result"]
    qtbot.waitUntil(lambda: labels.metadata["nucseg_result"] is not second and widget._reapply_worker is None,
                    timeout=30000)
    data = np.asarray(labels.data)
    assert np.all(data[painted] == new) and not data[first == erased_big].any()
    assert all(data[first == i].all() for i in small[1:])  # the untouched small nuclei are back


def test_keep_user_edits_renumbers_fresh_nuclei_around_the_users():
    from nucseg.jobs.segment import keep_user_edits

    written = np.zeros((10, 10), np.uint32)
    written[0:3, 0:3] = 1
    written[5:8, 5:8] = 2
    current = written.copy()
    current[0:3, 7:10] = 2  # the user painted with an id the program used elsewhere... and
    current[5:8, 5:8] = 0   # erased the program's nucleus 2
    fresh = np.zeros_like(written)
    fresh[0:4, 0:4] = 1     # grown by the new threshold
    fresh[5:9, 5:9] = 2     # comes back where the user erased: stays erased
    merged, mine, kept = keep_user_edits(current, written, None, fresh)
    assert kept == 1 and mine[0:3, 7:10].all() and mine[5:8, 5:8].all()
    assert not merged[5:8, 5:8].any()
    assert np.all(merged[0:3, 7:10] == 2)
    assert np.all(merged[0:4, 0:4] != 2) and np.all(merged[0:4, 0:4] > 0)  # the fresh nucleus got a free id
    unchanged, none, zero = keep_user_edits(written, written, None, fresh)
    assert np.array_equal(unchanged, fresh) and not none.any() and zero == 0


def test_a_typed_pixel_size_equal_to_the_models_counts_as_known(make_napari_viewer, qtbot, net, tmp_path):
    """Honesty, before: a 40x PNG for which the user typed 0.25 um/px was stored as 'unknown' (equal to the model's),
    so its exports had no um columns. Any value the user gives counts; untouched means unknown."""
    import csv

    from qtpy.QtCore import Qt

    from nucseg._napari.writers import write_measurements_csv

    viewer = make_napari_viewer()
    image, _ = blob_image((120, 150), n=6, seed=3)
    untouched = viewer.add_image(image, name="untouched png", rgb=True)
    widget = make_widget(viewer)
    widget.image_combo.set_layer(untouched)
    run_and_wait(qtbot, widget)
    assert nuclei_layer(viewer, "untouched png").metadata["mpp"] is None and "mpp" not in untouched.metadata

    png = viewer.add_image(image, name="40x png", rgb=True)
    widget.image_combo.set_layer(png)
    line = widget.mpp_spin.lineEdit()
    line.selectAll()
    qtbot.keyClicks(line, "0.25")
    qtbot.keyClick(line, Qt.Key.Key_Return)
    run_and_wait(qtbot, widget)
    labels = nuclei_layer(viewer, "40x png")
    assert png.metadata["mpp"] == 0.25 and labels.metadata["mpp"] == 0.25
    assert labels.metadata["nucseg_result"].mpp == 0.25
    (out,) = write_measurements_csv(str(tmp_path / "m.csv"), np.asarray(labels.data), {"metadata": labels.metadata,
                                    "scale": labels.scale, "translate": labels.translate})
    with open(out) as fh:
        header = next(csv.reader(fh))
    assert any("um" in column for column in header), header


def test_model_list_follows_new_renamed_and_deleted_versions(make_napari_viewer, qtbot, net, nucseg_home):
    from nucseg.models import versions

    viewer = make_napari_viewer()
    image, _ = blob_image((120, 150), n=6, seed=3)
    viewer.add_image(image, name="blobs", rgb=True)
    widget = make_widget(viewer)
    combo = widget.model_combo
    assert not [k for k in combo.model_keys() if k.startswith("unet-")]  # untrained: not offered for segmentation
    # made outside this process (e.g. `nucseg finetune` in a terminal): the list's watcher sees it
    outside = fake_model_folder(nucseg_home, "made-in-a-terminal", version=None)
    qtbot.waitUntil(lambda: str(outside.resolve()) in combo.model_keys(), timeout=10000)
    assert combo.findText("made-in-a-terminal (fine-tuned)") >= 0
    # renamed with the versions API while chosen: the list follows it, and a run does not fail
    assert combo.set_model(outside)
    renamed = versions.rename(outside.name, "renamed-version")
    qtbot.waitUntil(lambda: combo.current_model() == str(renamed.resolve()), timeout=10000)
    assert str(outside.resolve()) not in combo.model_keys()
    run_and_wait(qtbot, widget)
    assert "blobs nuclei (renamed-version)" in viewer.layers
    # deleted: reported, and another model chosen (never a silent swap)
    seen: list[str] = []
    combo.model_lost.connect(seen.append)
    versions.delete("renamed-version", confirm=True)
    qtbot.waitUntil(lambda: bool(seen), timeout=10000)
    assert "renamed-version" in seen[0] and combo.current_model() != str(renamed.resolve())


def test_old_predictions_are_cleaned_on_the_stated_policy(tmp_path, monkeypatch, nucseg_home):
    import zarr

    from nucseg.jobs import segment

    root = nucseg_home / "predictions"

    def run(name: str, age_days: float, mb: float = 0.0) -> Path:
        group = zarr.open_group(str(root / name), mode="w")
        group.create_array("labels", shape=(8, 8), dtype="uint32")
        group.create_array("probabilities", shape=(3, 8, 8), dtype="uint8")
        if mb:
            (root / name / "labels" / "pad").write_bytes(b"0" * int(mb * 2**20))
        t = time.time() - age_days * 86400
        os.utime(root / name, (t, t))
        return root / name

    old, recent, shown = run("old.zarr", 30), run("recent.zarr", 1, 2.0), run("shown.zarr", 60)
    newest = run("newest.zarr", 0.5, 2.0)
    session = segment.new_prediction_path("current")
    zarr.open_group(str(session), mode="w").create_array("labels", shape=(1,), dtype="uint8")
    zarr.open_group(str(session), mode="a").create_array("probabilities", shape=(1,), dtype="uint8")
    os.utime(session, (time.time() - 90 * 86400,) * 2)
    other = root / "notes-of-the-user"
    other.mkdir()
    removed = segment.clean_predictions(in_use=[shown], keep_days=14, keep_bytes=3 * 2**20)
    assert set(removed) == {old, recent}  # too old; then the oldest until under the size cap
    assert shown.exists() and newest.exists() and session.exists() and other.exists()


def test_layer_pyramid_reads_regions_as_the_engine_expects():
    """The napari-layer region source: level pixels, white outside; the engine's `RegionSource` where it exists."""
    from nucseg._napari.layer_source import LayerPyramid
    from nucseg.inference.source import best_level

    image, _ = blob_image((64, 80), n=3, seed=1)
    source = LayerPyramid([image, image[::2, ::2]], 0.5)
    assert source.shape == (64, 80) and list(source.downsamples) == [1.0, 2.0] and source.mpp == 0.5
    assert best_level(source, 1.0) == 1 and best_level(source, 0.25) == 0 and best_level(source, 0.96) == 1
    out = source.read_region(1, 30, 35, 4, 10)
    assert np.array_equal(out[:2, :5], image[::2, ::2][30:32, 35:40]) and (out[2:] == 255).all()
    protocol = getattr(__import__("nucseg.inference.source", fromlist=["x"]), "RegionSource", None)
    if protocol is not None:  # the one-engine change (engine helper) defines it
        assert isinstance(source, protocol)
