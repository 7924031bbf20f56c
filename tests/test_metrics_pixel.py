"""Pixel metrics: confusion counts, the ratios with their 0/0 conventions, ROC AUC against a brute-force count."""

import warnings

import numpy as np
import pytest

from nucseg.errors import InvalidInputError
from nucseg.metrics.pixel import ConfusionCounts, confusion_counts, pixel_metrics, roc_auc


def squares():
    """Truth: a 4x4 square at (2, 2); prediction: the same square moved by (1, 1): 9 shared pixels."""
    truth = np.zeros((10, 10), np.uint16)
    pred = np.zeros((10, 10), np.int32)
    truth[2:6, 2:6] = 3
    pred[3:7, 3:7] = 8
    return truth, pred


def test_confusion_counts_by_hand():
    truth, pred = squares()
    c = confusion_counts(truth, pred)
    assert (c.tp, c.fp, c.fn, c.tn) == (9, 7, 7, 77)
    assert c.iou == pytest.approx(9 / 23)
    assert c.dice == pytest.approx(18 / 32)
    assert c.precision == pytest.approx(9 / 16)
    assert c.recall == pytest.approx(9 / 16)
    assert c.accuracy == pytest.approx(86 / 100)


def test_ids_do_not_matter_and_bool_masks_work():
    truth, pred = squares()
    assert confusion_counts(truth > 0, pred > 0) == confusion_counts(truth * 7, pred)


def test_zero_division_conventions():
    empty = np.zeros((5, 5), np.uint8)
    full = np.ones((5, 5), np.uint8)
    both = ConfusionCounts(0, 0, 0, 25)
    assert confusion_counts(empty, empty) == both
    assert (both.iou, both.dice, both.precision, both.recall, both.accuracy) == (1.0, 1.0, 1.0, 1.0, 1.0)
    no_pred = confusion_counts(full, empty)
    assert (no_pred.precision, no_pred.recall, no_pred.iou, no_pred.dice) == (1.0, 0.0, 0.0, 0.0)
    no_truth = confusion_counts(empty, full)
    assert (no_truth.precision, no_truth.recall, no_truth.iou, no_truth.dice) == (0.0, 1.0, 0.0, 0.0)
    assert ConfusionCounts(0, 0, 0, 0).accuracy == 1.0


def test_counts_add():
    assert ConfusionCounts(1, 2, 3, 4) + ConfusionCounts(10, 20, 30, 40) == ConfusionCounts(11, 22, 33, 44)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 4, 3), np.uint8), "2-D"),
    (np.full((4, 4), 0.5), "non-integer"),
    (np.full((4, 4), -1, np.int32), "negative"),
    (np.full((4, 4), "a"), "dtype"),
])
def test_bad_label_maps_raise(bad, match):
    with pytest.raises(InvalidInputError, match=match):
        confusion_counts(np.zeros((4, 4), np.uint8), bad)


def test_shape_mismatch_raises_with_both_shapes():
    with pytest.raises(InvalidInputError, match=r"\(4, 4\).*\(4, 5\)"):
        confusion_counts(np.zeros((4, 4)), np.zeros((4, 5)))


def brute_force_auc(fg, scores):
    pos, neg = scores[fg], scores[~fg]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint8])
@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count_with_ties(seed, dtype):
    rng = np.random.default_rng(seed)
    fg = rng.random((7, 9)) < 0.4
    scores = rng.integers(0, 5, (7, 9))  # many ties
    scores = np.where(fg, np.minimum(scores + 1, 4), scores).astype(dtype)
    assert roc_auc(fg, scores) == pytest.approx(brute_force_auc(fg.ravel(), scores.ravel()))


def test_auc_extremes_and_single_class():
    fg = np.zeros((4, 4), bool)
    fg[:2] = True
    prob = fg.astype(float)
    assert roc_auc(fg, prob) == 1.0
    assert roc_auc(fg, 1 - prob) == 0.0
    assert roc_auc(fg, np.full((4, 4), 0.3)) == 0.5
    with pytest.warns(RuntimeWarning, match="no foreground"):
        assert np.isnan(roc_auc(np.zeros((4, 4)), prob))
    with pytest.warns(RuntimeWarning, match="no background"):
        assert np.isnan(roc_auc(np.ones((4, 4)), prob))
    with pytest.raises(InvalidInputError, match="NaN"):
        roc_auc(fg, np.full((4, 4), np.nan))
    with pytest.raises(InvalidInputError, match="shape"):
        roc_auc(fg, np.zeros((3, 3)))


def test_pixel_metrics_keys():
    truth, pred = squares()
    assert set(pixel_metrics(truth, pred)) == {"iou", "dice", "precision", "recall", "accuracy"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pixel_metrics(truth, pred, prob=(pred > 0).astype(np.float32))
    assert set(out) == {"iou", "dice", "precision", "recall", "accuracy", "auc"}
    assert 0.0 <= out["auc"] <= 1.0
