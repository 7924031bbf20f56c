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
