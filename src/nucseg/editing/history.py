"""`LabelEditor`: one linear undo / redo history for a labels map, and the pixels the person edited.

Every change to the labels goes through it as one step: a tool action (`apply`), a brush stroke already painted
by the viewer (`record`), or the program's re-application of thresholds (`replace`). A step stores the changed
pixels with their ids before and after, and the change to the `edited` mask, so undo and redo move between
states that existed, exactly. That is what keeps ids whole: undoing a stroke made before a threshold change first
undoes the threshold change (which may have given the stroke's old id to another nucleus), never only the stroke.

`edited` marks the pixels whose labels are the person's: the pixels a person changed, and the whole of every
nucleus a person changed (painted, trimmed, merged, split, added). A threshold change keeps them
(`nucseg.jobs.segment.keep_user_edits`), and training takes their neighbourhood as checked
(`nucseg.training.corrections.reviewed_regions.edit_neighbourhood`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from nucseg.editing.tools import Edit
from nucseg.errors import InvalidInputError

#: steps kept for undo (older ones are dropped)
HISTORY_LIMIT = 100


@dataclasses.dataclass
class Step:
    """One undoable change.

    Attributes:
        action: "add", "delete", "merge", "split", "brush", "thresholds", "replace"...
        by_user: a person's edit (True) or the program's (False: threshold re-application, a new run).
        indices, before, after: flat indices of the changed pixels and their ids before and after.
        edited_indices, edited_before: the pixels whose `edited` flag changed, and the flag before.
        payload: what the caller needs to restore with the step (e.g. the result a threshold change showed).
        text: one line for the status bar.
    """

    action: str
    by_user: bool
    indices: np.ndarray
    before: np.ndarray
    after: np.ndarray
    edited_indices: np.ndarray
    edited_before: np.ndarray
    payload: Any = None
    text: str = ""


class LabelEditor:
    """The undo history of one 2-D labels map, edited in place.

    Args:
        labels: the labels map (edited in place: the viewer shows this very array).
        edited: the pixels already the person's (e.g. kept in a layer's metadata), or None.
        limit: steps kept for undo.
    """

    def __init__(self, labels: np.ndarray, edited: np.ndarray | None = None, limit: int = HISTORY_LIMIT):
        if labels.ndim != 2 or not labels.flags.c_contiguous:
            raise InvalidInputError(f"labels of shape {labels.shape}: the editor works on one 2-D label image")
        self.labels = labels
        self.edited = np.zeros(labels.shape, bool) if edited is None else np.array(edited, bool, copy=True)
        if self.edited.shape != labels.shape:
            self.edited = np.zeros(labels.shape, bool)
        self.limit = limit
        self.undo_steps: list[Step] = []
        self.redo_steps: list[Step] = []
        self.version = 0  # +1 on every change: a snapshot taken at version v is stale at v + 1
        self._max_id = int(labels.max()) if labels.size else 0

    # -- reading -------------------------------------------------------------------------------------------
    @property
    def user_edited(self) -> bool:
        """Whether any pixel is the person's."""
        return bool(self.edited.any())

    def next_id(self) -> int:
        """An id no nucleus has, and none this history could bring back."""
        self._max_id = max(self._max_id, int(self.labels.max()))
        return self._max_id + 1

    # -- changing ------------------------------------------------------------------------------------------
    def apply(self, edit: Edit, text: str | None = None) -> Step | None:
        """Write a tool's `Edit` as one step of the person's; None when it changes nothing."""
        flat = self.labels.reshape(-1)
        indices = np.asarray(edit.indices, np.int64)
        before = flat[indices].copy()
        keep = before != edit.values
        if not keep.any():
            return None
        indices, before, after = indices[keep], before[keep], np.asarray(edit.values, flat.dtype)[keep]
        flat[indices] = after
        return self._push_user(edit.action, indices, before, after, text or edit.describe())

    def record(self, indices: np.ndarray, before: np.ndarray, after: np.ndarray | None = None, action: str = "brush",
               text: str | None = None) -> Step | None:
        """A change the viewer writes itself (a brush or eraser stroke, a fill) as one step of the person's.

        Args:
            indices: flat indices of the pixels painted, in painting order (repeats allowed).
            before: their ids before the stroke, in the same order (for a repeat, its first value counts).
            after: their ids after it (for a repeat, its last value counts); None reads them from the labels
                (when the viewer has written them already).
        """
        indices = np.asarray(indices, np.int64).reshape(-1)
        before = np.asarray(before).reshape(-1)
        if indices.size != before.size or (after is not None and np.size(after) != indices.size):
            raise InvalidInputError("a recorded stroke needs one earlier (and later) id per painted pixel")
        unique, first = np.unique(indices, return_index=True)
        before = before[first].astype(self.labels.dtype)
        if after is None:
            after = self.labels.reshape(-1)[unique].copy()
        else:
            _, last = np.unique(indices[::-1], return_index=True)
            after = np.asarray(after).reshape(-1)[indices.size - 1 - last].astype(self.labels.dtype)
        keep = before != after
        if not keep.any():
            return None
        indices, before, after = unique[keep], before[keep], after[keep]
        text = text or f"{action}: {indices.size} px"
        return self._push_user(action, indices, before, after, text)

    def replace(self, new_labels: np.ndarray, edited: np.ndarray | None = None, action: str = "thresholds",
                payload: Any = None, text: str = "", by_user: bool = False) -> Step | None:
        """Replace the whole map (a threshold re-application, a new run) as one step; `edited` becomes the new
        mask of the person's pixels (None keeps it). Returns None when nothing changes."""
        new_labels = np.asarray(new_labels)
        if new_labels.shape != self.labels.shape:
            raise InvalidInputError(f"new labels {new_labels.shape} and the layer's {self.labels.shape} differ in size")
        flat, new_flat = self.labels.reshape(-1), new_labels.reshape(-1)
        indices = np.flatnonzero(flat != new_flat).astype(np.int64)
        new_edited = self.edited if edited is None else np.asarray(edited, bool)
        e_indices = np.flatnonzero(self.edited.reshape(-1) != new_edited.reshape(-1)).astype(np.int64)
        if not indices.size and not e_indices.size and payload is None:
            return None
        before, after = flat[indices].copy(), new_flat[indices].astype(flat.dtype)
        e_before = self.edited.reshape(-1)[e_indices].copy()
        flat[indices] = after
        self.edited.reshape(-1)[e_indices] = ~e_before
        step = Step(action, by_user, indices, before, after, e_indices, e_before, payload, text or action)
        self._push(step)
        return step

    def _push_user(self, action: str, indices: np.ndarray, before: np.ndarray, after: np.ndarray, text: str) -> Step:
        """A person's change: its pixels, and every nucleus it touched, become the person's (the rest of a
        touched nucleus is read from the labels, which may not hold the change itself yet)."""
        touched = np.union1d(before, after)
        touched = touched[touched > 0]
        mine = np.zeros(self.labels.size, bool)
        if touched.size:
            mine |= np.isin(self.labels.reshape(-1), touched)
        mine[indices] = True
        flat_edited = self.edited.reshape(-1)
        e_indices = np.flatnonzero(mine & ~flat_edited).astype(np.int64)
        flat_edited[e_indices] = True
        step = Step(action, True, indices, before, after, e_indices, np.zeros(e_indices.size, bool), None, text)
        self._push(step)
        return step

    def _push(self, step: Step) -> None:
        self._max_id = max(self._max_id, int(step.after.max(initial=0)), int(step.before.max(initial=0)))
        self.undo_steps.append(step)
        del self.undo_steps[: -self.limit]
        self.redo_steps.clear()
        self.version += 1

    # -- undo / redo -----------------------------------------------------------------------------------------
    def undo(self) -> Step | None:
        """Undo the last step (the labels and the edited mask return to what they were); None when none is left."""
        if not self.undo_steps:
            return None
        step = self.undo_steps.pop()
        self._write(step, undoing=True)
        self.redo_steps.append(step)
        return step

    def redo(self) -> Step | None:
        """Redo the last undone step; None when none is left."""
        if not self.redo_steps:
            return None
        step = self.redo_steps.pop()
        self._write(step, undoing=False)
        self.undo_steps.append(step)
        return step

    def _write(self, step: Step, undoing: bool) -> None:
        self.labels.reshape(-1)[step.indices] = step.before if undoing else step.after
        flags = step.edited_before if undoing else ~step.edited_before
        self.edited.reshape(-1)[step.edited_indices] = flags
        self.version += 1

    def changed_box(self, step: Step) -> tuple[slice, slice] | None:
        """The bounding box of a step's changed pixels (for a partial refresh), None when it changed none."""
        if not step.indices.size:
            return None
        ys, xs = np.unravel_index(step.indices, self.labels.shape)
        return slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1)


def flat_indices(shape: Sequence[int], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Flat C-order indices of (rows, cols) in an array of `shape`."""
    return np.ravel_multi_index((np.asarray(rows), np.asarray(cols)), tuple(shape)).astype(np.int64)
