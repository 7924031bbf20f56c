"""napari writer contributions: round trips of Labels layers through OME-TIFF, zarr, GeoJSON and CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from nucseg._napari import writers


def square_labels():
    labels = np.zeros((60, 80), np.uint32)
    labels[10:20, 20:30] = 7
    labels[30:45, 50:70] = 9
    return labels


ATTRS = {"name": "nuclei", "scale": (0.5, 0.5), "translate": (50.0, 100.0), "metadata": {}, "multiscale": False}


def test_mpp_and_offset_from_attributes():
    import pint

    um, px = pint.get_application_registry()("micrometer").units, pint.get_application_registry()("pixel").units
    assert writers.layer_mpp(ATTRS) is None  # a scale in napari's default units is not a pixel size
    assert writers.layer_mpp({**ATTRS, "units": (px, px)}) is None
    assert writers.layer_mpp({**ATTRS, "units": (um, um)}) == 0.5
    assert writers.layer_mpp({**ATTRS, "units": ("nm", "nm"), "scale": (250.0, 250.0)}) == pytest.approx(0.25)
    assert writers.layer_mpp({**ATTRS, "metadata": {"mpp": 0.25}}) == 0.25
    assert writers.layer_mpp({"scale": (1.0, 1.0), "units": (um, um), "metadata": {}}) == 1.0  # 10x is a size too
    assert writers.layer_mpp({"scale": (0.5, 0.6), "units": (um, um), "metadata": {}}) is None
    assert writers.layer_offset(ATTRS) == (100.0, 200.0)
    assert writers.layer_offset({**ATTRS, "metadata": {"nucseg_region": (7, 8, 60, 80)}}) == (7.0, 8.0)


def test_ome_tiff_round_trip_and_overwrite(tmp_path):
    import tifffile

    labels = square_labels()
    path = str(tmp_path / "nuclei.ome.tif")
    assert writers.write_labels_ome_tiff(path, labels, {**ATTRS, "metadata": {"mpp": 0.5}}) == [path]
    with tifffile.TiffFile(path) as tif:
        assert np.array_equal(tif.asarray(), labels)
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
    assert writers.write_labels_ome_tiff(path, labels * 2, ATTRS) == [path]  # the save dialog asked
    assert np.array_equal(tifffile.imread(path), labels * 2)


def test_multiscale_layers_write_their_finest_level(tmp_path):
    import dask.array as da
    import zarr

    labels = square_labels()
    levels = [da.from_array(labels, chunks=32), da.from_array(labels[::2, ::2], chunks=32)]
    path = str(tmp_path / "nuclei.zarr")
    assert writers.write_labels_zarr(path, levels, {**ATTRS, "multiscale": True, "metadata": {"mpp": 0.25}}) == [path]
    group = zarr.open_group(path, mode="r")
    assert np.array_equal(group["0"][:], labels) and group.attrs["nucseg"]["mpp"] == 0.25
    assert group.attrs["ome"]["multiscales"][0]["axes"][0]["unit"] == "micrometer"


def test_geojson_is_in_full_resolution_pixels(tmp_path):
    path = str(tmp_path / "nuclei.geojson")
    writers.write_geojson(path, square_labels(), ATTRS)
    features = json.loads((tmp_path / "nuclei.geojson").read_text())["features"]
    assert sorted(f["properties"]["nucseg_id"] for f in features) == [7, 9]
    ring = np.array(next(f for f in features if f["properties"]["nucseg_id"] == 7)["geometry"]["coordinates"][0])
    # pixels y 10..19, x 20..29 of a map whose origin is (100, 200) full-resolution pixels
    assert ring[:, 0].min() >= 220 and ring[:, 0].max() <= 230
    assert ring[:, 1].min() >= 110 and ring[:, 1].max() <= 120


def test_measurements_csv(tmp_path):
    path = str(tmp_path / "nuclei.csv")
    writers.write_measurements_csv(path, square_labels(), {**ATTRS, "metadata": {"mpp": 0.5}})
    with open(path) as fh:
        rows = {int(r["id"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {7, 9}
    assert float(rows[7]["area_px"]) == 100 and float(rows[7]["area_um2"]) == pytest.approx(25.0)
    assert float(rows[7]["centroid_x"]) == pytest.approx(200 + 25) and float(rows[7]["centroid_y"]) == pytest.approx(115)
    writers.write_measurements_csv(path, square_labels(), ATTRS)  # no pixel size: pixels only, and it says so
    with open(path) as fh:
        row = next(csv.DictReader(fh))
    assert "area_um2" not in row and row["mpp"] == ""


def he_image(shape=(60, 80)):
    image = np.zeros((*shape, 3), np.uint8)
    image[...] = (230, 200, 220)
    return image


def read_rows(path):
    with open(path) as fh:
        return {int(r["id"]): r for r in csv.DictReader(fh)}


@pytest.mark.gui
def test_csv_from_napari_has_the_h_and_e_columns_of_the_image_under_the_labels(make_napari_viewer, tmp_path):
    """The writer gets only the labels: it finds the image they were segmented from (named in the labels'
    metadata, or the one RGB layer they overlay) and measures its pixels under each nucleus."""
    viewer = make_napari_viewer()
    image = he_image((100, 140))
    image[40:50, 70:80] = (80, 40, 150)  # nucleus 7 of a region at (30, 50): rows 10..19, columns 20..29
    viewer.add_image(image, name="tile", rgb=True, metadata={"mpp": 0.5})
    viewer.add_image(he_image((100, 140)) // 2, name="other", rgb=True, visible=False)
    labels = viewer.add_labels(square_labels(), name="tile nuclei", translate=(30, 50),
                               metadata={"mpp": 0.5, "nucseg_region": (30, 50, 60, 80), writers.IMAGE_KEY: "tile"})
    path = tmp_path / "n.csv"
    labels.save(str(path), plugin="napari-nucseg")
    rows = read_rows(path)
    assert (float(rows[7]["mean_r"]), float(rows[7]["mean_g"]), float(rows[7]["mean_b"])) == (80, 40, 150)
    assert float(rows[9]["mean_r"]) == 230 and float(rows[7]["centroid_x"]) == pytest.approx(50 + 25)
    del labels.metadata[writers.IMAGE_KEY]  # no name: the labels' name starts with the image's
    labels.save(str(path), plugin="napari-nucseg")
    assert float(read_rows(path)[7]["mean_b"]) == 150
    viewer.layers.remove("other")
    labels.name = "edited"  # one image left under the labels: that one
    geo = tmp_path / "n.geojson"
    labels.save(str(geo), plugin="napari-nucseg")
    features = {f["properties"]["nucseg_id"]: f for f in json.loads(geo.read_text())["features"]}
    assert features[7]["properties"]["measurements"]["mean_b"] == 150


@pytest.mark.gui
def test_csv_from_the_image_file_when_its_layer_is_gone(make_napari_viewer, tmp_path):
    from PIL import Image

    make_napari_viewer()
    image = he_image((100, 120))
    image[10:20, 20:30] = (80, 40, 150)
    Image.fromarray(image).save(tmp_path / "tile.png")
    attrs = {**ATTRS, "translate": (0.0, 0.0), "scale": (1.0, 1.0), "name": "tile nuclei",
             "metadata": {"nucseg_region": (0, 0, 60, 80), writers.IMAGE_KEY: {"name": "tile",
                                                                                "path": str(tmp_path / "tile.png")}}}
    writers.write_measurements_csv(str(tmp_path / "n.csv"), square_labels(), attrs)
    assert float(read_rows(tmp_path / "n.csv")[7]["mean_g"]) == 40
    attrs["metadata"] = {}
    writers.write_measurements_csv(str(tmp_path / "bare.csv"), square_labels(), attrs)  # nothing to measure
    assert "mean_r" not in read_rows(tmp_path / "bare.csv")[7]


@pytest.mark.gui
def test_napari_saves_through_the_manifest(make_napari_viewer, tmp_path):
    import tifffile

    viewer = make_napari_viewer()
    layer = viewer.add_labels(square_labels(), name="nuclei", scale=(0.5, 0.5), metadata={"mpp": 0.5})
    written = viewer.layers.save(str(tmp_path / "saved.ome.tif"), selected=False, plugin="napari-nucseg")
    assert written == [str(tmp_path / "saved.ome.tif")]
    assert np.array_equal(tifffile.imread(written[0]), layer.data)
    geo = tmp_path / "saved.geojson"
    layer.save(str(geo), plugin="napari-nucseg")
    assert len(json.loads(geo.read_text())["features"]) == 2


@pytest.mark.gui
def test_csv_of_multiscale_labels_over_a_multiscale_slide(make_napari_viewer, tmp_path):
    import dask.array as da

    viewer = make_napari_viewer()
    image = he_image((200, 240))
    image[110:120, 140:150] = (80, 40, 150)  # under nucleus 7 of labels placed at (100, 120)
    viewer.add_image([da.from_array(image, chunks=64), da.from_array(image[::2, ::2], chunks=64)], name="slide",
                     rgb=True, multiscale=True, scale=(0.5, 0.5), metadata={"mpp": 0.5})
    labels = square_labels()
    layer = viewer.add_labels([da.from_array(labels, chunks=32), da.from_array(labels[::2, ::2], chunks=32)],
                              name="slide nuclei", multiscale=True, scale=(0.5, 0.5), translate=(50.0, 60.0),
                              metadata={"mpp": 0.5, "nucseg_region": (100, 120, 60, 80)})
    path = tmp_path / "n.csv"
    layer.save(str(path), plugin="napari-nucseg")
    rows = read_rows(path)
    assert float(rows[7]["mean_b"]) == 150 and float(rows[9]["mean_b"]) == 220
    assert float(rows[7]["area_um2"]) == pytest.approx(25.0) and float(rows[7]["centroid_x"]) == pytest.approx(145)


@pytest.mark.gui
def test_segment_widget_labels_name_their_image_for_the_csv(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """A result's labels carry `nucseg_image`, so the CSV measures the image they came from even when two
    images of the same size lie under them and the user renamed the labels layer."""
    from test_widget_segment import fake_model_folder, make_widget, run_and_wait

    from fake_models import BlobNet, blob_image
    from nucseg.models import build

    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path / "home"))
    fake_model_folder(tmp_path / "home")
    model = BlobNet().eval()
    monkeypatch.setattr(build, "load_network", lambda spec, device="cpu", runtime="auto": model)
    viewer = make_napari_viewer()
    image, truth = blob_image((200, 260), n=15, seed=2)
    viewer.add_image(image, name="blobs", rgb=True)
    viewer.add_image(np.full_like(image, 255), name="white", rgb=True)
    viewer.layers.selection.active = viewer.layers["blobs"]
    widget = make_widget(viewer)
    run_and_wait(qtbot, widget)
    labels = next(layer for layer in viewer.layers if layer._type_string == "labels")
    assert labels.metadata[writers.IMAGE_KEY]["name"] == "blobs"
    labels.name = "my nuclei"
    labels.save(str(tmp_path / "n.csv"), plugin="napari-nucseg")
    rows = read_rows(tmp_path / "n.csv")
    assert len(rows) == truth.max()
    mask = np.asarray(labels.data) == next(iter(rows))
    assert float(rows[next(iter(rows))]["mean_r"]) == pytest.approx(image[mask][:, 0].mean(), rel=1e-4)


def test_attributes_given_as_arrays(tmp_path):
    """napari layers hold scale and translate as numpy arrays; callers pass them on as they are."""
    attrs = {"metadata": {"mpp": 0.5}, "scale": np.array([0.5, 0.5]), "translate": np.array([50.0, 100.0])}
    assert writers.layer_offset(attrs) == (100.0, 200.0)
    (out,) = writers.write_measurements_csv(str(tmp_path / "n.csv"), square_labels(), attrs)
    assert float(read_rows(out)[7]["area_um2"]) == pytest.approx(25.0)
