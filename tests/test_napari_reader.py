"""The napari reader hook and sample data: layer tuples without a viewer, then through napari itself."""

from __future__ import annotations

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
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOT)
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
