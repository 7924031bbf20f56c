"""Held-out regions of the corrections, and the score a fine-tuned model is judged by.

Why not a held-out correction scored by plain AJI: a person corrects the base model's own prediction, so the
corrected labels are the base model's outlines wherever the person changed nothing. Scored against them, the base
model is pixel-exact on every nucleus that was accepted as it was, and any other model (the fine-tuned one first)
loses on those outlines whatever it learnt from the corrections: "base AJI 0.979, new 0.863, NOT better" every
time. And one held-out tile out of five decides on one tile.

What is done instead:

* `split_regions` holds out square blocks (`BLOCK` px at the model's resolution, a `fraction` of each correction's
  reviewed blocks, chosen at random with the seed) from *every* correction, so the verdict covers all the tiles
  the person corrected, one score per tile. A nucleus belongs to the block its centre lies in: its labels are
  either all trained on or all held out, never both. Training learns everywhere else (the held-out pixels get no
  loss: they are left out of the pair's reviewed mask, the mechanism `TrainingPair.reviewed` already provides).
  Corrections too small for two blocks are trained on whole (`MIN_BLOCK`).
* `heldout_parts` scores a prediction of one held-out crop inside its mask: AJI's intersection and union sums,
  pooled per tile and over all tiles. An outline the person accepted unchanged (a truth nucleus the base model
  outlines with IoU >= `ACCEPTED_IOU`) is credited whole to any model that finds that nucleus (IoU >= 0.5): the
  person checked that a nucleus is there, not the base model's pixels around it. Everything else, the nuclei the
  person drew, reshaped, split or merged, the false ones they deleted and the ones the base model missed, is
  scored pixel by pixel, as AJI does. Both models are scored by the same rules, so the comparison measures what the
  corrections taught. With a real ground truth (the developers' validation tiles) few nuclei are accepted outlines
  and the score is close to plain AJI.

No Qt here; the fine-tuning loop (`nucseg.training.finetune`) and `nucseg.training.validation` use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from nucseg.training.dataset import TrainingPair

#: side of a held-out block at the model's resolution (pixels): about 20 nuclei at 40x
BLOCK = 256
#: smaller corrections use smaller blocks, down to this side; below two of them a correction is not split
MIN_BLOCK = 64
#: image context around a held-out block when it is predicted (the network sees its neighbours, no labels)
CONTEXT = 32
#: a truth nucleus that the base model outlines at least this well was accepted as it was (see the module doc)
ACCEPTED_IOU = 0.9
#: a base model's nucleus with less of its area than this on truth nuclei was erased by the person (a false one)
REJECTED_SHARE = 0.1
#: matching threshold for "the model found this nucleus"
FOUND_IOU = 0.5
#: a block is eligible when at least this share of it was reviewed
MIN_REVIEWED = 0.5


@dataclasses.dataclass
class HeldOut:
    """The held-out crops of a set of corrections.

    Attributes:
        pairs: one crop per held-out block (image with context, its labels, and in `reviewed` the pixels scored).
        groups: the correction (tile) each crop comes from, for per-tile scores.
        kind: "regions" (blocks held out of the corrections) or "images" (whole validation images).
    """

    pairs: list[TrainingPair]
    groups: list[str]
    kind: str = "regions"

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def pixels(self) -> int:
        """Pixels predicted to score them all (crops with their context)."""
        return int(sum(p.labels.size for p in self.pairs))


def block_side(shape: Sequence[int]) -> int:
    """The held-out block side for a correction of this (h, w): `BLOCK`, smaller for small corrections (a
    multiple of 32 from `MIN_BLOCK`), so that at least two blocks fit along its shorter side when possible."""
    short = min(int(shape[0]), int(shape[1]))
    if short >= 2 * BLOCK:
        return BLOCK
    return max(MIN_BLOCK, (short // 2) // 32 * 32)


def _seed_for(name: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(name.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def _centroid_cells(labels: np.ndarray, oy: int, ox: int, side: int, rows: int, cols: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, cell index of each id's centre: row * cols + col, or -1 outside the grid)."""
    flat = labels.ravel().astype(np.intp)
    counts = np.bincount(flat)
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    if not ids.size:
        return ids, ids
    yy, xx = np.indices(labels.shape)
    cy = np.bincount(flat, weights=yy.ravel())[ids] / counts[ids]
    cx = np.bincount(flat, weights=xx.ravel())[ids] / counts[ids]
    r, c = np.floor((cy - oy) / side).astype(int), np.floor((cx - ox) / side).astype(int)
    inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    return ids, np.where(inside, r * cols + c, -1)


def split_pair(pair: TrainingPair, fraction: float, seed: int = 0) -> tuple[TrainingPair, list[TrainingPair]]:
    """(the pair with its held-out part removed from what it teaches, the held-out crops); the pair unchanged and
    no crop when it is too small to split or `fraction` is 0 (see the module doc)."""
    h, w = pair.labels.shape
    side = block_side((h, w))
    rows, cols = h // side, w // side
    if fraction <= 0 or rows * cols < 2:
        return pair, []
    oy, ox = (h - rows * side) // 2, (w - cols * side) // 2
    reviewed = np.ones((h, w), bool) if pair.reviewed is None else pair.reviewed
    share = reviewed[oy : oy + rows * side, ox : ox + cols * side].reshape(rows, side, cols, side).mean(axis=(1, 3))
    eligible = np.flatnonzero(share.ravel() >= MIN_REVIEWED)
    if eligible.size < 2:
        return pair, []
    n = int(np.clip(round(fraction * eligible.size), 1, eligible.size - 1))
    chosen = np.sort(_seed_for(pair.name, seed).choice(eligible, n, replace=False))
    labels = np.asarray(pair.labels)
    uniq, inverse = np.unique(labels, return_inverse=True)
    compact = inverse.reshape(labels.shape) + (0 if uniq[0] == 0 else 1)  # ids 1..n (slides' ids run to millions)
    ids, cell_of = _centroid_cells(compact, oy, ox, side, rows, cols)
    lut = np.full(int(compact.max()) + 1, -1, np.int64)  # nucleus -> its cell
    lut[ids] = cell_of
    nucleus_cell = lut[compact]  # -1 on background and on nuclei centred outside the grid
    cell_grid = np.full((h, w), -1, np.int64)
    cell_grid[oy : oy + rows * side, ox : ox + cols * side] = (
        np.arange(rows * cols).reshape(rows, cols).repeat(side, axis=0).repeat(side, axis=1))
    # a pixel belongs to a held-out block when its nucleus is centred in one, or it is background inside one
    owner = np.where(labels > 0, nucleus_cell, cell_grid)
    held = np.isin(owner, chosen) & reviewed
    remaining = reviewed & ~held
    if not remaining.any() or not held.any():
        return pair, []
    crops = []
    for cell in chosen:
        mine = (owner == cell) & reviewed
        if not mine.any():
            continue
        ys, xs = np.nonzero(mine)
        y0, y1 = max(int(ys.min()) - CONTEXT, 0), min(int(ys.max()) + 1 + CONTEXT, h)
        x0, x1 = max(int(xs.min()) - CONTEXT, 0), min(int(xs.max()) + 1 + CONTEXT, w)
        r, c = divmod(int(cell), cols)
        crops.append(TrainingPair(pair.image[y0:y1, x0:x1], labels[y0:y1, x0:x1],
                                  f"{pair.name}@{oy + r * side},{ox + c * side}", pair.source, mine[y0:y1, x0:x1]))
    return dataclasses.replace(pair, reviewed=remaining), crops


def split_regions(pairs: Sequence[TrainingPair], fraction: float, seed: int = 0
                  ) -> tuple[list[TrainingPair], HeldOut]:
    """Every pair with a `fraction` of its reviewed blocks held out (see the module doc): (what trains, what is
    held out). Pairs too small to split train whole."""
    train, held, groups = [], [], []
    for pair in pairs:
        kept, crops = split_pair(pair, fraction, seed)
        train.append(kept)
        held.extend(crops)
        groups.extend([pair.name] * len(crops))
    return train, HeldOut(held, groups)


def whole_images(pairs: Sequence[TrainingPair]) -> HeldOut:
    """Validation images given as such (e.g. ``nucseg finetune --val-images``): each one its own group."""
    return HeldOut(list(pairs), [p.name for p in pairs], "images")


@dataclasses.dataclass(frozen=True)
class Parts:
    """Pooled counts of a held-out score: AJI's intersection and union, with and without the accepted-outline
    credit, and nucleus counts (truth nuclei, accepted outlines among them, nuclei found at IoU >= 0.5)."""

    c: int = 0
    u: int = 0
    aji_c: int = 0
    aji_u: int = 0
    nuclei: int = 0
    accepted: int = 0
    found: int = 0

    def __add__(self, other: Parts) -> Parts:
        return Parts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    @property
    def score(self) -> float:
        return self.c / self.u if self.u else 1.0

    @property
    def aji(self) -> float:
        return self.aji_c / self.aji_u if self.aji_u else 1.0


def heldout_parts(truth: np.ndarray, pred: np.ndarray, reference: np.ndarray | None,
                  mask: np.ndarray | None) -> Parts:
    """Score `pred` against `truth` inside `mask`, judging what a person judged (module doc): a truth nucleus the
    reference (the base model's prediction of the same pixels; None: no credit) outlined with IoU >=
    `ACCEPTED_IOU` was accepted as it was, and a reference nucleus with almost nothing of the truth under it
    (`REJECTED_SHARE`) was erased. A predicted nucleus that finds either (IoU >= `FOUND_IOU`) takes that outline
    before AJI is computed: the person said a nucleus is there (or is not), not where its border runs."""
    from nucseg.metrics.matching import match_instances

    truth, pred = np.asarray(truth), np.asarray(pred)
    if mask is not None:
        truth, pred = truth * mask, pred * mask
    plain = match_instances(truth, pred, FOUND_IOU)
    credited = pred
    accepted = np.zeros(0, np.int64)
    if reference is not None:
        ref = np.asarray(reference) * mask if mask is not None else np.asarray(reference)
        accepted = match_instances(truth, ref, ACCEPTED_IOU).pairs[:, 0]
        snaps = [(truth, plain.pairs[np.isin(plain.pairs[:, 0], accepted)])]
        rejected = _rejected(ref, truth)
        if rejected.size:
            erased = np.where(np.isin(ref, rejected), ref, 0)
            refound = match_instances(erased, pred, FOUND_IOU).pairs
            snaps.append((erased, refound[~np.isin(refound[:, 1], snaps[0][1][:, 1])]))
        if any(found.size for _, found in snaps):
            credited = pred.astype(np.int64, copy=True)
            for _, found in snaps:
                credited[np.isin(credited, found[:, 1])] = 0  # the found outline gives way to the judged one
            for outlines, found in snaps:
                if found.size:
                    order = np.argsort(found[:, 0])
                    keys, values = found[order, 0], found[order, 1]
                    at = np.clip(np.searchsorted(keys, outlines), 0, keys.size - 1)
                    snap = (keys[at] == outlines) & (outlines > 0) & (credited == 0)
                    credited[snap] = values[at[snap]]
    scored = plain if credited is pred else match_instances(truth, credited, FOUND_IOU)
    return Parts(scored.aji_intersection, scored.aji_union, plain.aji_intersection, plain.aji_union,
                 plain.n_truth, int(accepted.size), plain.tp)


def _rejected(reference: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Ids of reference nuclei with less than `REJECTED_SHARE` of their pixels on truth nuclei."""
    flat = reference.ravel()
    ids, inverse, area = np.unique(flat, return_inverse=True, return_counts=True)
    on_truth = np.bincount(inverse, weights=(truth.ravel() > 0), minlength=ids.size)
    keep = (ids > 0) & (on_truth < REJECTED_SHARE * area)
    return ids[keep]
