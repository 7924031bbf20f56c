"""Object matching, F1, PQ and AJI: hand-computed cases, edge cases, one-to-one guarantees and a slow reference."""

import numpy as np
import pytest

from nucseg.errors import InvalidInputError
from nucseg.metrics.matching import aji, match_instances, object_metrics
from nucseg.metrics.report import evaluate_labels, evaluate_many, metrics_to_csv


def two_squares():
    """Truth 1 (4x4 at 0,0) and 5 (4x4 at 10,10); pred 7 = truth 1 moved right by 1 (IoU 12/20 = 0.6),
    pred 3 = truth 5 moved right by 2 (IoU 8/24 = 1/3), pred 9 = a 2x2 blob alone (FP)."""
    truth = np.zeros((20, 20), np.uint16)
    pred = np.zeros((20, 20), np.uint16)
    truth[0:4, 0:4] = 1
    truth[10:14, 10:14] = 5
    pred[0:4, 1:5] = 7
    pred[10:14, 12:16] = 3
    pred[16:18, 0:2] = 9
    return truth, pred


def test_two_squares_by_hand():
    truth, pred = two_squares()
    m = match_instances(truth, pred, 0.5)
    assert m.pairs.tolist() == [[1, 7]]
    assert m.ious.tolist() == pytest.approx([0.6])
    assert m.fp_ids.tolist() == [3, 9]
    assert m.fn_ids.tolist() == [5]
    assert (m.tp, m.fp, m.fn) == (1, 2, 1)
    assert m.precision == pytest.approx(1 / 3)
    assert m.recall == pytest.approx(1 / 2)
    assert m.f1 == pytest.approx(2 / 5)
    assert m.dq == pytest.approx(1 / (1 + 1 + 0.5))
    assert m.sq == pytest.approx(0.6)
    assert m.pq == pytest.approx(0.6 * 0.4)
    # AJI: truth 1 -> pred 7 (12 / 20), truth 5 -> pred 3 (8 / 24), pred 9 unused (+4): 20 / 48
    assert m.aji == pytest.approx(20 / 48)
    assert (m.aji_intersection, m.aji_union) == (20, 48)
    assert aji(truth, pred) == pytest.approx(20 / 48)


def test_low_threshold_matches_more():
    truth, pred = two_squares()
    m = match_instances(truth, pred, 0.3)
    assert m.pairs.tolist() == [[1, 7], [5, 3]]
    assert (m.tp, m.fp, m.fn) == (2, 1, 0)
    assert m.sq == pytest.approx((0.6 + 1 / 3) / 2)


def test_split_object_matches_at_exactly_half():
    """One truth split in two equal halves: IoU exactly 0.5 with each. "F1 at IoU >= 0.5" counts one of them as a
    match (one-to-one: the other half is a false positive); a threshold just above 0.5 matches neither."""
    truth = np.zeros((6, 10), np.int32)
    truth[0:4, 0:8] = 1
    pred = np.zeros_like(truth)
    pred[0:4, 0:4] = 1
    pred[0:4, 4:8] = 2
    m = match_instances(truth, pred)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert m.ious.tolist() == [0.5] and m.pairs[0, 0] == 1
    assert m.f1 == pytest.approx(2 / 3) and m.pq == pytest.approx(0.5 * 2 / 3)
    assert m.aji == pytest.approx(16 / 48)  # one half paired (16 / 32), the other half only in the union
    above = match_instances(truth, pred, 0.5 + 1e-9)
    assert (above.tp, above.fp, above.fn) == (0, 2, 1) and above.f1 == 0.0 and above.sq == 0.0


def test_pair_at_exactly_the_threshold_matches():
    truth = np.zeros((4, 10), np.int32)
    truth[0, 0:7] = 3
    pred = np.zeros_like(truth)
    pred[0, 0:10] = 8  # IoU 7 / 10
    assert match_instances(truth, pred, 0.7).tp == 1
    assert match_instances(truth, pred, 0.71).tp == 0
    assert match_instances(truth, truth, 1.0).tp == 1  # identical objects match at 1.0


def test_merged_prediction_aji_over_penalises_and_matching_stays_one_to_one():
    truth = np.zeros((6, 10), np.int32)
    truth[0:4, 0:4] = 1
    truth[0:4, 4:8] = 2
    pred = (truth > 0).astype(np.int32) * 4
    assert aji(truth, pred) == pytest.approx(32 / 64)  # the merged prediction counts in both unions
    m = match_instances(truth, pred, 0.2)  # IoU 0.5 with each truth: Hungarian keeps one pair
    assert m.tp == 1 and m.fn == 1 and m.fp == 0
    assert m.pairs[0, 1] == 4


def test_hungarian_beats_greedy_below_half():
    """Strips on one row: t1=[0,10), t2=[10,20), p2=[0,4), p1=[4,14). IoU t1-p1 = 6/14, t1-p2 = 0.4, t2-p1 = 0.25.
    Greedy takes t1-p1 and stops at 1 match; the maximum-IoU assignment takes t1-p2 + t2-p1."""
    truth = np.zeros((1, 20), np.int32)
    truth[0, 0:10], truth[0, 10:20] = 1, 2
    pred = np.zeros_like(truth)
    pred[0, 0:4], pred[0, 4:14] = 2, 1
    m = match_instances(truth, pred, 0.2)
    assert m.pairs.tolist() == [[1, 2], [2, 1]]
    assert m.ious.tolist() == pytest.approx([0.4, 0.25])


def test_edge_cases_empty():
    empty = np.zeros((8, 8), np.uint8)
    some = empty.copy()
    some[1:3, 1:3] = 4
    both = match_instances(empty, empty)
    assert both.pairs.shape == (0, 2)
    assert (both.tp, both.fp, both.fn) == (0, 0, 0)
    assert (both.f1, both.precision, both.recall, both.pq, both.sq, both.dq, both.aji) == (1.0,) * 7
    no_pred = match_instances(some, empty)
    assert (no_pred.fn, no_pred.fn_ids.tolist(), no_pred.f1, no_pred.aji, no_pred.pq) == (1, [4], 0.0, 0.0, 0.0)
    assert no_pred.precision == 1.0 and no_pred.recall == 0.0
    no_truth = match_instances(empty, some)
    assert (no_truth.fp, no_truth.fp_ids.tolist(), no_truth.f1, no_truth.aji) == (1, [4], 0.0, 0.0)
    assert no_truth.precision == 0.0 and no_truth.recall == 1.0


def test_identical_with_renamed_sparse_ids():
    truth, _ = two_squares()
    pred = np.where(truth == 1, 4_000_000_000, np.where(truth == 5, 17, 0)).astype(np.uint32)
    m = match_instances(truth, pred)
    assert sorted(m.pairs.tolist()) == [[1, 4_000_000_000], [5, 17]]
    assert (m.f1, m.pq, m.aji) == (1.0, 1.0, 1.0)


def test_symmetry_of_counts():
    truth, pred = two_squares()
    a, b = match_instances(truth, pred, 0.3), match_instances(pred, truth, 0.3)
    assert (a.tp, a.fp, a.fn) == (b.tp, b.fn, b.fp)
    assert a.f1 == b.f1 and a.pq == pytest.approx(b.pq)
    assert sorted(map(tuple, a.pairs[:, ::-1].tolist())) == sorted(map(tuple, b.pairs.tolist()))


def random_blobs(seed, shape=(64, 64)):
    from scipy import ndimage as ndi
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.random(shape), 2)
    return label(noise > np.quantile(noise, 0.6))


def reference_metrics(truth, pred, thr):
    """Slow, loop-based reference in the manner of HoVer-Net's get_fast_aji / get_fast_pq."""
    from scipy.optimize import linear_sum_assignment

    t_ids, p_ids = np.unique(truth)[1:], np.unique(pred)[1:]
    inter = np.array([[np.sum((truth == t) & (pred == p)) for p in p_ids] for t in t_ids]).reshape(len(t_ids), -1)
    union = np.array([[np.sum((truth == t) | (pred == p)) for p in p_ids] for t in t_ids]).reshape(len(t_ids), -1)
    iou = inter / np.maximum(union, 1)
    best = iou.argmax(1)
    paired = iou.max(1) > 0
    c = inter[paired, best[paired]].sum()
    u = union[paired, best[paired]].sum() + sum((truth == t).sum() for t in t_ids[~paired])
    u += sum((pred == p).sum() for j, p in enumerate(p_ids) if j not in set(best[paired]))
    rows, cols = linear_sum_assignment(-iou)
    ok = iou[rows, cols] >= thr
    return c / u, int(ok.sum()), iou[rows[ok], cols[ok]].sum()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thr", [0.5, 0.3])
def test_against_slow_reference(seed, thr):
    truth = random_blobs(seed)
    pred = np.roll(truth, (1, 2 + seed % 3), axis=(0, 1))
    pred[pred % 5 == 0] = 0  # drop some nuclei
    other = random_blobs(seed + 100)
    pred = np.where((pred == 0) & (other > 0), other + 1000, pred)  # add and merge others
    ref_aji, ref_tp, ref_iou_sum = reference_metrics(truth, pred, thr)
    m = match_instances(truth, pred, thr)
    assert m.aji == pytest.approx(ref_aji)
    assert m.tp == ref_tp
    assert m.ious.sum() == pytest.approx(ref_iou_sum)
    # one-to-one: no id twice on either side
    assert len(set(m.pairs[:, 0])) == m.tp and len(set(m.pairs[:, 1])) == m.tp
    assert m.tp + m.fn == len(np.unique(truth)) - 1 and m.tp + m.fp == len(np.unique(pred)) - 1


def test_threshold_and_shape_validation():
    truth, pred = two_squares()
    with pytest.raises(InvalidInputError, match="threshold"):
        match_instances(truth, pred, 1.5)
    with pytest.raises(InvalidInputError, match="threshold"):
        match_instances(truth, pred, 0.0)
    with pytest.raises(InvalidInputError, match="shape"):
        match_instances(truth, pred[:10])


def test_object_metrics_keys():
    truth, pred = two_squares()
    out = object_metrics(truth, pred, 0.5)
    assert set(out) == {"f1", "precision", "recall", "aji", "pq", "sq", "dq", "tp", "fp", "fn"}
    assert out["tp"] == 1 and out["f1"] == pytest.approx(0.4)


def test_evaluate_labels_keys_and_pixel_vs_object_names():
    truth, pred = two_squares()
    out = evaluate_labels(truth, pred)
    assert set(out) == {"dice", "iou", "precision", "recall", "accuracy", "f1", "aji", "pq", "tp", "fp", "fn",
                        "object_precision", "object_recall", "sq", "dq"}
    assert out["precision"] == pytest.approx(20 / 36)  # pixels: 12 + 8 shared of 16 + 16 + 4 predicted
    assert out["object_precision"] == pytest.approx(1 / 3)
    with_prob = evaluate_labels(truth, pred, prob=(pred > 0).astype(float))
    assert "auc" in with_prob
    with pytest.raises(InvalidInputError, match="probability map"):
        evaluate_labels(truth, pred, prob=np.zeros((3, 3)))


def test_evaluate_many_mean_and_pooled(tmp_path):
    truth, pred = two_squares()
    rows, summary = evaluate_many([("a", truth, pred), ("b", truth, truth), (truth, np.zeros_like(truth))])
    assert [r["image"] for r in rows] == ["a", "b", "image_2"]
    assert summary["n_images"] == 3
    assert summary["f1"] == pytest.approx((0.4 + 1.0 + 0.0) / 3)
    assert (summary["tp"], summary["fp"], summary["fn"]) == (1 + 2, 2, 1 + 2)
    pooled = summary["pooled"]
    assert pooled["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 3))
    assert pooled["aji"] == pytest.approx((20 + 32 + 0) / (48 + 32 + 32))
    assert pooled["sq"] == pytest.approx((0.6 + 1 + 1) / 3)
    path = metrics_to_csv(rows, tmp_path / "m.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["image", "dice", "iou"] and "aji" in header and "object_recall" in header
    assert len(path.read_text().splitlines()) == 4


def test_metrics_to_csv_refuses_overwrite(tmp_path):
    from nucseg.errors import StoreError

    target = tmp_path / "m.csv"
    target.write_text("old")
    with pytest.raises(StoreError, match="m.csv"):
        metrics_to_csv([{"image": "a", "dice": 1.0}], target)
    assert target.read_text() == "old"
    metrics_to_csv([{"image": "a", "dice": 1.0}], target, overwrite=True)
    assert target.read_text().startswith("image,dice")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]  # no temporary leftovers


def test_speed_1000px_700_nuclei():
    import time

    rng = np.random.default_rng(0)
    truth = np.zeros((1000, 1000), np.uint32)
    centres = rng.integers(0, 980, (700, 2))
    for i, (y, x) in enumerate(centres, start=1):
        truth[y:y + 18, x:x + 18] = i
    pred = np.roll(truth, 3, axis=1)
    start = time.perf_counter()
    evaluate_labels(truth, pred, prob=rng.random(truth.shape))
    assert time.perf_counter() - start < 2.0
