"""One naming rule (nucseg.io.names): outputs, evaluation pairs and fine-tuning pairs take the same stem of a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nucseg.io.names import pair_stem, plain_stem


@pytest.mark.parametrize("name, plain, pair", [
    ("a.1.png", "a.1", "a.1"), ("a.2_labels.tif", "a.2_labels", "a.2"), ("x.ome.tif", "x", "x"),
    ("v2.0_scan_mask.png", "v2.0_scan_mask", "v2.0_scan"), ("p_prob.npy", "p_prob", "p"), ("_labels.png", "_labels", "_labels"),
])
def test_one_stem_rule(name, plain, pair):
    assert plain_stem(Path(name)) == plain and pair_stem(Path(name)) == pair


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    """Images a.1.png and a.2.png and their labels (a.2 has one nucleus more than a.1)."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for k in (1, 2):
        image = np.full((40, 40, 3), 230, np.uint8)
        label = np.zeros((40, 40), np.uint8)
        for j in range(k):
            label[4 + 16 * j : 12 + 16 * j, 4:12] = j + 1
        Image.fromarray(image).save(images / f"a.{k}.png")
        Image.fromarray(label).save(labels / f"a.{k}.png")
    return images, labels


def test_fine_tuning_pairs_each_image_with_its_own_labels(tmp_path):
    """`a.1.png` and `a.2.png` were both stem "a": each image got a.2's labels and fine-tuning trained on them."""
    from nucseg.training.dataset import load_pairs, pair_files

    images, labels = _folders(tmp_path)
    assert [(i.name, lab.name) for i, lab in pair_files(images, labels)] == [("a.1.png", "a.1.png"),
                                                                              ("a.2.png", "a.2.png")]
    pairs = load_pairs(images, labels)
    assert [(p.name, int(p.labels.max())) for p in pairs] == [("a.1", 1), ("a.2", 2)]


def test_evaluation_pairs_by_the_same_rule(tmp_path):
    from nucseg.jobs.evaluate import pair_label_files

    _, labels = _folders(tmp_path)
    pred = tmp_path / "pred"
    pred.mkdir()
    for k in (1, 2):
        (pred / f"a.{k}_labels.png").write_bytes((labels / f"a.{k}.png").read_bytes())
    pairs, alone = pair_label_files(labels, pred)
    assert [(name, t.name, p.name) for name, t, p, _ in pairs] == [("a.1", "a.1.png", "a.1_labels.png"),
                                                                   ("a.2", "a.2.png", "a.2_labels.png")]
    assert not alone
