"""Which pixels of a correction a person vouched for, beyond what they marked as reviewed: the neighbourhood of
their edits (`edit_neighbourhood`), and the boxes saved around them (`region_boxes`, `merge_boxes`)."""

from __future__ import annotations

import numpy as np

#: background within this many pixels of a person's edits counts as checked (`edit_neighbourhood`)
EDIT_MARGIN_PX = 16
#: a region saved around edits spans at least this many pixels a side (image context for the network)
EDIT_CONTEXT_PX = 128


def edit_neighbourhood(edited: np.ndarray, labels: np.ndarray, margin: int = EDIT_MARGIN_PX) -> np.ndarray:
    """The pixels a person's edits vouch for: the edited pixels (whole nuclei the person changed, see
    `nucseg.editing.history`) and the background within `margin` pixels of them; never the pixels of a
    nucleus nobody touched (the model's own labels, unchecked).

    Args:
        edited: (H, W) bool, the pixels the person edited.
        labels: (H, W) the labels now.
        margin: pixels of background around the edits that count as checked.
    """
    from scipy import ndimage as ndi

    edited = np.asarray(edited, bool)
    if not edited.any():
        return edited.copy()
    near = ndi.distance_transform_edt(~edited) <= margin
    return near & (edited | (np.asarray(labels) == 0))


def region_boxes(mask: np.ndarray, min_side: int = EDIT_CONTEXT_PX) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) boxes around the connected parts of `mask`, each grown to at least `min_side` a side
    (clipped to the array) and merged with any box it overlaps, so no pixel is stored twice."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    H, W = mask.shape
    boxes = []
    for sl in ndi.find_objects(ndi.label(mask)[0]):
        if sl is None:
            continue
        boxes.append(_grown(sl[0].start, sl[0].stop, H, min_side) + _grown(sl[1].start, sl[1].stop, W, min_side))
    return [(y0, x0, y1 - y0, x1 - x0) for y0, y1, x0, x1 in merge_boxes(boxes)]


def _grown(lo: int, hi: int, full: int, min_side: int) -> tuple[int, int]:
    extra = max(min_side - (hi - lo), 0)
    lo, hi = lo - extra // 2, hi + extra - extra // 2
    if lo < 0:
        lo, hi = 0, min(hi - lo, full)
    if hi > full:
        lo, hi = max(lo - (hi - full), 0), full
    return lo, hi


def merge_boxes(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) boxes with every overlapping pair replaced by their bounding box, until none overlap."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]:
                    boxes[i] = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(boxes)
