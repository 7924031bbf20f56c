"""Label maps read block by block, each nucleus handed out once and whole (for streamed exports of slides).

Two passes over the label map (numpy, zarr or dask), `chunk` x `chunk` pixels at a time:

1. the bounding box of every id over the whole map (min / max over the blocks; 20 bytes per nucleus);
2. each block's nuclei are those whose bounding box's top-left corner lies in it. They come in a window reaching
   `margin` pixels around the block; a nucleus larger than that margin is read in a window of its own, so it is
   still measured whole however many blocks it spans.

Only the block being worked on is in memory, never the whole map or all the nuclei's measurements.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError

__all__ = ["CHUNK", "MARGIN", "LabelBlock", "iter_label_blocks", "object_boxes"]

CHUNK = 2048
#: nuclei smaller than this (pixels) are cut out of their block's window; larger ones get a window of their own
MARGIN = 256


@dataclasses.dataclass(frozen=True)
class LabelBlock:
    """Some nuclei, whole, in a window of the label map.

    Attributes:
        labels: (h, w) intp array: 0 where no nucleus of this block is, else k + 1 for the k-th of `ids`.
        ids: the original label id of each nucleus, sorted.
        origin: (y, x) of the window's top-left in the label map.
    """

    labels: np.ndarray
    ids: np.ndarray
    origin: tuple[int, int]


def _read(labels: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    return np.asarray(labels[y0:y1, x0:x1])


def _small_ids(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(small ids per pixel, original id of each small id) for `ndi.find_objects`, which wants small consecutive
    ids: a block's ids are shifted down to start at 1 (a late block of a slide holds ids in the millions, but few
    of them), or renumbered with `np.unique` when they are spread too far apart."""
    nonzero = window[window != 0]
    if not nonzero.size:
        return np.zeros(window.shape, np.intp), np.zeros(1, np.int64)
    lo, hi = int(nonzero.min()), int(nonzero.max())
    if lo < 0:
        raise InvalidInputError("labels hold negative ids; nucleus ids must be 0 (background) or positive")
    base = lo - 1
    if hi - base <= 4 * window.size + 1024:
        small = np.where(window != 0, window.astype(np.int64) - base, 0).astype(np.intp)
        return small, np.r_[0, np.arange(lo, hi + 1, dtype=np.int64)]
    uniq, inverse = np.unique(window, return_inverse=True)
    if uniq[0] != 0:
        uniq, inverse = np.r_[0, uniq], inverse + 1
    return inverse.reshape(window.shape).astype(np.intp), uniq.astype(np.int64)


def object_boxes(labels: Any, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Ids present in `labels` (sorted) and their bounding boxes (N, 4) as y0, x0, y1, x1 (exclusive ends)."""
    from scipy import ndimage as ndi

    h, w = (int(s) for s in labels.shape)
    ids, boxes = [], []
    for y in range(0, h, chunk):
        for x in range(0, w, chunk):
            small, original = _small_ids(_read(labels, y, min(h, y + chunk), x, min(w, x + chunk)))
            found = [(i, b) for i, b in enumerate(ndi.find_objects(small), start=1) if b is not None]
            ids.append(original[[i for i, _ in found]])
            boxes.append(np.array([[b[0].start + y, b[1].start + x, b[0].stop + y, b[1].stop + x]
                                   for _, b in found], dtype=np.int64).reshape(-1, 4))
    ids_all, boxes_all = np.concatenate(ids), np.concatenate(boxes)
    if not ids_all.size:
        return np.zeros(0, np.int64), np.zeros((0, 4), np.int64)
    order = np.argsort(ids_all, kind="stable")
    ids_all, boxes_all = ids_all[order], boxes_all[order]
    starts = np.flatnonzero(np.r_[True, ids_all[1:] != ids_all[:-1]])
    merged = np.concatenate([np.minimum.reduceat(boxes_all[:, :2], starts, axis=0),
                             np.maximum.reduceat(boxes_all[:, 2:], starts, axis=0)], axis=1)
    return ids_all[starts], merged


def _relabel(window: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`window` with the ids in `keep` (sorted, all present in it) as 1..k and everything else 0."""
    small, original = _small_ids(window)
    lut = np.zeros(original.size, np.intp)
    pos = np.searchsorted(original, keep)  # `original` is sorted: 0, then increasing ids
    lut[pos] = np.arange(1, keep.size + 1)
    return lut[small]


def iter_label_blocks(labels: Any, chunk: int = CHUNK, margin: int = MARGIN) -> Iterator[LabelBlock]:
    """Every nucleus of `labels` exactly once and whole, block by block in raster order (see the module doc)."""
    h, w = (int(s) for s in labels.shape)
    ids, boxes = object_boxes(labels, chunk)
    if not ids.size:
        return
    n_cols = -(-w // chunk)
    home = (boxes[:, 0] // chunk) * n_cols + boxes[:, 1] // chunk  # the block holding each box's top-left
    order = np.argsort(home, kind="stable")
    bounds = np.searchsorted(home[order], np.arange(-(-h // chunk) * n_cols + 1))
    for block in range(bounds.size - 1):
        mine = order[bounds[block]:bounds[block + 1]]
        if not mine.size:
            continue
        y, x = (block // n_cols) * chunk, (block % n_cols) * chunk
        wy0, wx0 = max(0, y - margin), max(0, x - margin)
        wy1, wx1 = min(h, y + chunk + margin), min(w, x + chunk + margin)
        b = boxes[mine]
        inside = (b[:, 0] >= wy0) & (b[:, 1] >= wx0) & (b[:, 2] <= wy1) & (b[:, 3] <= wx1)
        keep = np.sort(ids[mine[inside]])
        if keep.size:
            yield LabelBlock(_relabel(_read(labels, wy0, wy1, wx0, wx1), keep), keep, (wy0, wx0))
        for i in mine[~inside]:  # a nucleus larger than the margin: a window of its own
            by0, bx0, by1, bx1 = (int(v) for v in boxes[i])
            yield LabelBlock(_relabel(_read(labels, by0, by1, bx0, bx1), ids[i:i + 1]), ids[i:i + 1], (by0, bx0))
