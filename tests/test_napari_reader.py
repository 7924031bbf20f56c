"""The napari reader hook and sample data: layer tuples without a viewer, then through napari itself."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucseg._napari.reader import get_reader, read_slides
from nucseg._napari.sample_data import make_sample_data
from nucseg.errors import SlideReadError

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "screenshots" / "reader_small_HE.png"


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ without a viewer


def test_get_reader_claims_only_what_it_reads(tmp_path):
    Image.fromarray(rgb(8, 8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "out.zarr").mkdir()
    (tmp_path / "out.zarr" / "x.png").write_bytes(b"")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "out.zarr")) is None  # napari's own zarr reader takes it
    assert get_reader([str(tmp_path / "a.png"), str(tmp_path / "notes.txt")]) is None
    assert callable(get_reader(str(tmp_path / "a.png")))
    assert callable(get_reader([str(tmp_path / "a.png")]))
    assert callable(get_reader(str(tmp_path)))  # a folder of tiles


def test_png_tile_layer(tmp_path):
    image = rgb(30, 40)
    Image.fromarray(image).save(tmp_path / "tile one.png")
    [(data, kwargs, kind)] = get_reader(str(tmp_path / "tile one.png"))(str(tmp_path / "tile one.png"))
    assert kind == "image" and kwargs["rgb"] is True and kwargs["multiscale"] is False
    assert kwargs["name"] == "tile one" and "scale" not in kwargs  # mpp unknown: napari's default pixel scale
    meta = kwargs["metadata"]
    assert (meta["nucseg_path"], meta["mpp"], meta["format"], meta["reader"]) == (
        str(tmp_path / "tile one.png"), None, "png", "pillow")
    assert "units" not in kwargs  # pixels
    np.testing.assert_array_equal(np.asarray(data), image)


def test_pyramid_layer_and_folder(tmp_path):
    base = rgb(512, 384, seed=1)
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(base, subifds=2, tile=(128, 128), photometric="rgb",
                  metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        for step in (2, 4):
            tif.write(np.ascontiguousarray(base[::step, ::step]), subfiletype=1, tile=(128, 128), photometric="rgb")
    Image.fromarray(rgb(20, 20)).save(tmp_path / "b.png")
    layers = get_reader(str(tmp_path))(str(tmp_path))
    assert [kw["name"] for _, kw, _ in layers] == ["b", "slide"]  # one layer per file, sorted by name
    data, kwargs, _ = layers[1]
    assert kwargs["multiscale"] is True and kwargs["scale"] == (0.5, 0.5) and kwargs["rgb"] is True
    assert [d.shape for d in data] == [(512, 384, 3), (256, 192, 3), (128, 96, 3)]
    assert type(data[0]).__module__.startswith("dask")
    np.testing.assert_array_equal(np.asarray(data[2]), base[::4, ::4])
    assert kwargs["metadata"]["format"] == "ome-tiff" and kwargs["metadata"]["mpp"] == 0.5


def test_big_single_level_gets_display_levels(tmp_path, monkeypatch):
    from nucseg._napari import reader

    monkeypatch.setattr(reader, "DISPLAY_LEVEL_SIZE", 100)
    tifffile.imwrite(tmp_path / "flat.tif", rgb(300, 200), tile=(64, 64), photometric="rgb")
    [(data, kwargs, _)] = read_slides(str(tmp_path / "flat.tif"))
    assert kwargs["multiscale"] is True and [d.shape[:2] for d in data] == [(300, 200), (150, 100), (75, 50)]


def test_broken_file_raises_from_the_reader_function(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_text("not a tiff")
    read = get_reader(str(path))
    assert callable(read)  # claimed by suffix ...
    with pytest.raises(SlideReadError) as err:  # ... and refused with a clear message when read
        read(str(path))
    assert "broken.tif" in str(err.value) and "\n" not in str(err.value)


def test_sample_data_tuples():
    (image, ikw, ikind), (labels, lkw, lkind) = make_sample_data()
    assert ikind == "image" and lkind == "labels"
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8 and labels.shape == (512, 512)
    assert ikw["name"] == "H&E breast (MoNuSeg)" and ikw["rgb"] is True and ikw["scale"] == (0.25, 0.25)
    assert lkw["name"] == "ground truth" and lkw["scale"] == (0.25, 0.25) and lkw["opacity"] == 0.5
    assert ikw["metadata"]["mpp"] == 0.25 and labels.max() == 139


def discs(shape=(200, 240), n=12, seed=0) -> np.ndarray:
    """Instance labels: n discs with ids 1..n on background 0."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i in range(1, n + 1):
        cy, cx = rng.integers(15, shape[0] - 15), rng.integers(15, shape[1] - 15)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = i * 7  # ids need not be consecutive
    return labels


def test_label_pngs_and_tiffs_open_as_labels_and_images_stay_images(tmp_path):
    truth = discs()
    Image.fromarray(truth).save(tmp_path / "truth.png")  # uint16 instance PNG, as MoNuSeg's
    Image.fromarray(((truth > 0) * 255).astype(np.uint8)).save(tmp_path / "mask.png")  # a 0 / 255 mask
    tifffile.imwrite(tmp_path / "truth.tif", truth.astype(np.uint32))
    Image.fromarray(rgb(60, 80)).save(tmp_path / "tile.png")
    grey = np.random.default_rng(1).integers(0, 256, (60, 80), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")  # a grey photo: noise, no flat regions
    camera = (np.random.default_rng(2).normal(900, 40, (64, 64))).astype(np.uint16)
    tifffile.imwrite(tmp_path / "camera.tif", camera)  # a 16-bit camera frame: an image, not labels
    kinds = {}
    for name in ("truth.png", "mask.png", "truth.tif", "tile.png", "grey.png", "camera.tif"):
        [(data, kwargs, kind)] = get_reader(str(tmp_path / name))(str(tmp_path / name))
        kinds[name] = kind
        if kind == "labels":
            assert "rgb" not in kwargs and kwargs["name"] in (name.split(".")[0], name.split(".")[0] + " labels")
            assert kwargs["metadata"]["nucseg_path"] == str(tmp_path / name) and "scale" not in kwargs
    assert kinds == {"truth.png": "labels", "mask.png": "labels", "truth.tif": "labels", "tile.png": "image",
                     "grey.png": "image", "camera.tif": "image"}
    [(data, _, _)] = read_slides(str(tmp_path / "truth.png"))
    np.testing.assert_array_equal(np.asarray(data), truth)  # the ids as they are
    [(mask, _, _)] = read_slides(str(tmp_path / "mask.png"))
    from scipy import ndimage as ndi

    assert np.asarray(mask).max() == ndi.label(truth > 0)[1] > 5  # a mask: one id per connected blob
    [(tif, _, _)] = read_slides(str(tmp_path / "truth.tif"))
    np.testing.assert_array_equal(np.asarray(tif), truth)


@pytest.mark.shared_data
def test_monuseg_truth_png_is_labels(shared_data):
    from nucseg.io.masks import read_labels

    path = sorted((shared_data / "monuseg-train" / "labels").glob("*.png"))[0]
    [(data, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "labels"
    np.testing.assert_array_equal(np.asarray(data), read_labels(path))


def test_exported_labels_open_as_labels_with_their_scale(tmp_path):
    from nucseg.io import export

    truth = discs((300, 260)).astype(np.uint32)
    export.write_labels_ome_tiff(truth, tmp_path / "nuclei.ome.tif", mpp=0.5, pyramid=True, tile=128)
    export.write_labels_zarr(truth, tmp_path / "nuclei.zarr", mpp=0.25)
    assert callable(get_reader(str(tmp_path / "nuclei.zarr")))  # our zarr: ours, not napari's image reader
    [(levels, kwargs, kind)] = read_slides(str(tmp_path / "nuclei.ome.tif"))
    assert kind == "labels" and kwargs["multiscale"] is True and len(levels) >= 2
    assert kwargs["scale"] == (0.5, 0.5) and kwargs["units"] == ("micrometer", "micrometer")
    np.testing.assert_array_equal(np.asarray(levels[0]), truth)
    np.testing.assert_array_equal(np.asarray(levels[1]), truth[::2, ::2])
    [(data, kwargs, kind)] = read_slides(str(tmp_path / "nuclei.zarr"))
    assert kind == "labels" and kwargs["scale"] == (0.25, 0.25) and kwargs["units"] == ("micrometer", "micrometer")
    first = data[0] if kwargs["multiscale"] else data
    np.testing.assert_array_equal(np.asarray(first), truth)


def test_ome_ngff_label_image_opens_multiscale(tmp_path):
    import zarr

    truth = discs((256, 256)).astype(np.uint32)
    root = zarr.open_group(str(tmp_path / "seg.zarr"), mode="w", zarr_format=3)
    for level, step in enumerate((1, 2)):
        root.create_array(str(level), data=np.ascontiguousarray(truth[::step, ::step]), chunks=(64, 64))
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    datasets = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [0.3 * s, 0.3 * s]}]}
                for i, s in enumerate((1, 2))]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets, "name": "x"}],
                         "image-label": {"version": "0.5"}}
    [(levels, kwargs, kind)] = get_reader(str(tmp_path / "seg.zarr"))(str(tmp_path / "seg.zarr"))
    assert kind == "labels" and kwargs["multiscale"] is True and kwargs["scale"] == (0.3, 0.3)
    np.testing.assert_array_equal(np.asarray(levels[1]), truth[::2, ::2])
    (tmp_path / "image.zarr").mkdir()
    zarr.open_group(str(tmp_path / "image.zarr"), mode="w", zarr_format=3).attrs["ome"] = {"multiscales": []}
    assert get_reader(str(tmp_path / "image.zarr")) is None  # an NGFF image is not ours to claim


@pytest.mark.shared_data
def test_dicom_folder_and_ndpi_layers(shared_data):
    formats = shared_data / "slides" / "formats"
    folder = formats / "dicom_cmu1_small_region"
    read = get_reader(str(folder))
    assert callable(read)
    [(data, kwargs, kind)] = read(str(folder))  # one slide, not four files
    assert kind == "image" and kwargs["name"] == "dicom_cmu1_small_region" and kwargs["multiscale"] is True
    assert kwargs["scale"] == (0.499, 0.499) and kwargs["units"] == ("micrometer", "micrometer")
    assert tuple(data[0].shape) == (2967, 2220, 3) and kwargs["metadata"]["reader"] == "wsidicom"
    assert kwargs["metadata"]["associated"] == ["label", "macro", "thumbnail"]
    one = sorted(folder.glob("*.dcm"))[0]
    assert callable(get_reader(str(one)))
    ndpi = formats / "hamamatsu_dapi_fluorescence.ndpi"
    with pytest.warns(UserWarning, match="fluorescence"):
        [(levels, kwargs, kind)] = get_reader(str(ndpi))(str(ndpi))
    assert kind == "image" and len(levels) == 7 and kwargs["scale"] == pytest.approx((0.228175, 0.228175))
    assert kwargs["metadata"]["modality"] == "fluorescence" and kwargs["units"] == ("micrometer", "micrometer")


# ------------------------------------------------------------------------------------------ in napari


@pytest.mark.gui
@pytest.mark.shared_data
def test_open_small_he_in_napari(make_napari_viewer, shared_data, tmp_path):
    path = shared_data / "slides" / "small_HE.svs"
    viewer = make_napari_viewer(show=True)
    [layer] = viewer.open(str(path), plugin="napari-nucseg")
    assert layer.name == "small_HE" and layer.rgb and layer.multiscale
    assert tuple(layer.data[0].shape) == (2967, 2220, 3)
    np.testing.assert_allclose(layer.scale, (0.499, 0.499))
    assert layer.metadata["mpp"] == pytest.approx(0.499) and layer.metadata["nucseg_path"] == str(path)
    viewer.reset_view()
    shot = tmp_path / "reader_small_HE.png"
    pixels = viewer.screenshot(str(shot), canvas_only=True)
    refresh_docs(shot, SCREENSHOT.name)
    # tissue is pink / purple: the screenshot must not be one flat colour
    assert pixels.shape[-1] == 4 and pixels[..., :3].std() > 10


@pytest.mark.gui
@pytest.mark.shared_data
def test_broken_slide_in_napari_raises_our_error(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    path = shared_data / "slides" / "broken" / "unreadable.svs"
    with pytest.raises(Exception) as err:  # napari may wrap it in its ReaderPluginError
        viewer.open(str(path), plugin="napari-nucseg")
    chain = [err.value, err.value.__cause__]
    assert any(isinstance(e, SlideReadError) for e in chain) or "SlideReadError" in str(err.value)
    assert "unreadable.svs" in str(err.value)
    assert len(viewer.layers) == 0


@pytest.mark.gui
def test_sample_data_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-nucseg", "he_breast")
    assert [layer.name for layer in layers] == ["H&E breast (MoNuSeg)", "ground truth"]
    image, labels = layers
    assert image.rgb and tuple(image.scale) == (0.25, 0.25) and tuple(labels.scale) == (0.25, 0.25)
    assert labels.data.max() == 139


def _drop(viewer, path: Path) -> None:
    """Drop `path` on the canvas as a file manager would (napari's drag-and-drop handler)."""
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    viewer.window._qt_viewer.dropEvent(event)


def refresh_docs(shot: Path, name: str) -> None:
    """Copy a screenshot into docs/screenshots/ on request only (NUCSEG_SCREENSHOTS=1, like the widgets'), so a
    test run never changes tracked files."""
    if os.environ.get("NUCSEG_SCREENSHOTS"):
        (ROOT / "docs" / "screenshots").mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ROOT / "docs" / "screenshots" / name)


def _shot(viewer, tmp_path: Path, name: str) -> np.ndarray:
    viewer.window._qt_window.resize(1300, 760)
    bar = viewer.canvas.overlays.scale_bar if hasattr(viewer, "canvas") else viewer.scale_bar  # napari >= 0.9
    bar.visible = True
    bar.font_size = 14
    bar.position = "bottom_left"  # the label can overflow its bar to the right without clipping
    viewer.reset_view()
    shot = tmp_path / name
    pixels = viewer.screenshot(str(shot), canvas_only=False)
    refresh_docs(shot, name)
    return pixels


@pytest.mark.gui
@pytest.mark.shared_data
def test_dicom_folder_dropped_on_napari_reads_in_um(make_napari_viewer, shared_data, tmp_path, monkeypatch):
    from napari.settings import get_settings

    folder = shared_data / "slides" / "formats" / "dicom_cmu1_small_region"
    viewer = make_napari_viewer(show=True)
    # napari asks which reader to use when several accept a folder; this is the answer "napari-nucseg, remember"
    monkeypatch.setitem(get_settings().plugins.extension2reader, "*/", "napari-nucseg")
    _drop(viewer, folder)
    [layer] = viewer.layers
    assert layer.name == "dicom_cmu1_small_region" and layer.rgb and layer.multiscale
    assert tuple(layer.data[0].shape) == (2967, 2220, 3)
    np.testing.assert_allclose(layer.scale, (0.499, 0.499))
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert [str(u) for u in viewer.layers.units] == ["micrometer", "micrometer"]  # what the scale bar shows
    pixels = _shot(viewer, tmp_path, "reader_dicom_folder.png")
    assert pixels[..., :3].std() > 10
    viewer.layers.clear()
    [again] = viewer.open(str(folder), plugin="napari-nucseg")  # File > Open Folder
    assert again.name == "dicom_cmu1_small_region"


@pytest.mark.gui
@pytest.mark.shared_data
def test_ndpi_in_napari_in_um(make_napari_viewer, shared_data, tmp_path):
    path = shared_data / "slides" / "formats" / "hamamatsu_dapi_fluorescence.ndpi"
    viewer = make_napari_viewer(show=True)
    with pytest.warns(UserWarning, match="fluorescence"):
        [layer] = viewer.open(str(path), plugin="napari-nucseg")
    assert layer.multiscale and len(layer.data) == 7 and tuple(layer.data[0].shape) == (4864, 3968, 3)
    np.testing.assert_allclose(layer.scale, (0.228175, 0.228175), rtol=1e-5)
    assert [str(u) for u in viewer.layers.units] == ["micrometer", "micrometer"]
    pixels = _shot(viewer, tmp_path, "reader_ndpi_fluorescence.png")
    assert pixels[..., 2].max() > 100  # blue DAPI nuclei


@pytest.mark.gui
@pytest.mark.shared_data
def test_truth_png_opens_as_labels_in_napari(make_napari_viewer, shared_data, tmp_path):
    images = sorted((shared_data / "monuseg-train" / "images").glob("*.png"))
    image_path = images[0]
    truth_path = shared_data / "monuseg-train" / "labels" / image_path.name
    viewer = make_napari_viewer(show=True)
    [image] = viewer.open(str(image_path), plugin="napari-nucseg")
    [truth] = viewer.open(str(truth_path), plugin="napari-nucseg")
    assert type(image).__name__ == "Image" and type(truth).__name__ == "Labels"
    assert truth.data.dtype.kind == "u" and truth.data.max() > 100 and truth.data.shape == image.data.shape[:2]
    assert truth.name == f"{image.name} labels"
    pixels = _shot(viewer, tmp_path, "reader_truth_as_labels.png")
    assert pixels[..., :3].std() > 10


@pytest.mark.gui
@pytest.mark.shared_data
def test_label_and_macro_on_request(make_napari_viewer, shared_data, tmp_path, qtbot):
    from nucseg._napari.slide_images import SlideImagesWidget
    from nucseg.io.slides import open_slide

    viewer = make_napari_viewer(show=True)
    widget = SlideImagesWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Slide label and macro")
    assert widget.slide_box.count() == 0
    folder = shared_data / "slides" / "formats" / "dicom_cmu1_small_region"
    [layer] = viewer.open(str(folder), plugin="napari-nucseg")
    assert len(viewer.layers) == 1  # the associated images are not layers
    assert widget.slide_box.currentText() == layer.name
    assert [widget.image_box.itemText(i) for i in range(widget.image_box.count())] == ["label", "macro", "thumbnail"]
    widget.image_box.setCurrentText("macro")
    with open_slide(folder) as slide:
        np.testing.assert_array_equal(widget.read(), slide.read_associated("macro"))
    assert widget.caption.text() == "macro: 1280 x 431 px (width x height)"
    assert widget.picture.pixmap().width() == 320
    widget.image_box.setCurrentText("label")
    viewer.window._qt_window.resize(1300, 760)
    viewer.reset_view()
    qtbot.wait(100)  # let Qt lay out and paint the picture
    viewer.screenshot(str(tmp_path / "s.png"), canvas_only=False)
    refresh_docs(tmp_path / "s.png", "reader_slide_label.png")
    viewer.layers.clear()
    assert widget.slide_box.count() == 0 and widget.caption.text() == ""
