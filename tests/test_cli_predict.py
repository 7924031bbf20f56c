"""`nucseg predict` end to end (the network is the deterministic BlobNet, see fake_models)."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from fake_models import blob_image, install_blobnet
from nucseg.cli import main

MODEL = ["--model", "unet-efficientnet-b0"]


@pytest.fixture
def tile(tmp_path, monkeypatch):
    install_blobnet(monkeypatch)
    image, truth = blob_image((200, 260), n=25)
    path = tmp_path / "tile.png"
    Image.fromarray(image).save(path)
    return path, truth


def test_writes_labels_geojson_csv_and_settings(tile, tmp_path, capsys):
    path, truth = tile
    out = tmp_path / "out"
    assert main(["predict", str(path), "--out", str(out), *MODEL, "--tile-size", "128", "--overlap", "32",
                 "--format", "tif,geojson,csv", "--quiet"]) == 0
    labels = tifffile.imread(out / "tile_labels.tif")
    assert labels.dtype == np.uint32 and labels.shape == truth.shape and labels.max() == truth.max()
    features = json.loads((out / "tile_nuclei.geojson").read_text())["features"]
    assert len(features) == truth.max()
    assert len((out / "tile_nuclei.csv").read_text().strip().splitlines()) == truth.max() + 1
    summary = json.loads((out / "tile_predict.json").read_text())
    assert summary["nuclei"] == truth.max() and summary["config"]["tiling"]["tile_size"] == 128
    captured = capsys.readouterr()
    assert "25 nuclei" in captured.out
    assert "tile.png did not say its pixel size" not in captured.err  # (the note speaks of inputs in the plural)
    assert "tile.png did not say their pixel size and were segmented as 0.25" in captured.err

    assert main(["predict", str(path), "--out", str(tmp_path / "at20x"), *MODEL, "--mpp", "0.5", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "pixel size" not in captured.err
    summary = json.loads((tmp_path / "at20x" / "tile_predict.json").read_text())
    assert summary["mpp"] == 0.5 and tifffile.imread(tmp_path / "at20x" / "tile_labels.tif").shape == truth.shape


def test_never_overwrites_without_asking(tile, tmp_path, capsys):
    path, _ = tile
    args = ["predict", str(path), "--out", str(tmp_path / "o"), *MODEL, "--quiet"]
    assert main(args) == 0
    first = (tmp_path / "o" / "tile_labels.tif").stat().st_mtime_ns
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert (tmp_path / "o" / "tile_labels.tif").stat().st_mtime_ns == first
    assert main([*args, "--overwrite"]) == 0


def test_a_broken_file_in_a_batch_is_reported_and_the_rest_done(tile, tmp_path, capsys):
    path, _ = tile
    broken = tmp_path / "broken.png"
    broken.write_bytes(path.read_bytes()[:200])
    code = main(["predict", str(broken), str(path), "--out", str(tmp_path / "o"), *MODEL, "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 of 2 inputs failed" in err
    assert (tmp_path / "o" / "tile_labels.tif").exists()


@pytest.mark.parametrize("bad", [["--tile-size", "100"], ["--overlap", "600"], ["--format", "pdf"],
                                 ["--region", "1,2,3"], ["--model", "no-such-model"]])
def test_bad_options_exit_2_with_one_line(tile, tmp_path, capsys, bad):
    path, _ = tile
    code = main(["predict", str(path), "--out", str(tmp_path / "o"), *MODEL, *bad, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("nucseg predict: error:")


def test_a_failing_overwrite_run_keeps_the_earlier_outputs(tile, tmp_path, monkeypatch, capsys):
    from nucseg.io import export

    path, _ = tile
    out = tmp_path / "o"
    args = ["predict", str(path), "--out", str(out), *MODEL, "--format", "tif,csv", "--quiet"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "batch_summary.csv"}
    assert set(before) == {"tile_labels.tif", "tile_nuclei.csv", "tile_predict.json"}

    def disk_full(*_, **__):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_nuclei_tables", disk_full)  # fails after the labels were written
    assert main([*args, "--overwrite"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "batch_summary.csv"}
    assert after == before  # nothing deleted, nothing half-written, no temporary files left behind


def test_inputs_with_dots_or_the_same_name_get_their_own_outputs(tmp_path, monkeypatch):
    install_blobnet(monkeypatch)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    inputs = {tmp_path / "a.1.png": 5, tmp_path / "a.2.png": 9, tmp_path / "x" / "b.png": 3, tmp_path / "y" / "b.png": 7}
    for p, n in inputs.items():
        Image.fromarray(blob_image((120, 140), n=n, seed=n)[0]).save(p)
    out = tmp_path / "out"
    assert main(["predict", *map(str, inputs), "--out", str(out), *MODEL, "--quiet"]) == 0
    for stem, n in {"a.1": 5, "a.2": 9, "x_b": 3, "y_b": 7}.items():
        assert tifffile.imread(out / f"{stem}_labels.tif").max() == n
        summary = json.loads((out / f"{stem}_predict.json").read_text())
        assert summary["nuclei"] == n and summary["stem"] == stem
        assert ("stem_note" in summary) == stem.endswith("_b")
    assert "share the name 'b'" in json.loads((out / "x_b_predict.json").read_text())["stem_note"]


def _ome_physical_size(path):
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata or ""
    return None if "PhysicalSizeX=" not in xml else float(xml.split('PhysicalSizeX="')[1].split('"')[0])


def _csv_rows(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_micrometres_only_from_the_file_or_mpp(tile, tmp_path):
    """End to end: a PNG that does not say its pixel size gets pixel units only, `--mpp 0.5` gets 0.5 µm/px,
    and a file's own size wins over --mpp."""
    path, truth = tile
    unknown, given = tmp_path / "unknown", tmp_path / "given"
    common = [*MODEL, "--format", "tif,csv", "--quiet"]
    assert main(["predict", str(path), "--out", str(unknown), *common]) == 0
    rows = _csv_rows(unknown / "tile_nuclei.csv")
    assert len(rows) == truth.max() and not [c for c in rows[0] if c.endswith(("_um", "_um2"))]
    assert _ome_physical_size(unknown / "tile_labels.tif") is None
    summary = json.loads((unknown / "tile_predict.json").read_text())
    assert summary["mpp"] is None and summary["mpp_from"] == "unknown" and summary["segmented_at_mpp"] == 0.25

    assert main(["predict", str(path), "--out", str(given), *common, "--mpp", "0.5"]) == 0
    rows = _csv_rows(given / "tile_nuclei.csv")
    assert [float(r["area_um2"]) for r in rows] == pytest.approx([float(r["area_px"]) * 0.25 for r in rows])
    assert "mean_hematoxylin_od" in rows[0]  # the image is at hand: H&E intensities
    assert _ome_physical_size(given / "tile_labels.tif") == 0.5
    summary = json.loads((given / "tile_predict.json").read_text())
    assert summary["mpp"] == 0.5 and summary["mpp_from"] == "--mpp"

    sized = tmp_path / "sized.ome.tif"
    tifffile.imwrite(sized, np.asarray(Image.open(path)), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    assert main(["predict", str(sized), "--out", str(tmp_path / "file"), *common, "--mpp", "0.5"]) == 0
    assert _ome_physical_size(tmp_path / "file" / "sized_labels.tif") == 0.25
    summary = json.loads((tmp_path / "file" / "sized_predict.json").read_text())
    assert summary["mpp"] == 0.25 and summary["mpp_from"] == "file"


def test_a_slide_larger_than_a_block_gets_intensities_and_qupath_measurements(tile, tmp_path):
    path, truth = tile
    slide = tmp_path / "slide.ome.tif"
    tifffile.imwrite(slide, np.asarray(Image.open(path)), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    out = tmp_path / "o"
    assert main(["predict", str(slide), "--out", str(out), *MODEL, "--block-size", "128", "--tile-size", "64",
                 "--overlap", "16", "--format", "csv,geojson", "--quiet"]) == 0
    rows = _csv_rows(out / "slide_nuclei.csv")
    assert len(rows) == truth.max() and "mean_eosin_od" in rows[0] and "area_um2" in rows[0]
    feature = json.loads((out / "slide_nuclei.geojson").read_text())["features"][0]
    measurements = feature["properties"]["measurements"]
    assert measurements["area_um2"] == pytest.approx(measurements["area_px"] * 0.25**2)
    assert "mean_hematoxylin_od" in measurements
