"""The Segment widget with a deterministic fake network: results, stop, live thresholds, regions, slides, errors."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fake_models import BlobNet, blob_image
from nucseg.config import PostprocessConfig
from nucseg.inference.predict import reapply_postprocess

pytestmark = pytest.mark.gui

MODEL = "unet-efficientnet-b0"  # architecture only: the network is replaced by BlobNet


class CountingNet(BlobNet):
    """BlobNet that counts forward calls and can sleep in each, like a real CPU model."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.calls = 0
        self.delay = delay
        self.lock = threading.Lock()

    def forward(self, x):
        with self.lock:
            self.calls += 1
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
    widget.model_combo.setCurrentText(MODEL)
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
    labels = viewer.layers["blobs nuclei"]
    assert labels.data.shape == truth.shape and labels.data.max() == truth.max()
    assert str(labels.units[0]) == str(viewer.layers["blobs"].units[0])
    assert same_partition(np.asarray(labels.data), truth)
    assert tuple(labels.scale) == (0.5, 0.5) and tuple(labels.translate) == (3, 4)
    assert labels.contour == 2
    assert "mpp" not in viewer.layers["blobs"].metadata  # pixel size left at the model's: not claimed as known
    meta = labels.metadata
    assert meta["nucseg_result"].n_nuclei == truth.max() and meta["nucseg_config"]["model"] == MODEL
    prob = viewer.layers["blobs foreground probability"]
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
    assert widget.mpp_spin.isEnabled() and widget.mpp_spin.value() == 0.25 and "not in the file" in widget.mpp_note.text()
    widget.mpp_spin.setValue(0.5)
    run_and_wait(qtbot, widget)
    labels = viewer.layers["20x jpg nuclei"]
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
    assert "big nuclei" not in [layer.name for layer in viewer.layers]  # nothing finished, nothing shown
    assert widget.run_button.isEnabled() and not widget.controls.stop_button.isEnabled()


def test_thresholds_reapply_without_the_network(make_napari_viewer, qtbot, net):
    viewer = make_napari_viewer()
    image, truth = blob_image((200, 260), n=15, seed=2)
    viewer.add_image(image, name="blobs", rgb=True)
    widget = make_widget(viewer)
    run_and_wait(qtbot, widget)
    labels = viewer.layers["blobs nuclei"]
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
    labels = viewer.layers["blobs nuclei"]
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
    from nucseg._napari.layers import ImageInput
    from nucseg._napari.segment_widget import streams_to_disk

    def flat(shape, mpp=None, multiscale=False):
        return ImageInput("x", None, multiscale, mpp, None, shape)

    assert streams_to_disk(flat((100, 100), multiscale=True), None, 2048, 0.25)  # slides always
    assert not streams_to_disk(flat((2000, 2000)), None, 2048, 0.25)
    assert streams_to_disk(flat((2000, 2000), mpp=0.5), None, 2048, 0.25)  # 4000 px square at the model's 40x
    assert streams_to_disk(flat((3000, 3000)), None, 2048, 0.25)
    assert not streams_to_disk(flat((3000, 3000)), (0, 0, 1000, 1000), 2048, 0.25)  # a region of it: in memory


def test_big_flat_image_at_20x_streams_into_zarr(make_napari_viewer, qtbot, net, tmp_path, monkeypatch):
    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path))
    viewer = make_napari_viewer()
    image, truth = blob_image((1100, 1100), n=60, seed=8, radius=(5, 8))
    viewer.add_image(image, name="big tile", rgb=True, metadata={"mpp": 0.5})  # 2200 px square at 0.25 um/px
    widget = make_widget(viewer, tile=512, overlap=64)
    run_and_wait(qtbot, widget, timeout=120000)
    labels = viewer.layers["big tile nuclei"]
    assert not isinstance(labels.metadata["nucseg_result"].labels, np.ndarray)  # zarr, not memory
    assert len(list((tmp_path / "predictions").glob("big_tile-*.zarr"))) == 1
    data = labels.data[0] if labels.multiscale else labels.data
    assert data.shape == truth.shape and 0.9 * truth.max() <= np.asarray(data).max() <= 1.1 * truth.max()


def test_multiscale_slide_streams_into_zarr(make_napari_viewer, qtbot, net, tmp_path, monkeypatch):
    from nucseg._napari import layers as layer_helpers

    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path))
    monkeypatch.setattr(layer_helpers, "PYRAMID_MIN_SIZE", 128)
    viewer = make_napari_viewer()
    image, truth = blob_image((256, 320), n=20, seed=6)
    viewer.add_image([image, image[::2, ::2]], name="slide", rgb=True, multiscale=True, metadata={"mpp": 0.25})
    widget = make_widget(viewer)
    run_and_wait(qtbot, widget)
    labels = viewer.layers["slide nuclei"]
    assert labels.multiscale and len(labels.data) == 2
    assert labels.data[0].shape == truth.shape and labels.data[1].shape == (128, 160)
    assert same_partition(np.asarray(labels.data[0]), truth)
    folders = list((tmp_path / "predictions").glob("slide-*.zarr"))
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
    assert widget.run_button.isEnabled() and "blobs nuclei" not in [layer.name for layer in viewer.layers]
    assert widget.add_model_folder("/nonexistent/model") is False


SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides" / "small_HE.svs"


@pytest.mark.shared_data
@pytest.mark.skipif(not SLIDE.is_file(), reason="needs ../shared/data/slides/small_HE.svs")
def test_field_of_view_of_a_real_slide(make_napari_viewer, qtbot, net, tmp_path, monkeypatch):
    """An SVS opened by the plugin's reader, segmented in the visible region: labels in zarr, aligned."""
    from nucseg._napari.segment_widget import FIELD_OF_VIEW

    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path))
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
    labels = viewer.layers[f"{image.name} nuclei"]
    assert labels.metadata["nucseg_region"] == region and abs(region[0] + region[2] / 2 - 1000) <= 1
    assert np.allclose(labels.translate, (region[0] * mpp, region[1] * mpp)) and np.allclose(labels.scale, mpp)
    assert labels.metadata["mpp"] == pytest.approx(mpp)
    assert len(list((tmp_path / "predictions").glob("small_HE-*.zarr"))) == 1


@pytest.mark.skipif(not os.environ.get("NUCSEG_SCREENSHOTS"), reason="set NUCSEG_SCREENSHOTS=1 to refresh docs/")
def test_screenshot_segment_widget(make_napari_viewer, qtbot):
    """docs/screenshots/segment_widget.png: the sample H&E tile segmented by the shipped default model."""
    from PIL import Image as PILImage

    from nucseg.models.registry import DEFAULT_MODEL, shipped_models

    if DEFAULT_MODEL not in shipped_models():
        pytest.skip("no default model shipped")

    root = Path(__file__).resolve().parents[1]
    image = np.asarray(PILImage.open(root / "sample_data" / "he_breast_monuseg.png").convert("RGB"))
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.add_image(image, name="H&E breast (MoNuSeg)", rgb=True, scale=(0.25, 0.25), units="um",
                     metadata={"mpp": 0.25})
    widget = make_widget(viewer, tile=512, overlap=64)
    widget.model_combo.setCurrentText(DEFAULT_MODEL)
    viewer.window.add_dock_widget(widget, name="Segment nuclei")
    run_and_wait(qtbot, widget, timeout=120000)
    viewer.reset_view()
    viewer.canvas.overlays.scale_bar.visible = True
    qtbot.wait(500)
    out = root / "docs" / "screenshots" / "segment_widget.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    assert out.stat().st_size > 10000
