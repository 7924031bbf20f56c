"""Object-level metrics of instance label maps: one-to-one matching, object F1, PQ (Kirillov 2019), AJI (Kumar 2017).

Everything comes from one sparse contingency table of (truth id, prediction id) overlaps built with `np.bincount`
over the pixels, so a 1000x1000 tile with hundreds of nuclei is scored in milliseconds, and the matched pairs and
the FP / FN ids are kept for overlays and tables (DESIGN.md rule 7).

Conventions:
    * A truth and a predicted object match when their IoU is at least the threshold: "F1 at IoU >= 0.5" means
      what it says. Above 0.5 a match is unique by construction (a pixel set cannot overlap two disjoint sets by
      more than half of each union); at exactly 0.5 it is not (a truth cut into two equal halves has IoU 0.5 with
      each), so at thresholds <= 0.5 the candidate pairs are assigned one-to-one by the Hungarian algorithm (maximum
      total IoU), solved independently on each connected group of overlapping objects; isolated pairs skip it.
    * Zero division: a ratio with denominator 0 is 1.0 ("nothing to get wrong"), so two empty label maps score 1.0
      everywhere. SQ is 0.0 when nothing matched but there were objects.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError
from nucseg.metrics.pixel import as_label_array, check_same_shape

__all__ = ["MatchResult", "aji", "match_instances", "object_metrics"]


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 1.0


def _compact(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids of the objects sorted, per-pixel index 0 = background / 1..n, object areas)."""
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.intp), np.zeros(0, np.int64)
    top = int(flat.max())
    if top <= 2 * flat.size + (1 << 20):  # dense ids: O(n) bincount + lookup table
        flat = flat.astype(np.intp, copy=False)
        counts = np.bincount(flat)
        ids = np.flatnonzero(counts)
        ids = ids[ids > 0]
        lut = np.zeros(top + 1, np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids.astype(np.int64), lut[flat], counts[ids].astype(np.int64)
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)  # huge sparse ids
    has_bg = uniq[0] == 0
    index = inverse.reshape(-1).astype(np.intp) + (0 if has_bg else 1)
    start = 1 if has_bg else 0
    return uniq[start:].astype(np.int64), index, counts[start:].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class _Overlaps:
    """Sparse contingency table: objects of each side and every overlapping (truth, prediction) pair."""

    truth_ids: np.ndarray
    pred_ids: np.ndarray
    truth_area: np.ndarray
    pred_area: np.ndarray
    pt: np.ndarray  # compact truth index (0-based) of each overlapping pair, sorted by (pt, pp)
    pp: np.ndarray  # compact prediction index (0-based)
    inter: np.ndarray
    union: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        return self.inter / self.union


def _overlaps(truth: Any, pred: Any) -> _Overlaps:
    t = as_label_array(truth, "ground truth")
    p = as_label_array(pred, "prediction")
    check_same_shape(t, p)
    t_ids, ti, t_area = _compact(t.ravel())
    p_ids, pi, p_area = _compact(p.ravel())
    both = (ti > 0) & (pi > 0)
    stride = p_ids.size + 1
    key = ti[both].astype(np.int64) * stride + pi[both]
    n_cells = (t_ids.size + 1) * stride
    if n_cells <= 4 * key.size + (1 << 20):
        counts = np.bincount(key, minlength=n_cells)
        keys = np.flatnonzero(counts)
        inter = counts[keys]
    else:
        keys, inter = np.unique(key, return_counts=True)
    pt, pp = keys // stride - 1, keys % stride - 1
    inter = inter.astype(np.int64)
    union = t_area[pt] + p_area[pp] - inter
    return _Overlaps(t_ids, p_ids, t_area, p_area, pt, pp, inter, union)


def _hungarian(pt: np.ndarray, pp: np.ndarray, iou: np.ndarray, n_truth: int) -> np.ndarray:
    """Indices of the edges kept by a maximum-IoU one-to-one assignment, per connected group of edges."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_pred = int(pp.max()) + 1 if pp.size else 0
    t_deg = np.bincount(pt, minlength=n_truth)
    p_deg = np.bincount(pp, minlength=n_pred)
    simple = (t_deg[pt] == 1) & (p_deg[pp] == 1)  # isolated pairs need no assignment
    keep = [np.flatnonzero(simple)]
    rest = np.flatnonzero(~simple)
    if rest.size:
        n = n_truth + n_pred
        graph = coo_matrix((np.ones(rest.size), (pt[rest], n_truth + pp[rest])), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        edge_comp = comp[pt[rest]]
        order = np.argsort(edge_comp, kind="stable")
        bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
        for group in np.split(rest[order], bounds):
            rows, r_inv = np.unique(pt[group], return_inverse=True)
            cols, c_inv = np.unique(pp[group], return_inverse=True)
            weight = np.zeros((rows.size, cols.size))
            weight[r_inv, c_inv] = iou[group]
            edge_at = np.full((rows.size, cols.size), -1, np.int64)
            edge_at[r_inv, c_inv] = group
            r, c = linear_sum_assignment(weight, maximize=True)
            chosen = edge_at[r, c]
            keep.append(chosen[chosen >= 0])
    return np.sort(np.concatenate(keep))


@dataclasses.dataclass(frozen=True)
class MatchResult:
    """One-to-one matching of truth and predicted nuclei, with the ids behind every count.

    Attributes:
        pairs: (K, 2) int array of matched (truth_id, pred_id), sorted by truth id.
        ious: (K,) IoU of each matched pair.
        fp_ids: ids of predicted nuclei without a match (false positives), sorted.
        fn_ids: ids of truth nuclei without a match (false negatives), sorted.
        n_truth: number of truth nuclei.
        n_pred: number of predicted nuclei.
        iou_threshold: pairs match when their IoU is at least this.
        aji: Aggregated Jaccard Index (Kumar et al. 2017), independent of the threshold.
        aji_intersection: AJI's numerator C (pixels), for pooling over images.
        aji_union: AJI's denominator U (pixels), for pooling over images.
    """

    pairs: np.ndarray
    ious: np.ndarray
    fp_ids: np.ndarray
    fn_ids: np.ndarray
    n_truth: int
    n_pred: int
    iou_threshold: float
    aji: float
    aji_intersection: int
    aji_union: int

    @property
    def tp(self) -> int:
        """Matched pairs."""
        return int(self.pairs.shape[0])

    @property
    def fp(self) -> int:
        """Predicted nuclei without a match."""
        return int(self.fp_ids.size)

    @property
    def fn(self) -> int:
        """Truth nuclei without a match."""
        return int(self.fn_ids.size)

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1.0 when nothing was predicted."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 1.0 when the truth has no nuclei."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """Object F1 = 2TP / (2TP + FP + FN) (equal to DQ); 1.0 when both are empty."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def dq(self) -> float:
        """Detection quality TP / (TP + FP/2 + FN/2); 1.0 when both are empty."""
        return _ratio(self.tp, self.tp + 0.5 * self.fp + 0.5 * self.fn)

    @property
    def sq(self) -> float:
        """Segmentation quality: mean IoU of the matched pairs; 0.0 without matches (1.0 when both are empty)."""
        if self.tp:
            return float(self.ious.mean())
        return 1.0 if self.n_truth == 0 and self.n_pred == 0 else 0.0

    @property
    def pq(self) -> float:
        """Panoptic quality SQ x DQ (Kirillov et al. 2019)."""
        return self.sq * self.dq


def _aji_parts(ov: _Overlaps) -> tuple[int, int]:
    """AJI's C and U: each truth object takes the prediction of highest IoU (ties: lowest id, as HoVer-Net's
    ``get_fast_aji`` argmax); C sums those intersections, U those unions plus the areas of unpaired truths and of
    predictions never chosen. A prediction chosen by several truths counts in each of their unions."""
    used_truth = np.zeros(ov.truth_ids.size, bool)
    used_pred = np.zeros(ov.pred_ids.size, bool)
    c = u = 0
    if ov.pt.size:
        order = np.lexsort((ov.pp, -ov.iou, ov.pt))
        sorted_t = ov.pt[order]
        best = order[np.r_[True, sorted_t[1:] != sorted_t[:-1]]]
        c, u = int(ov.inter[best].sum()), int(ov.union[best].sum())
        used_truth[ov.pt[best]] = True
        used_pred[ov.pp[best]] = True
    u += int(ov.truth_area[~used_truth].sum()) + int(ov.pred_area[~used_pred].sum())
    return c, u


def _check_threshold(iou_threshold: float) -> float:
    thr = float(iou_threshold)
    if not 0.0 < thr <= 1.0:
        raise InvalidInputError(f"IoU threshold {iou_threshold} must lie in (0, 1] (0.5 is the usual choice)")
    return thr


def match_instances(truth: Any, pred: Any, iou_threshold: float = 0.5) -> MatchResult:
    """Match truth and predicted nuclei one-to-one by IoU.

    Args:
        truth: ground-truth instance labels (H, W), 0 = background; ids need not be consecutive.
        pred: predicted instance labels, same shape.
        iou_threshold: a pair matches when its IoU is at least this (in (0, 1]); at 0.5 and below the Hungarian
            algorithm makes the matching one-to-one (maximum total IoU).

    Returns:
        The `MatchResult` with pairs, their IoUs, FP / FN ids and AJI.

    Raises:
        InvalidInputError: shapes differ, inputs are not label maps, or the threshold is outside (0, 1].
    """
    thr = _check_threshold(iou_threshold)
    ov = _overlaps(truth, pred)
    iou = ov.iou
    cand = np.flatnonzero(iou >= thr)
    if thr <= 0.5 and cand.size:
        cand = cand[_hungarian(ov.pt[cand], ov.pp[cand], iou[cand], ov.truth_ids.size)]
    pt, pp = ov.pt[cand], ov.pp[cand]
    matched_t = np.zeros(ov.truth_ids.size, bool)
    matched_p = np.zeros(ov.pred_ids.size, bool)
    matched_t[pt] = True
    matched_p[pp] = True
    c, u = _aji_parts(ov)
    return MatchResult(
        pairs=np.stack([ov.truth_ids[pt], ov.pred_ids[pp]], axis=1).reshape(-1, 2),
        ious=iou[cand].astype(np.float64),
        fp_ids=ov.pred_ids[~matched_p],
        fn_ids=ov.truth_ids[~matched_t],
        n_truth=int(ov.truth_ids.size),
        n_pred=int(ov.pred_ids.size),
        iou_threshold=thr,
        aji=_ratio(c, u),
        aji_intersection=c,
        aji_union=u,
    )


def aji(truth: Any, pred: Any) -> float:
    """Aggregated Jaccard Index (Kumar et al., IEEE TMI 2017), as HoVer-Net's ``get_fast_aji``.

    Each truth nucleus is paired with the predicted nucleus of highest IoU (a prediction may serve several truths);
    AJI = sum of paired intersections / (sum of paired unions + areas of unpaired truths + areas of predictions
    paired with no truth). Two empty label maps score 1.0; one empty side scores 0.0.

    Args:
        truth: ground-truth instance labels (H, W).
        pred: predicted instance labels, same shape.

    Returns:
        AJI in [0, 1].
    """
    c, u = _aji_parts(_overlaps(truth, pred))
    return _ratio(c, u)


def object_metrics(truth: Any, pred: Any, iou_threshold: float = 0.5) -> dict[str, float | int]:
    """Object F1 / precision / recall, AJI, PQ, SQ, DQ and the TP / FP / FN counts.

    Args:
        truth: ground-truth instance labels (H, W).
        pred: predicted instance labels, same shape.
        iou_threshold: matching threshold (IoU at least this).

    Returns:
        Dict with keys f1, precision, recall, aji, pq, sq, dq, tp, fp, fn.
    """
    return match_to_dict(match_instances(truth, pred, iou_threshold))


def match_to_dict(m: MatchResult) -> dict[str, float | int]:
    """The summary numbers of a `MatchResult` as a plain dict (keys as `object_metrics`)."""
    return {"f1": m.f1, "precision": m.precision, "recall": m.recall, "aji": m.aji, "pq": m.pq, "sq": m.sq,
            "dq": m.dq, "tp": m.tp, "fp": m.fp, "fn": m.fn}
