"""Nuclei per area of tissue (`nucseg.metrics.density`): exact tissue areas, counts by centroid, µm only when the
pixel size is known, and the same summary in ``nucseg predict``'s JSON and the batch summary."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from nucseg.metrics.density import AreaSummary, TissueMap, density_grid, summarize, tissue_map


def half_tissue(shape=(400, 600)):
    """White glass on the right half, pink H&E-like tissue on the left half."""
    image = np.full((*shape, 3), 245, np.uint8)
    image[:, : shape[1] // 2] = (200, 120, 170)
    return image


def test_tissue_map_is_the_engines_mask_placed_in_level0_pixels():
    tissue = tissue_map(half_tissue())
    assert tissue.origin == (0.0, 0.0) and tissue.extent == (400.0, 600.0) and tissue.down == 8.0
    # the left half, plus the engine's margin (a partly stained mask pixel counts, then two more) is tissue
    assert 400 * 300 <= tissue.area_px() <= 400 * (300 + 3 * 8)
    assert tissue.area_px((0, 400, 400, 200)) == 0.0
    region = tissue_map(half_tissue(), (100, 200, 200, 200))  # a region: placed where it is
    assert region.origin == (100.0, 200.0) and region.area_px((100, 200, 200, 50)) == 200 * 50


def test_summaries_count_by_centroid_and_claim_mm2_only_with_a_pixel_size():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # 5 x 10 mask pixels of 4 px: 40 x 20 = 800 px² of tissue
    tissue = TissueMap(mask, 4.0, (100.0, 200.0), (40.0, 40.0))
    centroids = np.array([[110.5, 205.5], [139.5, 219.5], [120.0, 230.0], [90.0, 205.0]])
    window = summarize(centroids, tissue, 0.5, window=(100, 200, 40, 20))
    assert window.nuclei == 2 and window.tissue_px == 800.0
    assert window.tissue_mm2 == pytest.approx(800 * 0.25 / 1e6) and window.per_mm2 == pytest.approx(2 / 2e-4)
    half = summarize(centroids, tissue, 0.5, window=(100, 200, 40, 10))  # part of the mask's pixels: exact
    assert half.tissue_px == 400.0 and half.nuclei == 1
    square = np.array([[100, 200], [140, 200], [140, 220], [100, 220]], float)
    assert summarize(centroids, tissue, 0.5, polygon=square).tissue_px == 800.0
    unknown = summarize(centroids, tissue, None, window=(100, 200, 40, 20))
    assert unknown.tissue_mm2 is None and unknown.per_mm2 is None and unknown.per_mpx == pytest.approx(2 / 8e-4)
    as_json = unknown.to_dict()
    assert "tissue_mm2" not in as_json and "nuclei_per_mm2" not in as_json and as_json["mpp"] is None
    assert "µm" not in unknown.text() and "mm²" not in unknown.text() and "unknown" in unknown.text()
    assert "mm²" in window.text()
    whole = summarize(np.zeros((0, 2)), tissue, 0.5, count=7)
    assert whole.nuclei == 7 and whole.tissue_px == 800.0
    assert AreaSummary(3, 0.0, 0.5).per_mm2 is None  # no tissue: no density


def test_density_grid_divides_counts_by_each_cells_tissue():
    mask = np.ones((20, 20), bool)
    mask[:, 10:] = False
    tissue = TissueMap(mask, 5.0, (0.0, 0.0), (100.0, 100.0))
    centroids = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 60.0]])
    grid = density_grid(centroids, tissue, 0.5, cell=50)
    assert grid.density.shape == (2, 2) and grid.unit == "nuclei per mm²"
    assert grid.density[0, 0] == pytest.approx(2 / (50 * 50 * 0.25 / 1e6))
    assert np.isnan(grid.density[0, 1])  # no tissue in the cell: no figure, even with a nucleus there
    assert grid.density[1, 0] == 0.0
    assert density_grid(centroids, tissue, None, cell=50).unit == "nuclei per 10^6 px²"


@pytest.mark.parametrize("mpp", ["0.5", None])
def test_predict_json_and_batch_summary_carry_the_density(tmp_path, monkeypatch, mpp):
    from PIL import Image

    from fake_models import blob_image, install_blobnet
    from nucseg.cli import main

    install_blobnet(monkeypatch)
    image, truth = blob_image((200, 260), n=12, seed=4)
    image[:, 130:] = 250  # the right half is glass
    image[:, :130][image[:, :130].sum(-1) > 600] = (200, 120, 170)  # stained around the nuclei
    Image.fromarray(image).save(tmp_path / "tile.png")
    out = tmp_path / "out"
    extra = ["--mpp", mpp] if mpp else []
    assert main(["predict", str(tmp_path / "tile.png"), "--out", str(out), "--model", "unet-efficientnet-b0",
                 "--tile-size", "128", "--overlap", "32", "--quiet", *extra]) == 0
    summary = json.loads((out / "tile_predict.json").read_text())
    density = summary["density"]
    tissue = tissue_map(np.asarray(Image.open(tmp_path / "tile.png").convert("RGB")))
    assert density["nuclei"] == summary["nuclei"] > 0
    assert density["tissue_px2"] == pytest.approx(tissue.area_px())
    assert 0.4 * 200 * 260 < density["tissue_px2"] < 0.7 * 200 * 260  # about the stained half
    with open(out / "batch_summary.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    if mpp:
        assert density["nuclei_per_mm2"] == pytest.approx(density["nuclei"] / (density["tissue_px2"] * 0.25 / 1e6),
                                                          rel=1e-5)
        assert float(row["nuclei_per_mm2"]) == pytest.approx(density["nuclei_per_mm2"])
    else:  # no pixel size: no mm², and the file says so
        assert "nuclei_per_mm2" not in density and density["pixel_size"].startswith("unknown")
        assert row["nuclei_per_mm2"] == "" and row["tissue_mm2"] == ""
        assert float(row["nuclei_per_mpx"]) == pytest.approx(density["nuclei_per_mpx"])


def test_predict_masks_the_tissue_once_and_a_region_counts_the_whole_slides_tissue(tmp_path, monkeypatch):
    """The density figures reuse the engine's tissue mask of the slide (one pass over the pixels, not a second
    one of the region's), so a region's tissue is judged by the whole slide's threshold, as the engine's tile
    skipping is."""
    from PIL import Image

    from fake_models import blob_image, install_blobnet
    from nucseg.cli import main
    from nucseg.inference import tissue as tissue_module

    install_blobnet(monkeypatch)
    calls = []
    blockwise = tissue_module.tissue_mask_blockwise
    monkeypatch.setattr(tissue_module, "tissue_mask_blockwise", lambda *a, **k: (calls.append(1),
                                                                                 blockwise(*a, **k))[1])
    image, _ = blob_image((200, 260), n=12, seed=4)
    image[:, 130:] = 250
    image[:, :130][image[:, :130].sum(-1) > 600] = (200, 120, 170)
    Image.fromarray(image).save(tmp_path / "tile.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "tile.png"), "--out", str(out), "--model", "unet-efficientnet-b0",
                 "--tile-size", "128", "--overlap", "32", "--region", "64,0,128,200", "--quiet"]) == 0
    assert len(calls) == 1
    density = json.loads((out / "tile_predict.json").read_text())["density"]
    whole = tissue_map(np.asarray(Image.open(tmp_path / "tile.png").convert("RGB")), (0, 64, 200, 128))
    assert density["tissue_px2"] == pytest.approx(whole.area_px())
