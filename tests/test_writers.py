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
    assert writers.layer_mpp(ATTRS) == 0.5
    assert writers.layer_mpp({**ATTRS, "metadata": {"mpp": 0.25}}) == 0.25
    assert writers.layer_mpp({"scale": (1.0, 1.0), "metadata": {}}) is None
    assert writers.layer_mpp({"scale": (0.5, 0.6), "metadata": {}}) is None
    assert writers.layer_offset(ATTRS) == (100.0, 200.0)
    assert writers.layer_offset({**ATTRS, "metadata": {"nucseg_region": (7, 8, 60, 80)}}) == (7.0, 8.0)


def test_ome_tiff_round_trip_and_overwrite(tmp_path):
    import tifffile

    labels = square_labels()
    path = str(tmp_path / "nuclei.ome.tif")
    assert writers.write_labels_ome_tiff(path, labels, ATTRS) == [path]
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
    array = zarr.open_array(path, mode="r")
    assert np.array_equal(array[:], labels) and array.attrs["mpp"] == 0.25


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
    writers.write_measurements_csv(path, square_labels(), ATTRS)
    with open(path) as fh:
        rows = {int(r["id"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {7, 9}
    assert float(rows[7]["area_px"]) == 100 and float(rows[7]["area_um2"]) == pytest.approx(25.0)
    assert float(rows[7]["centroid_x"]) == pytest.approx(200 + 25) and float(rows[7]["centroid_y"]) == pytest.approx(115)


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
