"""A labels layer's one undo history (`nucseg.editing.history.LabelEditor`), tied to the napari layer.

`editing_for(layer)` attaches, once per layer:

* the editor, on the layer's own array (edits are made in place, so the canvas shows them);
* napari's brush, eraser, fill and polygon strokes: each stroke napari commits (its ``paint`` event) becomes one
  step of the editor, and napari's own history is emptied, so there is one history only;
* the layer's ``undo`` / ``redo`` (what napari's Ctrl+Z and Ctrl+Shift+Z call) go to the editor;
* the pixels the person edited in ``metadata["nucseg_edited"]`` and the layer's role (`layer_roles`: "corrected"
  once a person changed something, its earlier role again when all of it is undone).

A replaced ``layer.data`` (by a script, another plugin) starts a new history: the old steps name pixels of another
array. `LayerEditing.changed` is emitted after every change, with the step.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from psygnal import Signal, SignalInstance

from nucseg.editing.history import LabelEditor, Step
from nucseg.editing.tools import Edit
from nucseg.errors import InvalidInputError

from .layer_roles import CORRECTED, PREDICTION, TRUTH, layer_role, set_role

#: labels-layer metadata key of the pixels the person edited (bool mask)
EDITED_KEY = "nucseg_edited"

#: emitted with the layer after any change to a layer's labels through its editor (for widgets that list layers)
labels_edited = SignalInstance((object,), name="labels_edited")

_EDITING: weakref.WeakKeyDictionary[Any, LayerEditing] = weakref.WeakKeyDictionary()


class LayerEditing:
    """The editor of one labels layer and its hooks (see the module docstring). Make it with `editing_for`."""

    changed = Signal(object)  # the Step done, undone or redone (None after a new history)

    def __init__(self, layer: Any):
        self._layer = weakref.ref(layer)
        data = layer.data
        if getattr(layer, "multiscale", False) or not isinstance(data, np.ndarray) or data.ndim != 2:
            raise InvalidInputError(f"layer {layer.name!r} cannot be corrected here: the correction tools edit one "
                                    "2-D label image held in memory (segment a tile or a drawn region)")
        if not data.flags.c_contiguous:
            layer.data = data = np.ascontiguousarray(data)
        edited = layer.metadata.get(EDITED_KEY)
        self.editor = LabelEditor(data, edited if isinstance(edited, np.ndarray) else None)
        self.base_role = layer_role(layer) if layer_role(layer) != CORRECTED else PREDICTION
        self.maps_cache: Any = None  # the add tool's EngineMaps for this layer, made on first use
        layer.metadata[EDITED_KEY] = self.editor.edited
        layer.undo = self.undo  # napari's Ctrl+Z / Ctrl+Shift+Z call layer.undo() / layer.redo()
        layer.redo = self.redo
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data)
        _clear_napari_history(layer)

    @property
    def layer(self) -> Any:
        return self._layer()

    # -- changes -------------------------------------------------------------------------------------------
    def apply(self, edit: Edit) -> Step | None:
        """Write a tool's edit as one undoable step."""
        return self._done(self.editor.apply(edit))

    def replace(self, labels: np.ndarray, edited: np.ndarray | None, action: str, text: str,
                metadata: dict[str, Any] | None = None, coalesce: bool = False) -> Step | None:
        """Replace the layer's labels as one program step (a threshold change, a new run), with the layer
        metadata it shows then (restored by undo). With `coalesce`, a step of the same action just before it
        (a run of threshold changes) becomes part of this one: one Ctrl+Z undoes them all."""
        layer, editor = self.layer, self.editor
        before = None if metadata is None else {k: layer.metadata.get(k) for k in metadata}
        top = editor.undo_steps[-1] if editor.undo_steps else None
        if coalesce and top is not None and top.action == action and not top.by_user and not editor.redo_steps:
            editor.undo()  # back to the state before that step; this step starts from there
            if top.payload:
                before = top.payload["before"]
        payload = None
        if metadata is not None:
            payload = {"before": before, "after": dict(metadata)}
            layer.metadata.update(metadata)
        return self._done(editor.replace(labels, edited, action=action, payload=payload, text=text))

    def undo(self) -> Step | None:
        """Undo the last step (Ctrl+Z)."""
        step = self.editor.undo()
        if step is not None and step.payload:
            self.layer.metadata.update(step.payload["before"])
        return self._done(step)

    def redo(self) -> Step | None:
        """Redo the last undone step (Ctrl+Shift+Z)."""
        step = self.editor.redo()
        if step is not None and step.payload:
            self.layer.metadata.update(step.payload["after"])
        return self._done(step)

    def _done(self, step: Step | None) -> Step | None:
        if step is None:
            return None
        layer = self.layer
        layer.refresh()
        self._sync_role(layer)
        self.changed.emit(step)
        labels_edited.emit(layer)
        return step

    def _sync_role(self, layer: Any) -> None:
        if layer_role(layer) == TRUTH:
            return
        if self.editor.user_edited:
            set_role(layer, CORRECTED)
        elif layer_role(layer) == CORRECTED:
            set_role(layer, self.base_role)  # None: the role the other rules give it (layer_roles)

    # -- napari's own tools ----------------------------------------------------------------------------------
    def _on_paint(self, event: Any) -> None:
        layer = self.layer
        if layer is None or not isinstance(layer.data, np.ndarray) or layer.data is not self.editor.labels:
            return
        indices, before, after = _atoms_to_flat(event.value, self.editor.labels.shape)
        _clear_napari_history(layer)
        if indices.size:  # napari may write the pixels after this event: the atoms say what they become
            self._sync_after(self.editor.record(indices, before, after, action=_stroke_name(event.value)))

    def _sync_after(self, step: Step | None) -> None:
        if step is not None:
            self._sync_role(self.layer)
            self.changed.emit(step)
            labels_edited.emit(self.layer)

    def _on_data(self, _: Any = None) -> None:
        layer = self.layer
        if layer is None or layer.data is self.editor.labels:
            return
        if not isinstance(layer.data, np.ndarray) or layer.data.ndim != 2:
            return
        self.editor = LabelEditor(np.ascontiguousarray(layer.data) if not layer.data.flags.c_contiguous
                                  else layer.data)
        layer.metadata[EDITED_KEY] = self.editor.edited
        self.maps_cache = None
        self.changed.emit(None)
        labels_edited.emit(layer)


def _stroke_name(atoms: list) -> str:
    new = [atom.new_value if hasattr(atom, "slice_key") else atom[2] for atom in atoms]
    return "eraser" if not any(np.any(value) for value in new) else "brush"


def _atoms_to_flat(atoms: list, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """napari history atoms of one stroke as (flat indices, ids before, ids after), in painting order."""
    indices, before, after = [], [], []
    for atom in atoms:
        if hasattr(atom, "slice_key"):  # napari's _MaskedPaintAtom: a box, a mask in it (None: all of it)
            box = atom.slice_key[-2:]
            rows = np.arange(box[0].start or 0, box[0].stop)
            cols = np.arange(box[1].start or 0, box[1].stop)
            yy, xx = np.meshgrid(rows, cols, indexing="ij")
            if atom.mask is not None:
                mask = np.asarray(atom.mask).reshape(yy.shape)
                yy, xx = yy[mask], xx[mask]
            old, new = np.asarray(atom.old_values).reshape(-1), atom.new_value
        else:  # the (indices, old values, new values) tuple of data_setitem
            idx, old, new = atom
            yy, xx = np.asarray(idx[-2]), np.asarray(idx[-1])
        yy, xx = yy.reshape(-1), xx.reshape(-1)
        indices.append(np.ravel_multi_index((yy, xx), shape[-2:]))
        before.append(np.broadcast_to(np.asarray(old), yy.shape).reshape(-1))
        after.append(np.broadcast_to(np.asarray(new), yy.shape).reshape(-1))
    if not indices:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    return np.concatenate(indices).astype(np.int64), np.concatenate(before), np.concatenate(after)


def _clear_napari_history(layer: Any) -> None:
    """Empty napari's own undo history (undo goes through the editor; napari's would replay stale pixels)."""
    for name in ("_undo_history", "_redo_history"):
        history = getattr(layer, name, None)
        if history is not None:
            history.clear()


def editing_for(layer: Any, create: bool = True) -> LayerEditing | None:
    """The `LayerEditing` of a labels layer, made on first use (`create`); None when there is none yet.

    Raises:
        InvalidInputError: the layer cannot be edited here (multiscale, not 2-D, not in memory).
    """
    editing = _EDITING.get(layer)
    if editing is None and create:
        editing = _EDITING[layer] = LayerEditing(layer)
    return editing


def user_edited(layer: Any) -> bool:
    """Whether a person changed anything in the layer (by the editor, or by a role recorded as "corrected")."""
    editing = _EDITING.get(layer)
    if editing is not None:
        return editing.editor.user_edited
    return layer_role(layer) == CORRECTED
