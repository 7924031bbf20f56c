"""Issue 21, faults 2-5 and 9-12, 18: bad inputs end in one clear line (exit 2 in the CLI), harm nothing, and stay
within bounded memory. Each test failed before its fix.

The network is the deterministic BlobNet (fake_models) unless a test says otherwise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from fake_models import blob_image, install_blobnet
from nucseg.cli import main

MODEL = ["--model", "unet-efficientnet-b0", "--quiet"]


def _one_error_line(err: str, command: str = "predict") -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"nucseg {command}: error:"), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------ 18: --region is x,y,w,h


@pytest.fixture
def portrait(tmp_path, monkeypatch):
    """A portrait TIFF, 300 px wide and 500 px high, with nuclei only in its lower left corner."""
    install_blobnet(monkeypatch)
    image = np.full((500, 300, 3), 235, np.uint8)
    corner, truth = blob_image((100, 80), n=4, seed=3)
    image[380:480, 10:90] = corner
    path = tmp_path / "portrait.tif"
    tifffile.imwrite(path, image, photometric="rgb")
    return path, truth


def test_region_is_x_y_width_height_as_qupath_gives_it(portrait, tmp_path, capsys):
    path, truth = portrait
    out = tmp_path / "o"
    # x=10 y=380, 80 wide, 100 high: the corner with the nuclei (read y,x,h,w it lies outside this portrait image)
    assert main(["predict", str(path), "--out", str(out), *MODEL, "--region", "10,380,80,100", "--mpp", "0.25",
                 "--format", "tif,csv"]) == 0
    labels = tifffile.imread(out / "portrait_labels.tif")
    assert labels.shape == (100, 80) and labels.max() == truth.max()
    summary = json.loads((out / "portrait_predict.json").read_text())
    assert summary["region"] == [380, 10, 100, 80]  # the engine's order, as BATCH.md says
    rows = (out / "portrait_nuclei.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == truth.max()
    capsys.readouterr()


def test_a_region_outside_the_image_is_one_line_in_the_slide_world_s_terms(portrait, tmp_path, capsys):
    path, _ = portrait
    assert main(["predict", str(path), "--out", str(tmp_path / "o"), *MODEL, "--region", "400,0,10,10"]) == 2
    line = capsys.readouterr().err
    assert "x=400, y=0" in line and "300 px wide" in line and "portrait.tif" in line and "Traceback" not in line


@pytest.mark.parametrize("bad", ["1,2,3", "a,b,c,d", "0,0,0,10", "-5,0,10,10"])
def test_a_bad_region_is_one_line_saying_the_order(portrait, tmp_path, capsys, bad):
    path, _ = portrait
    assert main(["predict", str(path), "--out", str(tmp_path / "o"), *MODEL, f"--region={bad}"]) == 2
    assert "x,y,width,height" in _one_error_line(capsys.readouterr().err)


def test_help_says_x_y_width_height(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--region X,Y,W,H" in text and "x,y,width,height in level-0 pixels, as QuPath and OpenSlide" in text
