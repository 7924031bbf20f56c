"""Correction tools as pure functions on a 2-D instance labels map (0 = background).

Each function reads the labels and returns an `Edit`: the flat indices of the pixels it changes and their new
ids. Nothing is written: `nucseg.editing.history.LabelEditor.apply` writes an edit as one undoable step. A tool
that cannot apply (a click on background, nuclei that do not touch, a line that does not cut) raises
`EditRefused` with one line saying what to do instead.

Points are (row, column) in the labels' own pixels (floats are rounded). New ids are given by the caller
(`LabelEditor.next_id`), so an id that belongs to another nucleus, or that undo could bring back, is never reused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from nucseg.errors import InvalidInputError

Point = Sequence[float]

#: merge joins two nuclei whose nearest pixels are at most this many pixels apart (0: sharing an edge or corner)
MERGE_GAP_PX = 2
#: a piece cut off by a split line smaller than this many pixels is a sliver: it goes back to its neighbour
MIN_PIECE_PX = 4
#: a bounding box is grown by this margin around a nucleus before working in it (room for gaps and seeds)
_MARGIN = 4


class EditRefused(InvalidInputError):
    """A tool that cannot apply where it was used; the message says what to do instead."""


@dataclasses.dataclass(frozen=True)
class Edit:
    """A change to a labels map.

    Attributes:
        indices: flat (C-order) indices of the pixels that change, sorted, unique.
        values: their new ids (the labels' dtype).
        action: what made it: "add", "delete", "merge", "split".
        ids: the nuclei it made or kept (for the status line).
    """

    indices: np.ndarray
    values: np.ndarray
    action: str
    ids: tuple[int, ...] = ()

    def __len__(self) -> int:
        return int(self.indices.size)

    def describe(self) -> str:
        """One line for the status bar, e.g. "split nucleus 12 into 12 and 431"."""
        ids = [int(i) for i in self.ids]
        if not ids:
            return f"{self.action}: {len(self)} px"
        if self.action == "add":
            taken = f", taking in {', '.join(map(str, ids[1:]))}" if len(ids) > 1 else ""
            return f"added nucleus {ids[0]} ({len(self)} px{taken})"
        if self.action == "delete":
            return f"deleted nucleus {ids[0]} ({len(self)} px)"
        if self.action == "merge" and len(ids) > 1:
            return f"merged nucleus {ids[1]} into {ids[0]}"
        if self.action == "split":
            return f"split nucleus {ids[0]} into {' and '.join(map(str, ids))}"
        return f"{self.action}: {len(self)} px"


def _pixel(labels: np.ndarray, point: Point) -> tuple[int, int]:
    """`point` rounded to a pixel of `labels`, refused outside it."""
    if labels.ndim != 2:
        raise InvalidInputError(f"labels of shape {labels.shape}: the correction tools edit one 2-D label image")
    y, x = (int(round(float(v))) for v in point[-2:])
    if not (0 <= y < labels.shape[0] and 0 <= x < labels.shape[1]):
        raise EditRefused(f"the point ({y}, {x}) lies outside the labels ({labels.shape[0]} x {labels.shape[1]} px)")
    return y, x


def nucleus_at(labels: np.ndarray, point: Point) -> int:
    """The id under `point` (0 = background)."""
    return int(labels[_pixel(labels, point)])


def _box(mask_or_labels: np.ndarray, margin: int = _MARGIN) -> tuple[slice, slice]:
    """The bounding box of the non-zero pixels, grown by `margin` and clipped to the array."""
    rows, cols = np.flatnonzero(mask_or_labels.any(1)), np.flatnonzero(mask_or_labels.any(0))
    h, w = mask_or_labels.shape
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, h)),
            slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, w)))


def _flat(labels: np.ndarray, box: tuple[slice, slice], local: np.ndarray) -> np.ndarray:
    """Flat indices in `labels` of the True pixels of `local` (a mask of `box`)."""
    ys, xs = np.nonzero(local)
    return np.ravel_multi_index((ys + box[0].start, xs + box[1].start), labels.shape).astype(np.int64)


def _edit(labels: np.ndarray, indices: np.ndarray, values: np.ndarray | int, action: str, ids: tuple[int, ...]
          ) -> Edit:
    values = np.broadcast_to(np.asarray(values, dtype=labels.dtype), indices.shape)
    order = np.argsort(indices, kind="stable")
    indices, values = indices[order], np.array(values[order])
    keep = labels.reshape(-1)[indices] != values
    return Edit(indices[keep], values[keep], action, ids)


def _check_new_id(labels: np.ndarray, new_id: int) -> int:
    new_id = int(new_id)
    if new_id <= 0 or new_id > np.iinfo(labels.dtype).max:
        raise InvalidInputError(f"id {new_id} does not fit the labels' type {labels.dtype}")
    if (labels == new_id).any():
        raise InvalidInputError(f"id {new_id} already names a nucleus: new nuclei need an unused id")
    return new_id


def delete_nucleus(labels: np.ndarray, point: Point) -> Edit:
    """Remove the nucleus under `point` (all its pixels become background).

    Raises:
        EditRefused: `point` is on background.
    """
    y, x = _pixel(labels, point)
    label = int(labels[y, x])
    if not label:
        raise EditRefused(f"no nucleus at ({y}, {x}): click inside the nucleus to delete it")
    indices = np.flatnonzero(labels.reshape(-1) == label).astype(np.int64)
    return _edit(labels, indices, 0, "delete", (label,))


def merge_nuclei(labels: np.ndarray, first: Point, second: Point, max_gap: int = MERGE_GAP_PX) -> Edit:
    """Join the nucleus under `second` to the one under `first` (which keeps its id).

    The two must touch, or lie at most `max_gap` pixels apart; the background pixels of the thin gap between
    them (those a closing of the two with a disc of radius `max_gap` fills) join too, so the result is one piece.

    Raises:
        EditRefused: a point on background, the same nucleus twice, or nuclei further apart than `max_gap`.
    """
    a, b = nucleus_at(labels, first), nucleus_at(labels, second)
    if not a or not b:
        raise EditRefused("click inside two nuclei to merge them (one of the clicks was on background)")
    if a == b:
        raise EditRefused(f"both clicks are on nucleus {a}: click the two nuclei to merge")
    both = (labels == a) | (labels == b)
    box = _box(both, max_gap + _MARGIN)
    local = labels[box]
    mask_a, mask_b = local == a, local == b
    near_a = ndi.binary_dilation(mask_a, ndi.generate_binary_structure(2, 2), iterations=max_gap + 1)
    if not (near_a & mask_b).any():
        gap = _distance_between(mask_a, mask_b)
        raise EditRefused(f"nuclei {a} and {b} do not touch ({gap:.0f} px apart): merge joins touching nuclei; "
                          "paint the missing part with the brush instead")
    disc = _disc(max_gap)
    union = mask_a | mask_b
    closed = ndi.binary_closing(np.pad(union, max_gap + 1), disc)[max_gap + 1 : -max_gap - 1, max_gap + 1 : -max_gap - 1]
    joined = mask_b | (closed & ~union & (local == 0))
    # keep only gap pixels connected to the union (a closing can fill a far-off notch of one nucleus: harmless,
    # it is the same merged nucleus)
    return _edit(labels, _flat(labels, box, joined), a, "merge", (a, b))


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2


def _distance_between(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    if not mask_a.any() or not mask_b.any():
        return float("inf")
    return float(ndi.distance_transform_edt(~mask_a)[mask_b].min())


def split_by_seeds(labels: np.ndarray, seeds: Sequence[Point], new_id: int) -> Edit:
    """Cut the nucleus under the seeds into one nucleus per seed (`_seeded_parts`: at the neck between them).

    The first seed's part keeps the id; the others get `new_id`, `new_id + 1`, ...

    Raises:
        EditRefused: fewer than two seeds, a seed on background or in another nucleus, two seeds on one pixel.
    """
    if len(seeds) < 2:
        raise EditRefused("split needs two clicks inside the nucleus, one in each part")
    pixels = [_pixel(labels, p) for p in seeds]
    label = int(labels[pixels[0]])
    if not label or any(int(labels[p]) != label for p in pixels):
        raise EditRefused("put both split clicks inside the same nucleus, one in each part")
    if len(set(pixels)) < len(pixels):
        raise EditRefused("the split clicks are on the same pixel: click once in each part of the nucleus")
    new_id = _check_new_id(labels, new_id)
    box = _box(labels == label)
    mask = labels[box] == label
    markers = np.zeros(mask.shape, np.int32)
    for k, (y, x) in enumerate(pixels, start=1):
        markers[y - box[0].start, x - box[1].start] = k
    parts = _seeded_parts(mask, markers)
    return _split_edit(labels, box, parts, label, new_id, len(pixels))


def _seeded_parts(mask: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """One part per marker: the watershed of the distance to the border, from the deepest point of each marker's
    nearest-pixel cell, so a cut falls at the neck between touching nuclei; where the shape has no neck (one
    deepest point: a part would get under a quarter of its cell), the cells themselves."""
    from skimage.segmentation import watershed

    cells = watershed(np.zeros(mask.shape, np.uint8), markers, mask=mask)  # nearest seed, along the mask
    distance = ndi.distance_transform_edt(mask)
    deepest = np.zeros_like(markers)
    for k in range(1, int(markers.max()) + 1):
        inside = np.flatnonzero((cells == k).reshape(-1))
        if inside.size:
            deepest.reshape(-1)[inside[np.argmax(distance.reshape(-1)[inside])]] = k
    parts = watershed(-distance, deepest, mask=mask)
    for k in range(1, int(markers.max()) + 1):
        if (parts == k).sum() < 0.25 * (cells == k).sum():
            return cells
    return parts


def split_by_line(labels: np.ndarray, line: Sequence[Point], new_id: int) -> Edit:
    """Cut the nucleus a line crosses along the line (a polyline of two or more points).

    The pixels under the line go to the nearest part; the largest part keeps the id, the others get `new_id`,
    `new_id + 1`, ...; slivers under `MIN_PIECE_PX` go back to their neighbour.

    Raises:
        EditRefused: the line crosses no nucleus, crosses several, or does not cut one in two.
    """
    from skimage.draw import line as draw_line

    if len(line) < 2:
        raise EditRefused("draw the cut line across the nucleus (press, drag across it, release)")
    pts = [_clipped(labels, p) for p in line]
    on_line = np.zeros(labels.shape, bool)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        rr, cc = draw_line(y0, x0, y1, x1)
        on_line[rr, cc] = True
    crossed = np.unique(labels[on_line])
    crossed = crossed[crossed > 0]
    if not crossed.size:
        raise EditRefused("the cut line crosses no nucleus: draw it across the nucleus to split")
    if crossed.size > 1:
        counts = [(int((labels[on_line] == c).sum()), int(c)) for c in crossed]
        label = max(counts)[1]  # the nucleus the line runs through most
    else:
        label = int(crossed[0])
    new_id = _check_new_id(labels, new_id)
    box = _box(labels == label)
    mask = labels[box] == label
    cut = on_line[box] & mask
    pieces, n = ndi.label(mask & ~cut)  # 4-connected: an 8-connected line separates them
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    sizes[0] = 0
    kept = [k for k in np.argsort(-sizes) if sizes[k] >= MIN_PIECE_PX]
    if len(kept) < 2:
        raise EditRefused(f"the line does not cut nucleus {label} in two: draw it right across, from background "
                          "to background")
    lut = np.zeros(n + 1, np.int32)
    lut[kept] = np.arange(1, len(kept) + 1)
    parts = lut[pieces]
    # the line's pixels and the slivers: to the nearest kept part
    _, (iy, ix) = ndi.distance_transform_edt(parts == 0, return_indices=True)
    parts = np.where(mask, parts[iy, ix], 0)
    return _split_edit(labels, box, parts, label, new_id, len(kept))


def _clipped(labels: np.ndarray, point: Point) -> tuple[int, int]:
    y, x = (int(round(float(v))) for v in point[-2:])
    return min(max(y, 0), labels.shape[0] - 1), min(max(x, 0), labels.shape[1] - 1)


def _split_edit(labels: np.ndarray, box: tuple[slice, slice], parts: np.ndarray, label: int, new_id: int,
                n_parts: int) -> Edit:
    """The edit that gives part 1 `label` and parts 2.. new ids; each part is kept as one piece."""
    parts = _one_piece_each(parts, n_parts)
    indices, values = [], []
    ids = [label]
    for k in range(2, n_parts + 1):
        idx = _flat(labels, box, parts == k)
        if idx.size:
            indices.append(idx)
            values.append(np.full(idx.size, new_id + len(ids) - 1, labels.dtype))
            ids.append(new_id + len(ids) - 1)
    if len(ids) < 2:
        raise EditRefused(f"nucleus {label} could not be cut in two there: put the clicks further apart")
    return _edit(labels, np.concatenate(indices), np.concatenate(values), "split", tuple(ids))


def _one_piece_each(parts: np.ndarray, n_parts: int) -> np.ndarray:
    """Give every stray piece of a part (a pixel cut off by the watershed) to the part it touches most."""
    structure = ndi.generate_binary_structure(2, 2)
    for k in range(1, n_parts + 1):
        pieces, n = ndi.label(parts == k, structure)
        if n <= 1:
            continue
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        main = int(np.argmax(sizes))
        for stray in range(1, n + 1):
            if stray == main:
                continue
            piece = pieces == stray
            ring = ndi.binary_dilation(piece, structure) & ~piece & (parts > 0) & (parts != k)
            if ring.any():
                parts[piece] = np.bincount(parts[ring]).argmax()
    return parts


#: `add_nucleus` takes in a nucleus that lies at least this share inside the grown mask (a fragment of it)
ABSORB_SHARE = 0.5


def add_nucleus(labels: np.ndarray, mask: np.ndarray, point: Point, new_id: int) -> Edit:
    """Make a new nucleus of `mask` around `point`: its background pixels, and the whole of any nucleus lying at
    least `ABSORB_SHARE` inside it (a fragment the model found of the nucleus it missed); other nuclei are never
    touched. The part connected to `point` is kept.

    Args:
        labels: the labels map.
        mask: (H, W) bool, the nucleus as grown (e.g. by `nucseg.editing.grow.grow_nucleus`).
        point: the click; it must lie on background.
        new_id: an unused id.

    Raises:
        EditRefused: `point` is inside a nucleus, or the mask holds no free pixel at `point`.
    """
    y, x = _pixel(labels, point)
    if labels[y, x]:
        raise EditRefused(f"({y}, {x}) is inside nucleus {int(labels[y, x])}: click on background where a nucleus "
                          "was missed")
    new_id = _check_new_id(labels, new_id)
    if mask.shape != labels.shape:
        raise InvalidInputError(f"the grown mask {mask.shape} and the labels {labels.shape} differ in size")
    if not mask[y, x]:
        raise EditRefused(f"nothing was grown at ({y}, {x}): the model sees no nucleus here; paint it with the brush")
    box = _box(mask, 1)
    local, grown = labels[box], mask[box]
    inside, counts = np.unique(local[grown], return_counts=True)
    absorbed = [int(i) for i, n in zip(inside, counts)
                if i and n >= ABSORB_SHARE * int((labels == i).sum())]
    if absorbed:  # their pixels outside the box too
        box = _box(mask | np.isin(labels, absorbed), 1)
        local, grown = labels[box], mask[box]
    free = (grown & (local == 0)) | np.isin(local, absorbed)
    pieces, _ = ndi.label(free, ndi.generate_binary_structure(2, 2))  # a nucleus taken in is taken whole
    mine = pieces == pieces[y - box[0].start, x - box[1].start]
    ids = tuple([new_id, *[i for i in absorbed if (mine & (local == i)).any()]])
    return _edit(labels, _flat(labels, box, mine), new_id, "add", ids)


def pieces_per_id(labels: np.ndarray) -> dict[int, int]:
    """How many 8-connected pieces each id has (a correct labels map has one each)."""
    from skimage.measure import label as cc_label

    out: dict[int, int] = {}
    for obj, sl in enumerate(ndi.find_objects(labels.astype(np.int64, copy=False)), start=1):
        if sl is None:
            continue
        out[obj] = int(cc_label(labels[sl] == obj, connectivity=2).max())
    return out
