"""Exports: QuPath GeoJSON geometry and structure, measurements CSV, OME-TIFF and zarr round trips, no-overwrite."""

import csv
import functools
import json
import uuid

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage as ndi

from nucseg.errors import InvalidInputError, StoreError
from nucseg.io import export
from nucseg.io.export import (
    iter_label_chunks,
    labels_to_geojson,
    measure_nuclei,
    write_geojson,
    write_labels_ome_tiff,
    write_labels_zarr,
    write_measurements_csv,
)


def wide_box():
    """One 2-pixel-high, 6-pixel-wide nucleus (id 12) at rows 2..3, columns 10..15: x extent != y extent."""
    labels = np.zeros((20, 30), np.uint16)
    labels[2:4, 10:16] = 12
    return labels


def ring_of(feature):
    return np.array(feature["geometry"]["coordinates"][0])


def signed_area(xy):
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def test_geojson_structure():
    labels = wide_box()
    labels[10:15, 3:8] = 40_000  # non-consecutive id
    gj = labels_to_geojson(labels)
    assert gj["type"] == "FeatureCollection"
    assert len(gj["features"]) == 2
    for f in gj["features"]:
        assert f["type"] == "Feature"
        uuid.UUID(f["id"])
        assert f["geometry"]["type"] == "Polygon"
        ring = ring_of(f)
        assert ring.shape[1] == 2 and len(ring) >= 4
        assert ring[0].tolist() == ring[-1].tolist()
        assert signed_area(ring) > 0  # one orientation for every ring
        props = f["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"]["name"] == "Nucleus" and len(props["classification"]["color"]) == 3
        assert props["measurements"]["Label"] == props["nucseg_id"]
    assert sorted(f["properties"]["nucseg_id"] for f in gj["features"]) == [12, 40_000]
    json.dumps(gj)  # plain JSON types only


def test_geojson_x_first_with_offset_and_downsample():
    xy = ring_of(labels_to_geojson(wide_box())["features"][0])
    # pixel (r, c) covers [c, c+1) x [r, r+1): columns 10..15 -> x in [10, 16], rows 2..3 -> y in [2, 4]; the
    # 0.5 px simplification may cut a corner by half a pixel
    assert xy[:, 0].min() == pytest.approx(10, abs=0.5) and xy[:, 0].max() == pytest.approx(16, abs=0.5)
    assert xy[:, 1].min() == pytest.approx(2, abs=0.5) and xy[:, 1].max() == pytest.approx(4, abs=0.5)
    moved = ring_of(labels_to_geojson(wide_box(), offset=(100, 1000), downsample=2.0)["features"][0])
    assert np.allclose(moved, xy * 2 + [1000, 100])  # x + x0, y + y0 after scaling


def test_geojson_exact_vertices_of_a_diamond():
    labels = np.zeros((9, 9), np.uint8)
    labels[4, 3] = 1  # one pixel at row 4, column 3: the contour joins its edges' midpoints
    xy = ring_of(labels_to_geojson(labels)["features"][0])
    assert sorted(map(tuple, xy[:-1].tolist())) == [(3.0, 4.5), (3.5, 4.0), (3.5, 5.0), (4.0, 4.5)]


def test_geojson_area_close_to_pixels_and_holes_ignored():
    from skimage.draw import disk

    labels = np.zeros((40, 40), np.int32)
    labels[disk((15, 15), 10)] = 1
    filled = int((labels == 1).sum())
    labels[13:18, 13:18] = 0  # a hole: exterior only
    labels[30:31, 34:35] = 2  # a single pixel still gives a valid ring
    feats = {f["properties"]["nucseg_id"]: ring_of(f) for f in labels_to_geojson(labels)["features"]}
    assert signed_area(feats[1]) == pytest.approx(filled, rel=0.02)
    assert len(feats[2]) >= 4 and signed_area(feats[2]) == pytest.approx(0.5)


def test_geojson_with_measurements_and_class():
    labels = wide_box()
    gj = labels_to_geojson(labels, measurements=measure_nuclei(labels, mpp=0.5), classification="Tumor",
                           color=(1, 2, 3))
    props = gj["features"][0]["properties"]
    assert props["classification"] == {"name": "Tumor", "color": [1, 2, 3]}
    assert props["measurements"]["area_um2"] == pytest.approx(12 * 0.25)
    assert props["measurements"]["Label"] == 12


def test_write_geojson_no_overwrite(tmp_path):
    target = tmp_path / "n.geojson"
    write_geojson(wide_box(), target)
    assert json.loads(target.read_text())["type"] == "FeatureCollection"
    with pytest.raises(StoreError, match="n.geojson.*overwrite"):
        write_geojson(wide_box(), target)
    write_geojson(np.zeros((5, 5), np.uint8), target, overwrite=True)
    assert json.loads(target.read_text())["features"] == []
    assert [p.name for p in tmp_path.iterdir()] == ["n.geojson"]


def test_measure_nuclei_values():
    labels = np.zeros((20, 30), np.uint16)
    labels[2:6, 10:14] = 5
    image = np.zeros((20, 30, 3), np.uint8)
    image[...] = (200, 100, 50)
    (row,) = measure_nuclei(labels, image, mpp=0.5, offset=(100, 200))
    assert row["id"] == 5
    assert (row["centroid_x"], row["centroid_y"]) == (212.0, 104.0)  # mean index 11.5 / 3.5, + 0.5, + offset
    assert row["centroid_x_um"] == pytest.approx(106.0)
    assert row["area_px"] == 16 and row["area_um2"] == pytest.approx(4.0)
    assert row["major_axis_px"] == pytest.approx(row["minor_axis_px"]) and row["eccentricity"] == pytest.approx(0)
    assert row["solidity"] == pytest.approx(1.0)
    assert (row["mean_r"], row["mean_g"], row["mean_b"]) == pytest.approx((200, 100, 50))
    from skimage.color import rgb2hed

    hed = rgb2hed(np.array([[[200, 100, 50]]], np.uint8))[0, 0]
    assert (row["mean_hematoxylin_od"], row["mean_eosin_od"]) == pytest.approx((hed[0], hed[1]))
    assert "area_um2" not in measure_nuclei(labels)[0]
    with pytest.raises(InvalidInputError, match="RGB"):
        measure_nuclei(labels, image[:10])


def test_measurements_csv(tmp_path):
    labels = wide_box()
    labels[10:13, 3:6] = 3
    path = write_measurements_csv(labels, tmp_path / "m.csv", mpp=0.25)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in rows] == [3, 12]
    for column in ("centroid_x", "centroid_y", "area_px", "area_um2", "perimeter_um", "eccentricity", "solidity",
                   "major_axis_um", "minor_axis_um"):
        assert column in rows[0]
    assert float(rows[0]["area_um2"]) == pytest.approx(9 * 0.0625)
    assert float(rows[1]["area_um2"]) == pytest.approx(12 * 0.0625)
    with pytest.raises(StoreError, match="m.csv"):
        write_measurements_csv(labels, path)


def test_ome_tiff_round_trip_with_pyramid(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 70_000, (1000, 700)).astype(np.uint32)
    path = write_labels_ome_tiff(labels, tmp_path / "l.ome.tif", mpp=0.25, pyramid=True)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert 'PhysicalSizeX="0.25"' in tif.ome_metadata and 'PhysicalSizeXUnit="µm"' in tif.ome_metadata
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(1000, 700), (500, 350)]
        assert np.array_equal(levels[0].asarray(), labels) and levels[0].dtype == np.uint32
        assert np.array_equal(levels[1].asarray(), labels[::2, ::2])
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 512 and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    with pytest.raises(StoreError, match="l.ome.tif"):
        write_labels_ome_tiff(labels, path)


def test_ome_tiff_small_is_flat_large_is_pyramidal(tmp_path):
    small = write_labels_ome_tiff(np.ones((30, 40), np.uint16), tmp_path / "s.tif")
    with tifffile.TiffFile(small) as tif:
        assert len(tif.series[0].levels) == 1 and tif.series[0].asarray().dtype == np.uint32
    tall = np.arange(4100 * 16, dtype=np.uint32).reshape(4100, 16)
    with tifffile.TiffFile(write_labels_ome_tiff(tall, tmp_path / "t.tif", mpp=0.5)) as tif:
        levels = tif.series[0].levels
        assert [lv.shape[0] for lv in levels] == [4100, 2050, 1025, 513, 257]
        assert np.array_equal(levels[3].asarray(), tall[::8, ::8])


def test_ome_tiff_from_lazy_zarr(tmp_path):
    labels = np.random.default_rng(1).integers(0, 9, (700, 600)).astype(np.uint32)
    lazy = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=labels.shape, chunks=(256, 256), dtype="uint32")
    lazy[...] = labels
    with tifffile.TiffFile(write_labels_ome_tiff(lazy, tmp_path / "z.tif", pyramid=True)) as tif:
        assert np.array_equal(tif.series[0].levels[0].asarray(), labels)
        assert np.array_equal(tif.series[0].levels[1].asarray(), labels[::2, ::2])


def test_zarr_round_trip_and_overwrite(tmp_path):
    labels = wide_box()
    path = write_labels_zarr(labels, tmp_path / "l.zarr", chunks=16, mpp=0.25)
    arr = zarr.open_array(str(path), mode="r")
    assert arr.metadata.zarr_format == 3 and arr.dtype == np.uint32 and arr.chunks == (16, 16)
    assert np.array_equal(arr[...], labels) and arr.attrs["mpp"] == 0.25
    with pytest.raises(StoreError, match="l.zarr"):
        write_labels_zarr(labels, path)
    write_labels_zarr(labels * 2, path, overwrite=True)
    assert zarr.open_array(str(path), mode="r")[2, 10] == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.zarr"]


def blobs(shape, seed):
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, bool)
    seeds[tuple(rng.integers(0, s, 60) for s in shape)] = True
    return label(ndi.binary_dilation(seeds, iterations=4)).astype(np.uint32)


def test_chunks_own_each_object_once(tmp_path):
    labels = blobs((200, 170), 0)
    lazy = zarr.create_array(store=str(tmp_path / "b.zarr"), shape=labels.shape, chunks=(50, 50), dtype="uint32")
    lazy[...] = labels
    seen = []
    for part in iter_label_chunks(lazy, chunk=64, margin=20):
        for index, box in enumerate(ndi.find_objects(part.window.astype(np.intp)), start=1):
            if box is not None and part.owned(np.array(box[0].start), np.array(box[1].start)):
                seen.append(index)
    assert sorted(seen) == list(range(1, labels.max() + 1))


def test_lazy_geojson_and_measurements_equal_in_memory(tmp_path, monkeypatch):
    labels = blobs((200, 170), 1)
    lazy = zarr.create_array(store=str(tmp_path / "b.zarr"), shape=labels.shape, chunks=(50, 50), dtype="uint32")
    lazy[...] = labels
    whole = {f["properties"]["nucseg_id"]: f["geometry"] for f in labels_to_geojson(labels)["features"]}
    rows = measure_nuclei(labels)
    monkeypatch.setattr(export, "iter_label_chunks",
                        functools.partial(iter_label_chunks, chunk=64, margin=30))
    chunked = {f["properties"]["nucseg_id"]: f["geometry"] for f in labels_to_geojson(lazy)["features"]}
    assert chunked == whole
    lazy_rows = measure_nuclei(lazy)
    assert [r["id"] for r in lazy_rows] == [r["id"] for r in rows]
    for a, b in zip(lazy_rows, rows, strict=True):
        assert a == pytest.approx(b, abs=1e-6)  # eccentricity of round blobs ~ sqrt(rounding noise)


def test_bad_labels_rejected():
    with pytest.raises(InvalidInputError, match="2-D"):
        labels_to_geojson(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(InvalidInputError, match="dtype"):
        measure_nuclei(np.zeros((3, 3), np.float32))
    with pytest.raises(InvalidInputError, match="relabel"):
        write_labels_zarr(np.full((3, 3), 2**40, np.int64), "unused.zarr")
