"""Otsu's foreground cut (PostprocessConfig.foreground_method="otsu"): what it changes, and how it is chosen."""

import json

import numpy as np
import pytest
from PIL import Image

from fake_models import blob_image, install_blobnet
from nucseg.cli import main
from nucseg.config import PostprocessConfig
from nucseg.errors import ConfigError
from nucseg.inference.postprocess import OTSU_RANGE, foreground_cut, probabilities_to_instances


def soft_edged_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """(3, H, W) maps of 9 round nuclei whose outer 2-px ring the network gives only 0.4 (as on unseen tissue),
    and their true instance labels."""
    h = w = 120
    yy, xx = np.mgrid[:h, :w]
    prob = np.zeros((3, h, w), np.float32)
    prob[0] = 0.02
    truth = np.zeros((h, w), np.uint32)
    for i, (cy, cx) in enumerate([(20 + 40 * a, 20 + 40 * b) for a in range(3) for b in range(3)], start=1):
        r = np.hypot(yy - cy, xx - cx)
        truth[r <= 10] = i
        prob[0][r <= 10] = 0.4
        prob[0][r <= 8] = 0.95
        prob[2][r <= 10] = np.clip(1 - r[r <= 10] / 10, 0, 1)
    return prob, truth


def test_otsu_keeps_the_soft_rim_that_a_fixed_half_cuts_away():
    prob, truth = soft_edged_nuclei()
    fixed = probabilities_to_instances(prob, PostprocessConfig())
    otsu = probabilities_to_instances(prob, PostprocessConfig(foreground_method="otsu"))
    assert fixed.max() == otsu.max() == truth.max()
    true_area = np.count_nonzero(truth)
    assert np.count_nonzero(fixed) < 0.75 * true_area  # r 8 of 10: 64 % of the area
    assert np.count_nonzero(otsu) == true_area
    assert 0.02 < foreground_cut(prob[0], PostprocessConfig(foreground_method="otsu")) < 0.4


def test_otsu_is_clipped_and_falls_back_on_a_map_without_nuclei():
    config = PostprocessConfig(foreground_method="otsu", foreground_threshold=0.6)
    glass = np.full((64, 64), 0.01, np.float32)
    assert foreground_cut(glass, config) == 0.6  # one class only: the fixed threshold
    noise = np.random.default_rng(0).uniform(0.0, 0.1, (64, 64)).astype(np.float32)
    assert foreground_cut(noise, config) == OTSU_RANGE[0]  # faint noise is not cut at 0.05
    fixed = PostprocessConfig(foreground_threshold=0.6)
    assert foreground_cut(noise, fixed) == 0.6


def test_unknown_method_is_refused():
    with pytest.raises(ConfigError, match="foreground method"):
        PostprocessConfig(foreground_method="triangle")


def test_cli_option_is_recorded_and_bad_values_are_refused(tmp_path, monkeypatch, capsys):
    install_blobnet(monkeypatch)
    image, truth = blob_image((160, 160), n=9)
    path = tmp_path / "tile.png"
    Image.fromarray(image).save(path)
    args = ["predict", str(path), "--model", "unet-efficientnet-b0", "--tile-size", "128", "--overlap", "32",
            "--quiet"]
    assert main([*args, "--out", str(tmp_path / "otsu"), "--foreground-threshold", "otsu"]) == 0
    config = json.loads((tmp_path / "otsu" / "tile_predict.json").read_text())["config"]["postprocess"]
    assert config["foreground_method"] == "otsu"
    assert main([*args, "--out", str(tmp_path / "fixed"), "--foreground-threshold", "0.3"]) == 0
    config = json.loads((tmp_path / "fixed" / "tile_predict.json").read_text())["config"]["postprocess"]
    assert config["foreground_method"] == "fixed" and config["foreground_threshold"] == 0.3
    assert main([*args, "--out", str(tmp_path / "bad"), "--foreground-threshold", "half"]) == 2
    assert "--foreground-threshold 'half'" in capsys.readouterr().err
