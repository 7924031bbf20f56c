"""TP / FP / FN maps, their colours on the image, and outlines."""

import numpy as np
import pytest

from nucseg.errors import InvalidInputError
from nucseg.metrics.matching import match_instances
from nucseg.metrics.overlays import (
    CONFUSION_COLORS,
    FN,
    FP,
    TN,
    TP,
    blend_overlay,
    contours,
    object_overlay,
    pixel_confusion_map,
)


def scene():
    """Truth 1 matched by pred 7 (IoU 0.6), truth 5 missed (pred 3 has IoU 1/3), pred 9 alone."""
    truth = np.zeros((20, 20), np.uint16)
    pred = np.zeros((20, 20), np.uint16)
    truth[0:4, 0:4] = 1
    truth[10:14, 10:14] = 5
    pred[0:4, 1:5] = 7
    pred[10:14, 12:16] = 3
    pred[16:18, 0:2] = 9
    return truth, pred


def test_colours_are_the_reports():
    assert CONFUSION_COLORS == {1: (0, 255, 255), 2: (255, 0, 255), 3: (255, 255, 0)}
    assert (TN, TP, FP, FN) == (0, 1, 2, 3)


def test_pixel_confusion_map_codes():
    truth, pred = scene()
    codes = pixel_confusion_map(truth, pred)
    assert codes.dtype == np.uint8 and codes.shape == truth.shape
    assert codes[0, 0] == FN  # truth only
    assert codes[0, 2] == TP
    assert codes[0, 4] == FP  # pred only
    assert codes[19, 19] == TN
    counts = np.bincount(codes.ravel(), minlength=4)
    assert counts.tolist() == [352, 20, 16, 12]  # 32 truth, 36 predicted, 20 shared pixels


def test_object_overlay_from_match():
    truth, pred = scene()
    codes = object_overlay(truth, pred, match_instances(truth, pred))
    assert codes.dtype == np.uint8
    assert (codes[pred == 7] == TP).all()
    assert (codes[pred == 9] == FP).all()
    inside = (truth == 5) & (pred == 3)
    assert (codes[(truth == 5) & (pred != 3)] == FN).all()  # missed nucleus drawn over the FP that overlaps it...
    assert (codes[inside] == FN).any() and (codes[inside] == FP).any()  # ...and the FP's outline over that
    assert (codes[(pred == 3) & (truth == 0)] == FP).all()
    assert (codes[(truth == 0) & (pred == 0)] == TN).all()
    assert (codes[(truth == 1) & (pred == 0)] == TN).all()  # a matched truth shows through its prediction only


def test_a_false_positive_on_a_missed_nucleus_still_shows_as_one():
    """Before, a missed nucleus was drawn over everything: an FP lying on it showed no FP pixel at all (98 of the
    548 FP of the default model on the five validation tiles)."""
    truth = np.zeros((30, 30), np.uint16)
    pred = np.zeros((30, 30), np.uint16)
    truth[2:20, 2:20] = 1    # missed: the prediction inside it is far too small to match (IoU 0.05)
    pred[8:12, 8:12] = 4     # FP wholly inside the missed nucleus
    truth[22:26, 22:26] = 2  # a small missed nucleus...
    pred[21:29, 21:29] = 6   # ...wholly inside a larger FP (IoU 0.25)
    pred[0:2, 25:27] = 8     # FP of 4 px, all of it outline
    truth[0:3, 24:28] = 3    # on a missed nucleus
    match = match_instances(truth, pred)
    assert sorted(match.fp_ids) == [4, 6, 8] and sorted(match.fn_ids) == [1, 2, 3]
    codes = object_overlay(truth, pred, match)
    for label in (4, 6, 8):
        assert (codes[pred == label] == FP).any(), label
    for label in (1, 2, 3):
        assert (codes[truth == label] == FN).any(), label
    assert (codes[(truth == 1) & (pred == 0)] == FN).all()


def test_blend_overlay_colours_and_alpha():
    codes = np.array([[TN, TP], [FP, FN]], np.uint8)
    grey = np.full((2, 2, 3), 100, np.uint8)
    flat = blend_overlay(grey, codes, alpha=1.0)
    assert flat[0, 0].tolist() == [100, 100, 100]
    assert flat[0, 1].tolist() == [0, 255, 255]
    assert flat[1, 0].tolist() == [255, 0, 255]
    assert flat[1, 1].tolist() == [255, 255, 0]
    half = blend_overlay(grey, codes, alpha=0.5)
    assert half.dtype == np.uint8
    assert half[0, 1].tolist() == [50, 178, 178]
    assert half[0, 0].tolist() == [100, 100, 100]
    assert blend_overlay(np.full((2, 2), 0.5), codes, alpha=0.0)[0, 1].tolist() == [128, 128, 128]  # grey float in


def test_blend_overlay_rejects_mismatch():
    with pytest.raises(InvalidInputError, match="shape"):
        blend_overlay(np.zeros((3, 3, 3), np.uint8), np.zeros((2, 2), np.uint8))
    with pytest.raises(InvalidInputError, match="alpha"):
        blend_overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8), alpha=2)


def test_contours_inner_boundary_keeps_ids():
    labels = np.zeros((8, 8), np.uint16)
    labels[1:5, 1:5] = 9
    out = contours(labels)
    assert out.dtype == np.uint16
    assert (out[1:5, 1:5] > 0).sum() == 12  # the ring of a 4x4 square
    assert set(np.unique(out)) == {0, 9}
    assert out[2:4, 2:4].sum() == 0 and (out[labels == 0] == 0).all()
