"""Keyboard shortcuts of the plugin's docks: viewer-wide (napari's keymap, with the canvas focused), all with
Ctrl+Shift so that none takes a key napari or its layers use (napari's own list: Help > Keyboard Shortcuts).

Each is bound when its dock opens and acts on every open dock of its kind (Stop stops the Segment and the
Evaluate jobs); a dock that was closed does nothing. A key already bound by napari or another plugin is left to it (the shortcut is then not bound, and the
dock's button tooltip does not claim it).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

#: (napari key name, what it does): the table docs/VIEWER.md shows
SHORTCUTS = {
    "segment_run": ("Control-Shift-R", "Segment: Run (segment the chosen image and region)"),
    "stop": ("Control-Shift-X", "Segment / Evaluate: Stop the running job (what is done is kept)"),
    "evaluate": ("Control-Shift-E", "Evaluate: score the prediction against the truth"),
    "next_error": ("Control-Shift-N", "Evaluate: go to the next FP / FN in the list"),
    "previous_error": ("Control-Shift-B", "Evaluate: go back to the previous FP / FN"),
    "side_by_side": ("Control-Shift-G", "Evaluate: side by side on / off"),
    "heatmap": ("Control-Shift-H", "Measurements: add the density heatmap"),
}
_owners: dict[str, list[tuple[Any, Callable[[], Any]]]] = {}


def label(name: str) -> str:
    """'Ctrl+Shift+R' for a shortcut name, for tooltips and docs."""
    return SHORTCUTS[name][0].replace("Control", "Ctrl").replace("-", "+")


def bind(viewer: Any, name: str, owner: Any, action: Callable[[], Any]) -> bool:
    """Bind shortcut `name` to `action` of `owner` (a dock widget, held weakly); False when napari or another
    plugin already uses the key."""
    from napari.utils.key_bindings import coerce_keybinding

    viewer = getattr(viewer, "__wrapped__", viewer)
    key = SHORTCUTS[name][0]
    current = viewer.keymap.get(coerce_keybinding(key))
    if current is not None and not getattr(current, "_nucseg", False):
        return False
    _owners[name] = [(ref, act) for ref, act in _owners.get(name, []) if _alive(ref())]
    _owners[name].append((weakref.ref(owner), action))

    def pressed(_viewer: Any) -> None:
        for ref, act in list(_owners.get(name, [])):  # every open dock of the kind (Stop: both docks' jobs)
            if _alive(ref()):
                act()

    pressed._nucseg = True  # type: ignore[attr-defined]
    viewer.bind_key(key, pressed, overwrite=True)
    return True


def _alive(widget: Any) -> bool:
    if widget is None:
        return False
    try:
        widget.objectName()  # raises once Qt deleted the dock
    except RuntimeError:
        return False
    return True


def with_shortcut(text: str, name: str) -> str:
    """A tooltip ending with the shortcut."""
    return f"{text} ({label(name)})" if text else label(name)
