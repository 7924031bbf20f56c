"""Exports: QuPath GeoJSON geometry (valid shapely outlines) and measurements, CSV, OME-TIFF and OME-NGFF zarr
round trips, units only when known, block-by-block streaming, no-overwrite."""

import csv
import functools
import json
import uuid

import numpy as np
import pytest
import shapely
import tifffile
import zarr
from scipy import ndimage as ndi

from nucseg.errors import InvalidInputError, StoreError
from nucseg.io import export
from nucseg.io.export import (
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
        assert props["measurements"]["area_px"] > 0 and "area_um2" not in props["measurements"]  # no mpp given
    assert gj["nucseg"]["mpp"] is None and gj["nucseg"]["count"] == 2
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


def test_geojson_area_close_to_pixels_with_its_hole():
    from skimage.draw import disk

    labels = np.zeros((40, 40), np.int32)
    labels[disk((15, 15), 10)] = 1
    labels[13:18, 13:18] = 0  # a hole: an interior ring, not filled in
    labels[30:31, 34:35] = 2  # a single pixel still gives a valid ring
    feats = {f["properties"]["nucseg_id"]: shapely.geometry.shape(f["geometry"])
             for f in labels_to_geojson(labels)["features"]}
    assert feats[1].geom_type == "Polygon" and len(feats[1].interiors) == 1
    assert feats[1].area == pytest.approx((labels == 1).sum(), rel=0.03)
    assert feats[2].area == pytest.approx(0.5)
    assert all(shapely.is_valid(list(feats.values())))


def test_geojson_multipart_and_nested_parts_are_valid():
    labels = np.zeros((30, 30), np.uint16)
    labels[2:6, 2:6] = 5
    labels[10:14, 2:6] = 5  # the same id twice, apart: one MultiPolygon
    labels[20:28, 12:20] = 6
    labels[22:26, 14:18] = 0
    labels[23:25, 15:17] = 6  # an island of 6 inside its own hole
    labels[2:4, 20:22] = 7
    labels[4:6, 22:24] = 7  # two squares touching at a corner: 8-connected, one Polygon
    feats = {f["properties"]["nucseg_id"]: f for f in labels_to_geojson(labels)["features"]}
    shapes = {k: shapely.geometry.shape(f["geometry"]) for k, f in feats.items()}
    assert all(shapely.is_valid(list(shapes.values())))
    assert shapes[5].geom_type == "MultiPolygon" and len(shapes[5].geoms) == 2
    assert shapes[6].geom_type == "MultiPolygon" and sorted(len(p.interiors) for p in shapes[6].geoms) == [0, 1]
    assert shapes[7].geom_type == "Polygon"
    for k, shape in shapes.items():
        assert shape.area == pytest.approx((labels == k).sum(), rel=0.25)
        assert feats[k]["properties"]["measurements"]["area_px"] == (labels == k).sum()
    for polygon in shapes[6].geoms:  # RFC 7946: exteriors counter-clockwise (in x/y), holes clockwise
        assert polygon.exterior.is_ccw and all(not ring.is_ccw for ring in polygon.interiors)


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
    path = write_measurements_csv(labels, tmp_path / "m.csv", mpp=0.25)  # the model's own value is as good as any
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in rows] == [3, 12]
    for column in ("centroid_x", "centroid_y", "area_px", "area_um2", "perimeter_um", "eccentricity", "solidity",
                   "major_axis_um", "minor_axis_um", "mpp"):
        assert column in rows[0]
    assert float(rows[0]["area_um2"]) == pytest.approx(9 * 0.0625)
    assert float(rows[1]["area_um2"]) == pytest.approx(12 * 0.0625)
    assert {r["mpp"] for r in rows} == {"0.25"}
    with pytest.raises(StoreError, match="m.csv"):
        write_measurements_csv(labels, path)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_units_only_when_the_pixel_size_is_known(tmp_path):
    labels = wide_box()
    rows = read_csv(write_measurements_csv(labels, tmp_path / "px.csv"))
    assert not [c for c in rows[0] if c.endswith(("_um", "_um2"))] and rows[0]["mpp"] == ""  # unknown, and says so
    gj = json.loads(write_geojson(labels, tmp_path / "px.geojson").read_text())
    assert gj["nucseg"]["mpp"] is None and "unknown" in gj["nucseg"]["pixel_size"]
    assert not [m for m in gj["features"][0]["properties"]["measurements"] if m.endswith(("_um", "_um2"))]
    with tifffile.TiffFile(write_labels_ome_tiff(labels, tmp_path / "px.tif")) as tif:
        assert "PhysicalSize" not in tif.ome_metadata
    axes = zarr.open_group(str(write_labels_zarr(labels, tmp_path / "px.zarr")), mode="r").attrs["ome"][
        "multiscales"][0]["axes"]
    assert all("unit" not in a for a in axes)
    half = read_csv(write_measurements_csv(labels, tmp_path / "half.csv", mpp=0.5))[0]
    assert float(half["area_um2"]) == pytest.approx(float(half["area_px"]) * 0.25) and half["mpp"] == "0.5"
    with pytest.raises(InvalidInputError, match="positive"):
        write_measurements_csv(labels, tmp_path / "bad.csv", mpp=0.0)


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


def test_zarr_is_ome_ngff_and_round_trips(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    labels = wide_box()
    path = write_labels_zarr(labels, tmp_path / "l.zarr", chunks=16, mpp=0.25)
    nodes = list(Reader(parse_url(str(path)))())
    node = nodes[0]
    assert {type(s) for s in node.specs} >= {Label, Multiscales}  # an image-label with multiscales
    assert node.metadata["axes"] == [{"name": "y", "type": "space", "unit": "micrometer"},
                                     {"name": "x", "type": "space", "unit": "micrometer"}]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[0.25, 0.25], [0.5, 0.5]]  # 20 x 30 px in chunks of 16: a second, half-size level
    assert np.array_equal(np.asarray(node.data[0]), labels) and node.data[0].dtype == np.uint32
    assert np.array_equal(np.asarray(node.data[1]), labels[::2, ::2])
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3 and group.attrs["ome"]["version"] == "0.5"
    assert group.attrs["ome"]["image-label"]["version"] == "0.5" and group.attrs["nucseg"]["mpp"] == 0.25
    assert list(group["0"].metadata.dimension_names) == ["y", "x"]
    from nucseg.io.ngff import read_labels_ngff

    levels, mpp = read_labels_ngff(path)
    assert mpp == 0.25 and np.array_equal(levels[0][...], labels)
    with pytest.raises(StoreError, match="l.zarr"):
        write_labels_zarr(labels, path)
    write_labels_zarr(labels * 2, path, overwrite=True)
    assert zarr.open_group(str(path), mode="r")["0"][2, 10] == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.zarr"]


def test_zarr_validates_as_ngff_image_label(tmp_path):
    models = pytest.importorskip("ome_zarr_models.v05.image_label")
    path = write_labels_zarr(blobs((70, 50), 3), tmp_path / "b.zarr", chunks=32)
    image_label = models.ImageLabel.from_zarr(zarr.open_group(str(path), mode="r"))
    assert len(image_label.attributes.ome.multiscales[0].datasets) == 3  # 70, 35, 18 rows in chunks of 32


def test_zarr_from_lazy_labels_block_by_block(tmp_path):
    labels = blobs((300, 260), 4)
    lazy = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=labels.shape, chunks=(64, 64), dtype="uint32")
    lazy[...] = labels
    path = write_labels_zarr(lazy, tmp_path / "out.zarr", chunks=64)
    group = zarr.open_group(str(path), mode="r")
    assert [group[str(k)].shape for k in range(4)] == [(300, 260), (150, 130), (75, 65), (38, 33)]
    for k in range(4):
        assert np.array_equal(group[str(k)][...], labels[::2**k, ::2**k])


def blobs(shape, seed):
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, bool)
    seeds[tuple(rng.integers(0, s, 60) for s in shape)] = True
    return label(ndi.binary_dilation(seeds, iterations=4)).astype(np.uint32)


def lazy_copy(labels, path, chunks=50):
    lazy = zarr.create_array(store=str(path), shape=labels.shape, chunks=(chunks, chunks), dtype="uint32")
    lazy[...] = labels
    return lazy


def test_blocks_hand_out_each_nucleus_once_and_whole(tmp_path):
    from nucseg.io.label_blocks import iter_label_blocks

    labels = blobs((200, 170), 0)
    labels[5:190, 100:104] = labels.max() + 1  # a long nucleus crossing three blocks, longer than the margin
    lazy = lazy_copy(labels, tmp_path / "b.zarr")
    seen = []
    for block in iter_label_blocks(lazy, chunk=64, margin=20):
        (y, x), (h, w) = block.origin, block.labels.shape
        for k, label in enumerate(block.ids, start=1):
            assert (block.labels == k).sum() == (labels == label).sum()  # whole
            assert np.array_equal(block.labels == k, labels[y:y + h, x:x + w] == label)
            seen.append(int(label))
    assert sorted(seen) == list(range(1, labels.max() + 1))  # once each


def test_lazy_geojson_and_measurements_equal_in_memory(tmp_path, monkeypatch):
    labels = blobs((200, 170), 1)
    lazy = lazy_copy(labels, tmp_path / "b.zarr")
    whole = {f["properties"]["nucseg_id"]: f for f in labels_to_geojson(labels)["features"]}
    rows = measure_nuclei(labels)
    monkeypatch.setattr(export, "iter_label_blocks", functools.partial(export.iter_label_blocks, margin=30))
    monkeypatch.setattr(export, "CHUNK", 64)
    monkeypatch.setattr(export.iter_nuclei, "__defaults__", export.iter_nuclei.__defaults__[:-1] + (64,))
    chunked = {f["properties"]["nucseg_id"]: f for f in labels_to_geojson(lazy)["features"]}
    assert sorted(chunked) == sorted(whole)
    for label, feature in chunked.items():
        assert feature["geometry"] == whole[label]["geometry"]
        assert feature["properties"]["measurements"] == pytest.approx(whole[label]["properties"]["measurements"])
    lazy_rows = measure_nuclei(lazy)
    assert [r["id"] for r in lazy_rows] == [r["id"] for r in rows]
    for a, b in zip(lazy_rows, rows, strict=True):
        assert a == pytest.approx(b, abs=1e-6)  # eccentricity of round blobs ~ sqrt(rounding noise)


def test_geojson_and_csv_are_streamed_block_by_block(tmp_path, monkeypatch):
    """While the nuclei of the second block are measured, the first block's are already in the file."""
    labels = blobs((200, 170), 2)
    lazy = lazy_copy(labels, tmp_path / "b.zarr")
    real = export.iter_nuclei
    written = []

    def spy(*args, **kwargs):
        for n, item in enumerate(real(*args, **kwargs, chunk=64)):
            if n:
                written.append(sum(p.stat().st_size for p in tmp_path.glob(".out.*.tmp")))
            yield item

    monkeypatch.setattr(export, "iter_nuclei", spy)
    for target in (tmp_path / "out.geojson", tmp_path / "out.csv"):
        written.clear()
        writer = write_geojson if target.suffix == ".geojson" else write_measurements_csv
        writer(lazy, target)
        assert len(written) >= 4 and written == sorted(written) and written[-1] > written[0] > 0
    assert len(read_csv(tmp_path / "out.csv")) == labels.max()
    assert len(json.loads((tmp_path / "out.geojson").read_text())["features"]) == labels.max()


def test_csv_geojson_and_labels_count_the_same_nuclei_on_a_real_tile(shared_data, tmp_path):
    from nucseg.io.masks import read_labels
    from nucseg.io.slides import read_image

    name = "TCGA-18-5592-01Z-00-DX1.png"
    labels = read_labels(shared_data / "monuseg-train" / "labels" / name)
    image = read_image(shared_data / "monuseg-train" / "images" / name)
    ids = set(np.unique(labels[labels > 0]).tolist())
    rows = read_csv(write_measurements_csv(labels, tmp_path / "n.csv", image=image, mpp=0.25))
    features = json.loads(write_geojson(labels, tmp_path / "n.geojson", image=image, mpp=0.25).read_text())[
        "features"]
    tif = tifffile.imread(write_labels_ome_tiff(labels, tmp_path / "n.tif"))
    assert len(ids) > 300
    assert {int(r["id"]) for r in rows} == {f["properties"]["nucseg_id"] for f in features} == ids
    assert len(rows) == len(features) == len(np.unique(tif)) - 1
    shapes = [shapely.geometry.shape(f["geometry"]) for f in features]
    assert shapely.is_valid(shapes).all()
    by_id = {int(r["id"]): r for r in rows}
    for feature in features:  # the GeoJSON carries the CSV's numbers, H&E intensities included
        m, row = feature["properties"]["measurements"], by_id[feature["properties"]["nucseg_id"]]
        assert set(m) == {"Label", *row} - {"id", "mpp"}
        assert m["mean_hematoxylin_od"] == pytest.approx(float(row["mean_hematoxylin_od"]), rel=1e-5)
        assert m["area_um2"] == pytest.approx(float(row["area_um2"]), rel=1e-5)


class FakeSlide:
    """What `iter_nuclei` needs of a `Slide`: level-0 shape and read_region."""

    def __init__(self, rgb):
        self.rgb, self.shape, self.reads = rgb, rgb.shape[:2], []

    def read_region(self, level, y, x, h, w):
        self.reads.append((level, y, x, h, w))
        return self.rgb[y:y + h, x:x + w]


def test_stain_columns_from_a_slide_region(tmp_path):
    rgb = np.zeros((100, 120, 3), np.uint8)
    rgb[...] = (90, 40, 160)
    rgb[30:40, 50:60] = (200, 100, 50)
    labels = np.zeros((30, 40), np.uint16)
    labels[10:20, 20:30] = 4  # at (30, 50) in the slide once the region's offset (20, 30) is added
    slide = FakeSlide(rgb)
    (row,) = measure_nuclei(labels, slide, offset=(20, 30))
    assert (row["mean_r"], row["mean_g"], row["mean_b"]) == pytest.approx((200, 100, 50))
    assert slide.reads and all(r[0] == 0 for r in slide.reads)
    with pytest.raises(InvalidInputError, match="slide"):
        measure_nuclei(labels, slide, offset=(90, 0))


def test_bad_labels_rejected():
    with pytest.raises(InvalidInputError, match="2-D"):
        labels_to_geojson(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(InvalidInputError, match="dtype"):
        measure_nuclei(np.zeros((3, 3), np.float32))
    with pytest.raises(InvalidInputError, match="relabel"):
        write_labels_zarr(np.full((3, 3), 2**40, np.int64), "unused.zarr")


def test_csv_and_geojson_in_one_pass_equal_the_separate_files(tmp_path, monkeypatch):
    labels = blobs((120, 100), 5)
    image = np.random.default_rng(0).integers(0, 255, (120, 100, 3)).astype(np.uint8)
    write_measurements_csv(labels, tmp_path / "a.csv", image=image, mpp=0.5)
    write_geojson(labels, tmp_path / "a.geojson", image=image, mpp=0.5)
    passes = []
    real = export.iter_nuclei
    monkeypatch.setattr(export, "iter_nuclei", lambda *a, **k: passes.append(1) or real(*a, **k))
    written = export.write_nuclei_tables(labels, csv_path=tmp_path / "b.csv", geojson_path=tmp_path / "b.geojson",
                                         image=image, mpp=0.5)
    assert passes == [1] and set(written) == {"csv", "geojson"}
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    a, b = (json.loads((tmp_path / f"{n}.geojson").read_text()) for n in "ab")
    strip = [{k: v for k, v in f.items() if k != "id"} for f in a["features"]]
    assert strip == [{k: v for k, v in f.items() if k != "id"} for f in b["features"]] and a["nucseg"] == b["nucseg"]
    with pytest.raises(InvalidInputError, match="csv_path"):
        export.write_nuclei_tables(labels)


@pytest.mark.parametrize("ids", [(5_000_001, 5_000_002, 5_000_003), (17, 3_000_000_001, 4_000_000_000)])
def test_large_and_spread_out_ids_keep_their_values(tmp_path, ids):
    labels = np.zeros((40, 60), np.uint32)
    for k, label in enumerate(ids):
        labels[5:15, 5 + 20 * k:15 + 20 * k] = label
    lazy = lazy_copy(labels, tmp_path / "l.zarr", chunks=16)
    for source in (labels, lazy):
        assert [r["id"] for r in measure_nuclei(source)] == list(ids)
        assert sorted(f["properties"]["nucseg_id"] for f in labels_to_geojson(source)["features"]) == list(ids)
        assert all(r["area_px"] == 100 for r in measure_nuclei(source))


@pytest.mark.parametrize("block", [None, "128"])
def test_nucseg_predict_geojson_carries_the_csv_numbers(tmp_path, monkeypatch, block):
    """Through the CLI, on a tile in memory and on one streamed as a 'slide' (blocks of 128 px, lazy labels): the
    GeoJSON's measurements are the CSV's, microns with --mpp and the H&E columns from the input's pixels."""
    from PIL import Image

    from fake_models import blob_image, install_blobnet
    from nucseg.cli import main

    install_blobnet(monkeypatch)
    image, _ = blob_image((200, 260), n=25)
    Image.fromarray(image).save(tmp_path / "tile.png")
    out = tmp_path / "out"
    extra = ["--block-size", block] if block else []
    assert main(["predict", str(tmp_path / "tile.png"), "--out", str(out), "--model", "unet-efficientnet-b0",
                 "--tile-size", "128", "--overlap", "32", "--format", "tif,csv,geojson", "--mpp", "0.5",
                 "--quiet", *extra]) == 0
    rows = {int(r["id"]): r for r in read_csv(out / "tile_nuclei.csv")}
    features = json.loads((out / "tile_nuclei.geojson").read_text())["features"]
    labels = tifffile.imread(out / "tile_labels.tif")
    assert len(rows) == len(features) == len(np.unique(labels)) - 1 > 10
    for feature in features:
        m, row = feature["properties"]["measurements"], rows[feature["properties"]["nucseg_id"]]
        assert m["area_um2"] == pytest.approx(float(row["area_px"]) * 0.25)
        assert m["mean_r"] == pytest.approx(float(row["mean_r"]), rel=1e-5)
    assert shapely.is_valid([shapely.geometry.shape(f["geometry"]) for f in features]).all()


@pytest.mark.parametrize("block", [None, "128"])
def test_nucseg_predict_zarr_is_ome_ngff(tmp_path, monkeypatch, block):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from PIL import Image

    from fake_models import blob_image, install_blobnet
    from nucseg.cli import main

    install_blobnet(monkeypatch)
    image, _ = blob_image((200, 260), n=25)
    Image.fromarray(image).save(tmp_path / "tile.png")
    out = tmp_path / "out"
    extra = ["--block-size", block] if block else []
    assert main(["predict", str(tmp_path / "tile.png"), "--out", str(out), "--model", "unet-efficientnet-b0",
                 "--tile-size", "128", "--overlap", "32", "--format", "tif,zarr", "--mpp", "0.5", "--quiet",
                 *extra]) == 0
    node = list(Reader(parse_url(str(out / "tile_labels.zarr")))())[0]
    assert node.metadata["axes"][0] == {"name": "y", "type": "space", "unit": "micrometer"}
    assert node.metadata["coordinateTransformations"][0] == [{"type": "scale", "scale": [0.5, 0.5]},
                                                             {"type": "translation", "translation": [0.0, 0.0]}]
    assert np.array_equal(np.asarray(node.data[0]), tifffile.imread(out / "tile_labels.tif"))
    attrs = zarr.open_group(str(out / "tile_labels.zarr"), mode="r").attrs["nucseg"]
    assert attrs["mpp"] == 0.5 and attrs["mpp_from"] == "--mpp"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no scratch left


@pytest.mark.parametrize("mpp", [0.5, None])
def test_labels_exports_record_their_place_on_the_source_image(tmp_path, mpp):
    """OME-TIFF (Plane position + MapAnnotation) and OME-NGFF (translation) say where the region lies, in µm when
    the size is known, else in pixels; `open_label_file` reads it back, also from the standard fields alone."""
    from nucseg.io.label_files import open_label_file
    from nucseg.io.placement import read_ome_placement

    labels = np.zeros((40, 50), np.uint32)
    labels[5:15, 10:20] = 3
    source = {"name": "slide", "path": "/data/slide.svs"}
    export.write_labels_ome_tiff(labels, tmp_path / "r.ome.tif", mpp=mpp, offset=(600, 900), image=source)
    export.write_labels_zarr(labels, tmp_path / "r.zarr", mpp=mpp, offset=(600, 900), image=source)
    for name in ("r.ome.tif", "r.zarr"):
        found = open_label_file(tmp_path / name)
        assert found.mpp == mpp and found.placement.offset == (600.0, 900.0)
        assert dict(found.placement.image) == source
    with tifffile.TiffFile(tmp_path / "r.ome.tif") as tif:
        xml = tif.ome_metadata
    unit = "µm" if mpp else "pixel"
    assert f'PositionY="{600 * (mpp or 1):g}"'.replace(".0\"", "\"") in xml.replace(".0\"", "\"")
    assert f'PositionXUnit="{unit}"' in xml
    standard_only = xml.split("<StructuredAnnotations>")[0] + "</OME>"  # what another OME writer would give
    assert read_ome_placement(standard_only, mpp).offset == pytest.approx((600.0, 900.0))
    translation = zarr.open_group(str(tmp_path / "r.zarr"), mode="r").attrs["ome"]["multiscales"][0]["datasets"][0][
        "coordinateTransformations"][1]
    assert translation == {"type": "translation", "translation": [600 * (mpp or 1), 900 * (mpp or 1)]}
