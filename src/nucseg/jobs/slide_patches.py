"""Correcting a whole-slide result: a region becomes an editable patch, and accepted edits go back into the zarr.

A slide's labels live in a zarr array (``labels``, or ``labels-tuned`` after a threshold change) shown as a
multiscale layer, which napari cannot paint. So:

* `open_patch` reads a region of the array into a plain numpy array (grown so that every nucleus it touches is
  whole in it, up to `MAX_GROW` pixels on each side): that is what the person edits.
* `accept_patch` writes the edits back, block by block (the array's chunks), *write-ahead*: the previous and the new
  contents of every block that changes are stored in the result's own zarr group (``nucseg-edits/<array>-<n>``)
  and the entry is marked "writing" before the first block is written, "applied" after the last. A crash in
  between is finished at the next `recover` (the blocks are written again from the entry), so a patch is never half
  in. Nuclei the person painted get new ids above every id of the slide (``nucseg_max_id`` in the array's
  attributes); a nucleus they erased that reaches beyond the patch is erased beyond it too (no piece is left).
  The stored pyramid levels (`nucseg.inference.result_store.zarr_pyramid`) are updated over the same area.
* `undo_patch` puts back the previous contents of the last applied patch (marked "undoing", then "undone": a crash
  in between is finished by `recover` too). Nothing is deleted: the entry keeps both versions.
* `replay_patches` pastes every applied patch, as it was accepted, into an array re-made with other thresholds
  (`nucseg.inference.predict.reapply_postprocess` calls it), so a threshold change never drops accepted edits.

No Qt here: the napari panel (`nucseg._napari.slide_patch_widget`) calls these in a worker.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Iterator
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError, StoreError

Box = tuple[int, int, int, int]  # (y, x, h, w) in pixels of the labels array

EDITS_GROUP = "nucseg-edits"
MAX_ID_ATTR = "nucseg_max_id"
#: a patch grows by at most this many pixels per side to hold the nuclei it touches whole
MAX_GROW = 128
#: the largest patch (pixels): an editable numpy layer of uint32 labels
MAX_PATCH_PIXELS = 4096 * 4096
WRITING, APPLIED, UNDOING, UNDONE = "writing", "applied", "undoing", "undone"


@dataclasses.dataclass(frozen=True)
class Patch:
    """An editable copy of part of a slide result.

    Attributes:
        labels: the (h, w) labels as read (edit a copy; this one is what the edits are compared with).
        box: where it lies in the labels array, (y, x, h, w).
        asked: the box that was asked for, before it grew to hold whole nuclei.
        array_path: the array it came from (``labels`` or ``labels-tuned``).
    """

    labels: np.ndarray
    box: Box
    asked: Box
    array_path: str


@dataclasses.dataclass(frozen=True)
class PatchEntry:
    """An accepted patch as recorded in the result's edits group."""

    name: str
    array_path: str
    box: Box
    status: str
    blocks: int
    changed_pixels: int
    new_ids: int


def _clip(box: Box, shape: tuple[int, ...]) -> Box:
    y, x, h, w = (int(v) for v in box)
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, int(shape[0])), min(x + w, int(shape[1]))
    if y1 <= y0 or x1 <= x0:
        raise InvalidInputError(f"the region {box} lies outside the result ({shape[0]} x {shape[1]} px)")
    return y0, x0, y1 - y0, x1 - x0


def _read(array: Any, box: Box) -> np.ndarray:
    y, x, h, w = box
    return np.asarray(array[y : y + h, x : x + w])


def open_patch(array: Any, box: Box, grow: int = MAX_GROW) -> Patch:
    """The labels of `box` (array pixels, clipped to the array) as an editable patch, grown by up to `grow` pixels
    on each side so that the nuclei it touches are whole in it.

    Raises:
        InvalidInputError: the box lies outside the array or is too large to edit.
    """
    asked = _clip(box, array.shape)
    if asked[2] * asked[3] > MAX_PATCH_PIXELS:
        raise InvalidInputError(f"the region {asked[2]} x {asked[3]} px is too large to edit at once (at most "
                                f"{MAX_PATCH_PIXELS:,} px): zoom in, or draw a smaller rectangle")
    y, x, h, w = asked
    window = _clip((y - grow, x - grow, h + 2 * grow, w + 2 * grow), array.shape)
    around = _read(array, window)
    inner = around[y - window[0] : y - window[0] + h, x - window[1] : x - window[1] + w]
    touched = np.unique(inner)
    touched = touched[touched > 0]
    ys, xs = np.nonzero(np.isin(around, touched)) if touched.size else (np.zeros(0, int), np.zeros(0, int))
    y0 = min(y - window[0], int(ys.min()) if ys.size else y - window[0])
    x0 = min(x - window[1], int(xs.min()) if xs.size else x - window[1])
    y1 = max(y - window[0] + h, int(ys.max()) + 1 if ys.size else 0)
    x1 = max(x - window[1] + w, int(xs.max()) + 1 if xs.size else 0)
    grown = (window[0] + y0, window[1] + x0, y1 - y0, x1 - x0)
    return Patch(np.array(around[y0:y1, x0:x1], copy=True), grown, asked, str(array.path))


def _edits_group(array: Any, create: bool = True) -> Any:
    import zarr

    root = zarr.open_group(array.store, mode="a")
    if create:
        return root.require_group(EDITS_GROUP)
    return root.get(EDITS_GROUP)


def _entries(array: Any, every_array: bool = False) -> list[Any]:
    """The entries of patches accepted into `array` (or into any array of its result), oldest first."""
    group = _edits_group(array, create=False)
    if group is None:
        return []
    entries = [group[name] for name in group.group_keys()]
    if not every_array:
        entries = [e for e in entries if e.attrs.get("array") == str(array.path)]
    return sorted(entries, key=lambda e: int(e.attrs["seq"]))


def patch_entries(array: Any) -> list[PatchEntry]:
    """The patches accepted into `array`, oldest first, with their status."""
    out = []
    for entry in _entries(array):
        a = entry.attrs
        out.append(PatchEntry(entry.basename, a["array"], tuple(a["box"]), a["status"], len(a["blocks"]),
                              int(a["changed_pixels"]), int(a["new_ids"])))
    return out


def max_id(array: Any) -> int:
    """The largest nucleus id of the array (kept in its attributes once edited; found by reading it otherwise)."""
    known = array.attrs.get(MAX_ID_ATTR)
    if known is not None:
        return int(known)
    top = 0
    for box in _chunk_boxes(array, (0, 0, int(array.shape[0]), int(array.shape[1]))):
        top = max(top, int(_read(array, box).max(initial=0)))
    return top


def _chunk_boxes(array: Any, box: Box) -> Iterator[Box]:
    """The array's chunks (clipped to the array) that meet `box`, in raster order."""
    ch, cw = (int(c) for c in array.chunks[-2:])
    H, W = (int(s) for s in array.shape[-2:])
    y, x, h, w = box
    for cy in range(y // ch * ch, y + h, ch):
        for cx in range(x // cw * cw, x + w, cw):
            yield cy, cx, min(ch, H - cy), min(cw, W - cx)


def _new_labels(patch: Patch, edited: np.ndarray, first_free: int) -> tuple[np.ndarray, int]:
    """The edited patch with every id that was not in the patch as read (painted nuclei) moved to new ids from
    `first_free`; returns it and how many new ids it took."""
    edited = np.asarray(edited)
    if edited.shape != patch.labels.shape:
        raise InvalidInputError(f"the edited patch {edited.shape} no longer has the shape it was opened with "
                                f"{patch.labels.shape}: open the region again")
    old_ids = np.unique(patch.labels)
    ids = np.unique(edited)
    new = ids[(ids > 0) & ~np.isin(ids, old_ids)]
    out = edited.astype(np.uint32, copy=True)
    if new.size:
        lut_keys = np.sort(new)
        at = np.searchsorted(lut_keys, edited)
        hit = (at < lut_keys.size) & (lut_keys[np.minimum(at, lut_keys.size - 1)] == edited)
        out[hit] = (first_free + at[hit]).astype(np.uint32)
    return out, int(new.size)


def accept_patch(array: Any, patch: Patch, edited: np.ndarray) -> PatchEntry | None:
    """Write an edited patch back into `array` (see the module doc); None when nothing changed.

    Raises:
        InvalidInputError: the edited labels lost the patch's shape.
        StoreError: the array changed under the patch since it was opened (accept or undo elsewhere).
    """
    recover(array)
    if str(array.path) != patch.array_path:
        raise StoreError(f"the patch was opened on {patch.array_path!r}, the result now shows {array.path!r}: "
                         "open the region again")
    if not np.array_equal(_read(array, patch.box), patch.labels):
        raise StoreError("the slide result changed under this patch since it was opened (another patch was "
                         "accepted or undone there): open the region again and redo the edits")
    top = max_id(array)
    written, n_new = _new_labels(patch, edited, top + 1)
    changed = written != patch.labels
    if not changed.any():
        return None
    y, x, h, w = patch.box
    gone = np.setdiff1d(np.unique(patch.labels), np.unique(written))
    gone = gone[gone > 0]
    # the write window: the patch, and around it the rest of any erased nucleus that reaches beyond it
    border = np.concatenate([patch.labels[0], patch.labels[-1], patch.labels[:, 0], patch.labels[:, -1]])
    reaching = np.intersect1d(gone, border)
    window = _clip((y - MAX_GROW, x - MAX_GROW, h + 2 * MAX_GROW, w + 2 * MAX_GROW), array.shape) if reaching.size \
        else patch.box
    group = _edits_group(array)
    seq = len(list(group.group_keys())) + 1
    name = f"{seq:04d}-{array.path}"
    entry = group.create_group(name)
    blocks, previous, new = [], [], []
    for block in _chunk_boxes(array, window):
        before = _read(array, block)
        after = before.copy()
        by, bx, bh, bw = block
        if reaching.size:
            after[np.isin(after, reaching)] = 0
        # the patch's part of this block
        oy0, ox0 = max(by, y), max(bx, x)
        oy1, ox1 = min(by + bh, y + h), min(bx + bw, x + w)
        if oy1 > oy0 and ox1 > ox0:
            after[oy0 - by : oy1 - by, ox0 - bx : ox1 - bx] = written[oy0 - y : oy1 - y, ox0 - x : ox1 - x]
        if not np.array_equal(before, after):
            blocks.append([by, bx, bh, bw])
            previous.append(before)
            new.append(after)
    if not blocks:
        return None
    ch, cw = (int(c) for c in array.chunks[-2:])
    for key, arrays in (("previous", previous), ("written", new)):
        stack = entry.create_array(key, shape=(len(arrays), ch, cw), chunks=(1, ch, cw), dtype="uint32",
                                   fill_value=0)
        for k, block in enumerate(arrays):
            stack[k, : block.shape[0], : block.shape[1]] = block
    entry.create_array("patch-read", data=patch.labels.astype(np.uint32), chunks=patch.labels.shape)
    entry.create_array("patch-accepted", data=written, chunks=written.shape)
    entry.attrs.update({"seq": seq, "array": str(array.path), "box": list(patch.box), "blocks": blocks,
                        "status": WRITING,
                        "max_id_before": top, "max_id_after": top + n_new, "new_ids": n_new,
                        "changed_pixels": int(changed.sum()),
                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    _finish(array, entry)
    return patch_entries_by_name(array, name)


def patch_entries_by_name(array: Any, name: str) -> PatchEntry:
    return next(e for e in patch_entries(array) if e.name == name)


def _write_blocks(array: Any, entry: Any, key: str) -> None:
    stack = entry[key]
    for k, (by, bx, bh, bw) in enumerate(entry.attrs["blocks"]):
        array[by : by + bh, bx : bx + bw] = np.asarray(stack[k, :bh, :bw])
    _update_pyramid(array, [tuple(b) for b in entry.attrs["blocks"]])


def _finish(array: Any, entry: Any) -> None:
    """Complete an entry left "writing" (write its new blocks) or "undoing" (write back its previous ones)."""
    status = entry.attrs["status"]
    if status == WRITING:
        _write_blocks(array, entry, "written")
        array.attrs[MAX_ID_ATTR] = max(int(entry.attrs["max_id_after"]), max_id(array))
        entry.attrs["status"] = APPLIED
    elif status == UNDOING:
        _write_blocks(array, entry, "previous")
        entry.attrs["status"] = UNDONE


def recover(array: Any) -> int:
    """Finish every patch a crash left half-written or half-undone; returns how many there were."""
    done = 0
    for entry in _entries(array):
        if entry.attrs["status"] in (WRITING, UNDOING):
            _finish(array, entry)
            done += 1
    return done


def undo_patch(array: Any) -> PatchEntry | None:
    """Put back what the last applied patch of `array` replaced; None when there is none.

    Raises:
        StoreError: the array was changed over that patch afterwards (undo the later patch first).
    """
    recover(array)
    applied = [e for e in _entries(array) if e.attrs["status"] == APPLIED]
    if not applied:
        return None
    entry = applied[-1]
    stack = entry["written"]
    for k, (by, bx, bh, bw) in enumerate(entry.attrs["blocks"]):
        if not np.array_equal(_read(array, (by, bx, bh, bw)), np.asarray(stack[k, :bh, :bw])):
            raise StoreError(f"the slide result changed over patch {entry.basename} after it was accepted: it can "
                             "no longer be undone block by block")
    entry.attrs["status"] = UNDOING
    _finish(array, entry)
    return patch_entries_by_name(array, entry.basename)


def replay_patches(source: Any, target: Any) -> int:
    """Paste the applied patches of `source`'s result (accepted into it, or into an array it was re-made from), as
    accepted and in order, into `target` (the result re-made with other thresholds), their ids moved above
    `target`'s; returns how many."""
    applied = [e for e in _entries(source, every_array=True) if e.attrs["status"] == APPLIED]
    top = max_id(target)
    for entry in applied:
        y, x, h, w = entry.attrs["box"]
        accepted = np.asarray(entry["patch-accepted"]).astype(np.int64)
        ids = np.unique(accepted)
        ids = ids[ids > 0]
        lut_at = np.searchsorted(ids, accepted)
        moved = np.where(accepted > 0, top + 1 + lut_at, 0).astype(np.uint32)
        target[y : y + h, x : x + w] = moved
        top += int(ids.size)
    if applied:
        target.attrs[MAX_ID_ATTR] = top
    return len(applied)


def _update_pyramid(array: Any, blocks: list[Box]) -> None:
    """Re-make the stored pyramid levels of `array` over `blocks` (every other pixel of the level above)."""
    import zarr

    root = zarr.open_group(array.store, mode="a")
    pyramid = root.get("pyramid")
    if pyramid is None:
        return
    name = str(array.path).rsplit("/", 1)[-1]
    previous, k = array, 1
    while True:
        level = pyramid.get(f"{name}-{2 ** k}")
        if level is None:
            return
        for by, bx, bh, bw in blocks:
            f = 2**k
            y0, x0 = by // f, bx // f
            y1, x1 = min(-(-(by + bh) // f), int(level.shape[0])), min(-(-(bx + bw) // f), int(level.shape[1]))
            level[y0:y1, x0:x1] = np.asarray(previous[2 * y0 : 2 * y1 : 2, 2 * x0 : 2 * x1 : 2])
        previous, k = level, k + 1
