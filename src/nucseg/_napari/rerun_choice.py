"""Running Segment again on an image whose labels a person corrected: ask first, and say which layer is which.

Before a run, `corrected_layers` finds the labels layers of the same image that a person edited. If there are
any, `ask` (a dialog; tests replace it) offers to keep them and open the run as a new, plainly named layer
(`new_run_name`), or to replace the corrected layer's labels with the run, as one step of that layer's history
(Ctrl+Z there brings the corrections back). Nothing the person made is overwritten without being asked.
"""

from __future__ import annotations

from typing import Any

from napari.layers import Labels
from qtpy.QtWidgets import QMessageBox

from .label_editing import user_edited

KEEP, REPLACE = "keep", "replace"


def corrected_layers(viewer: Any, image_name: str) -> list[Labels]:
    """The labels layers made from the image layer `image_name` that a person edited, oldest first."""
    return [layer for layer in viewer.layers if isinstance(layer, Labels) and user_edited(layer)
            and (layer.metadata.get("nucseg_image") or {}).get("name") == image_name]


def new_run_name(viewer: Any, title: str) -> str:
    """``"<title> (new run)"``, numbered when that name is taken: never napari's silent ``[1]``."""
    names = {layer.name for layer in viewer.layers}
    name, k = f"{title} (new run)", 2
    while name in names:
        name, k = f"{title} (new run {k})", k + 1
    return name


def ask(parent: Any, corrected: Labels, new_name: str, can_replace: bool) -> str | None:
    """Ask what to do with a corrected layer before a new run: KEEP, REPLACE, or None (cancel the run)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Run again on corrected labels?")
    box.setText(f"{corrected.name!r} holds your corrections.")
    text = f"Keep it as it is and open the new run as a new layer, {new_name!r}"
    if can_replace:
        text += (f"; or replace the labels of {corrected.name!r} with the new run (your corrections are then one "
                 "Ctrl+Z away in that layer)")
    box.setInformativeText(text + ".")
    keep = box.addButton("Keep mine, open a new layer", QMessageBox.ButtonRole.AcceptRole)
    replace = box.addButton("Replace (undoable)", QMessageBox.ButtonRole.DestructiveRole) if can_replace else None
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(keep)
    box.exec()
    clicked = box.clickedButton()
    if clicked is keep:
        return KEEP
    if replace is not None and clicked is replace:
        return REPLACE
    return None
