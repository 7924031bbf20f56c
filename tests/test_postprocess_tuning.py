"""Re-choosing the watershed thresholds on labelled images: it finds a better setting when there is one, keeps
the base setting on noise, and a fine-tuned model carries what it chose."""

from __future__ import annotations

import json

import numpy as np

from nucseg.config import PostprocessConfig
from nucseg.inference.postprocess import probabilities_to_instances
from nucseg.metrics.matching import aji
from nucseg.training.postprocess_tuning import default_grid, describe_tuning, tune_postprocess
from nucseg.training.targets import instance_targets


def touching_pairs(n_pairs: int = 6, seed: int = 0) -> np.ndarray:
    """Labels with pairs of discs that touch (a watershed must part them) spread over a 200 x 300 image."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((200, 300), np.uint32)
    yy, xx = np.mgrid[:200, :300]
    for k in range(n_pairs):
        cy, cx = 40 + 60 * (k // 3) + rng.integers(-5, 5), 50 + 100 * (k % 3) + rng.integers(-5, 5)
        for j, dx in enumerate((-9, 9)):
            labels[(yy - cy) ** 2 + (xx - cx - dx) ** 2 <= 100] = 2 * k + j + 1
    return labels


def faint_maps(labels: np.ndarray) -> np.ndarray:
    """A network that found every nucleus but whose distance map peaks at 0.35 and misses the contours."""
    maps = instance_targets(labels)
    maps[1] = 0.0
    maps[2] *= 0.35
    return maps


def test_tuning_finds_seeds_a_faint_distance_map_needs():
    truths = [touching_pairs(seed=s) for s in range(2)]
    probs = [faint_maps(t) for t in truths]
    base = PostprocessConfig(0.5, 0.4, 20, 5)  # seeds need distance > 0.4: none, so each touching pair merges
    result = tune_postprocess(probs, truths, base)
    assert result.base_aji < 0.75, "the base thresholds should merge the touching pairs"
    assert result.config.marker_threshold < 0.35 and result.aji > 0.9 and result.gain > 0.15
    assert result.aji == np.mean([aji(t, probabilities_to_instances(p, result.config)) for p, t in zip(probs, truths)])
    assert "re-tuned on 2 validation images" in describe_tuning(result.to_dict())


def test_tuning_keeps_the_base_setting_when_nothing_beats_it_clearly():
    truth = touching_pairs()
    probs = [instance_targets(truth)]  # perfect maps: the base setting is already exact
    base = PostprocessConfig(0.5, 0.4, 20, 5)
    result = tune_postprocess(probs, [truth], base)
    assert result.config == base and result.aji == result.base_aji == 1.0
    assert "kept" in describe_tuning(result.to_dict())


def test_default_grid_spans_the_base_setting():
    base = PostprocessConfig(0.5, 0.3, 40, 15)
    grid = default_grid(base)
    assert base in grid and len(grid) == len(set(grid)) == 3 * 5 * 2 * 2
    assert {c.min_area for c in grid} == {20, 40} and {c.min_marker_area for c in grid} == {5, 15}


def test_finetuned_model_carries_the_thresholds_it_chose(tmp_path):
    from test_finetune import TINY, drain, tiny_model_folder, tiny_pairs

    from nucseg.config import FinetuneConfig
    from nucseg.training.finetune import iter_finetune

    pairs = tiny_pairs()
    base = tiny_model_folder(tmp_path / "models")
    config = FinetuneConfig(base_model=str(base), **{**TINY, "epochs": 1, "tune_postprocess": True})
    _, result = drain(iter_finetune(pairs[:2], pairs[2:], config, tmp_path / "run"))
    cfg = json.loads((result.model_dir / "config.json").read_text())
    assert cfg["postprocess_tuning"] == result.postprocess_tuning and result.postprocess_tuning["images"] == 1
    assert cfg["postprocess"] == result.postprocess_tuning["chosen"]

    off = FinetuneConfig(base_model=str(base), **{**TINY, "epochs": 1})  # off by default
    _, result = drain(iter_finetune(pairs[:2], pairs[2:], off, tmp_path / "run-off"))
    cfg = json.loads((result.model_dir / "config.json").read_text())
    assert result.postprocess_tuning is None and "postprocess_tuning" not in cfg
