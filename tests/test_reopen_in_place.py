"""Exports reopen exactly over their source, in a real viewer: a region of a real SVS segmented in the Segment
dock, saved as OME-TIFF, zarr, GeoJSON and CSV by napari's Save, reopened; and a PNG tile given a typed pixel
size. Pixel equality is checked in slide coordinates (napari's world -> the slide layer's data indices)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_widget_segment import make_widget, nucseg_home, run_and_wait  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gui, pytest.mark.shared_data]

SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides" / "small_HE.svs"
needs_slide = pytest.mark.skipif(not SLIDE.is_file(), reason="needs ../shared/data/slides/small_HE.svs")
#: the region segmented: (y, x, h, w) in level-0 pixels of the slide (tissue with nuclei)
REGION = (600, 900, 160, 200)


@pytest.fixture
def blob_net(monkeypatch):
    from fake_models import BlobNet
    from nucseg.models import build

    model = BlobNet().eval()
    monkeypatch.setattr(build, "load_network", lambda spec, device="cpu", runtime="auto": model)
    return model


def in_slide_pixels(labels_layer, image_layer) -> tuple[np.ndarray, tuple[int, int]]:
    """The labels' level-0 data and where their pixel (0, 0) falls in the image's level-0 pixels, from napari's
    own transforms (data -> world -> image data); the labels' pixels must be the image's pixels (same step)."""
    data = np.asarray(labels_layer.data[0] if labels_layer.multiscale else labels_layer.data)
    corner = np.asarray(image_layer.world_to_data(labels_layer.data_to_world([0, 0])))[:2]
    step = np.asarray(image_layer.world_to_data(labels_layer.data_to_world([1, 1])))[:2] - corner
    assert np.allclose(step, 1.0, atol=1e-6), f"labels pixels are {step} image pixels"
    assert np.allclose(corner, np.round(corner), atol=1e-6)
    return data, tuple(int(v) for v in np.round(corner))


def placed(data: np.ndarray, corner: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, np.uint32)
    out[corner[0]:corner[0] + data.shape[0], corner[1]:corner[1] + data.shape[1]] = data
    return out


def segment_region(viewer, qtbot, region):
    """Draw the region as a rectangle (in world µm) and segment it in the Segment dock."""
    from nucseg._napari.segment_widget import SHAPES

    image = viewer.layers[SLIDE.stem]
    y, x, h, w = region
    corners = [image.data_to_world([y, x]), image.data_to_world([y + h - 1, x + w - 1])]
    viewer.add_shapes([np.array(corners)[:, :2]], shape_type="rectangle", name="region", units=image.units)
    widget = make_widget(viewer, tile=256, overlap=32)
    viewer.window.add_dock_widget(widget)
    widget.region_combo.setCurrentText(SHAPES)
    widget.shapes_combo.set_layer("region")
    widget.image_combo.set_layer(image)
    run_and_wait(qtbot, widget, timeout=120000)
    (labels,) = widget.result_layers
    return image, labels


@needs_slide
def test_a_slide_region_reopens_over_its_nuclei_in_every_format(make_napari_viewer, qtbot, blob_net, tmp_path):
    import shapely
    from skimage.draw import polygon2mask

    viewer = make_napari_viewer()
    viewer.open(str(SLIDE), plugin="napari-nucseg")
    image, labels = segment_region(viewer, qtbot, REGION)
    full = (int(image.data.shape[0]), int(image.data.shape[1]))
    data, corner = in_slide_pixels(labels, image)
    assert corner == REGION[:2] and data.max() > 5  # the result itself sits on its region
    truth = placed(data, corner, full)

    for name in ("n.ome.tif", "n.zarr"):
        (written,) = labels.save(str(tmp_path / name))  # the typed extension picks the writer
        for fresh in (False, True):  # in this viewer, and in a new one that opens the slide after the labels
            v = make_napari_viewer() if fresh else viewer
            (reopened,) = v.open(written, plugin="napari-nucseg")
            slide = v.open(str(SLIDE), plugin="napari-nucseg")[0] if fresh else image
            assert reopened._type_string == "labels"
            assert tuple(map(str, reopened.units)) == tuple(map(str, slide.units))  # µm, both
            got, where = in_slide_pixels(reopened, slide)
            assert where == REGION[:2], f"{name} reopened at {where}, segmented at {REGION[:2]}"
            assert np.array_equal(placed(got, where, full), truth)
            if fresh:
                v.close()
            else:
                viewer.layers.remove(reopened)

    # GeoJSON vertices and CSV centroids are in full-resolution slide pixels (QuPath's frame)
    (geo,) = labels.save(str(tmp_path / "n.geojson"))
    features = json.loads(Path(geo).read_text())["features"]
    assert {f["properties"]["nucseg_id"] for f in features} == set(np.unique(data[data > 0]).tolist())
    for feature in features:
        k = feature["properties"]["nucseg_id"]
        nucleus = truth == k
        shape = shapely.geometry.shape(feature["geometry"])
        x0, y0, x1, y1 = (int(v) for v in np.round(shape.bounds))
        drawn = np.zeros(full, bool)
        for part in getattr(shape, "geoms", [shape]):  # pixel centres (c + .5, r + .5) inside the outline
            ring = np.asarray(part.exterior.coords)[:, ::-1] - 0.5
            drawn |= polygon2mask(full, ring)
        iou = (drawn & nucleus).sum() / (drawn | nucleus).sum()
        assert iou > 0.7 or nucleus.sum() < 20, f"nucleus {k}: outline over its pixels with IoU {iou:.2f}"
        assert y0 >= REGION[0] - 1 and x0 >= REGION[1] - 1 and y1 <= REGION[0] + REGION[2] + 1
    (table,) = labels.save(str(tmp_path / "n.csv"))
    with open(table) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(features)
    for row in rows:
        rr, cc = np.nonzero(truth == int(row["id"]))
        assert float(row["centroid_y"]) == pytest.approx(rr.mean() + 0.5, abs=0.01)  # 6 significant digits
        assert float(row["centroid_x"]) == pytest.approx(cc.mean() + 0.5, abs=0.01)
        assert float(row["area_um2"]) == pytest.approx(rr.size * 0.499**2, rel=1e-3)


@needs_slide
def test_a_png_tile_given_a_pixel_size_reopens_over_its_nuclei(make_napari_viewer, qtbot, blob_net, tmp_path):
    from PIL import Image

    from nucseg.io.slides import open_slide

    with open_slide(SLIDE) as slide:
        Image.fromarray(slide.read_region(0, 560, 880, 240, 280)).save(tmp_path / "tile.png")
    viewer = make_napari_viewer()
    (tile,) = viewer.open(str(tmp_path / "tile.png"), plugin="napari-nucseg")
    assert str(tile.units[0]) == "pixel"
    viewer.add_shapes([np.array([[40.0, 60.0], [199.0, 239.0]])], shape_type="rectangle", name="drawn")
    widget = make_widget(viewer, tile=256, overlap=32)
    viewer.window.add_dock_widget(widget)
    widget.image_combo.set_layer(tile)
    widget.mpp_spin.setValue(0.25)  # typed: the PNG says no size
    run_and_wait(qtbot, widget, timeout=120000)
    (labels,) = widget.result_layers
    # the tile is now shown in µm, with its result and the rectangle drawn on it: one frame
    assert tuple(tile.scale) == (0.25, 0.25) and str(tile.units[0]) == "micrometer"
    assert str(labels.units[0]) == "micrometer" and tuple(labels.scale) == (0.25, 0.25)
    assert np.allclose(viewer.layers["drawn"].extent.world[:, -2:], [[10.0, 15.0], [49.75, 59.75]])
    data, corner = in_slide_pixels(labels, tile)
    assert corner == (0, 0) and data.max() > 3

    for name in ("t.ome.tif", "t.zarr"):
        (written,) = labels.save(str(tmp_path / name))
        (reopened,) = viewer.open(written, plugin="napari-nucseg")
        assert str(reopened.units[0]) == "micrometer" and reopened.metadata["mpp"] == 0.25
        got, where = in_slide_pixels(reopened, tile)
        assert where == (0, 0) and np.array_equal(got, data)
        viewer.layers.remove(reopened)
        # a new session: the PNG opens in pixels again; its labels follow it (their size kept for exports)
        v = make_napari_viewer()
        (png,) = v.open(str(tmp_path / "tile.png"), plugin="napari-nucseg")
        (again,) = v.open(written, plugin="napari-nucseg")
        assert str(again.units[0]) == str(png.units[0]) == "pixel" and again.metadata["mpp"] == 0.25
        got, where = in_slide_pixels(again, png)
        assert where == (0, 0) and np.array_equal(got, data)
        v.close()
