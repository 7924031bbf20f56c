"""The "Correct nuclei" box of the Corrections dock: a button per tool, undo / redo, a short help, a status line.

The tools act on the active labels layer (the one selected in the layer list), as napari's own brush does;
`label_tools.CorrectionTools` does the work. Keys work on the canvas: A add, D delete, G merge, S split, K cut,
P brush, E eraser, Ctrl+Z undo, Ctrl+Shift+Z redo.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QButtonGroup, QGridLayout, QGroupBox, QLabel, QPushButton, QVBoxLayout

from .label_tools import TOOLS, CorrectionTools, editable_labels

HELP = ("Keys on the canvas: A add a missed nucleus (click), D delete (click), G merge (click two touching "
        "nuclei), S split (two clicks, one per part), K cut (drag a line across), P brush, E eraser, "
        "Ctrl+Z / Ctrl+Shift+Z undo / redo (threshold changes included). Tools act on the selected labels "
        "layer; a ground-truth layer is never edited.")


class CorrectionToolsBox(QGroupBox):
    """Tool buttons bound to the active labels layer.

    Args:
        viewer: the napari viewer.
        image_for: returns the image layer of a labels layer (the add tool runs the model on it when the layer
            has no prediction of its own), or None.
    """

    def __init__(self, viewer: Any, image_for: Any):
        super().__init__("Correct nuclei")
        self.viewer = viewer
        self.status = QLabel("select a labels layer to correct")
        self.status.setWordWrap(True)
        self.status.setMinimumWidth(1)  # wraps in a narrow dock instead of widening it
        self.tools = CorrectionTools(viewer, self.status.setText, image_for)
        self.buttons: dict[str, QPushButton] = {}
        self.group = QButtonGroup(self)
        self.group.setExclusive(False)  # a second click on the active tool turns it off
        grid = QGridLayout()
        for k, (name, key, text, what) in enumerate(TOOLS):
            button = QPushButton(f"{text} ({key})")
            button.setCheckable(True)
            button.setToolTip(f"{what} [key {key}]")
            button.clicked.connect(lambda checked, n=name: self.tools.activate(n if checked else None))
            self.group.addButton(button)
            self.buttons[name] = button
            grid.addWidget(button, k // 3, k % 3)
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("undo the last change to the layer (Ctrl+Z): a tool, a stroke or a threshold "
                                    "change")
        self.redo_button = QPushButton("Redo")
        self.redo_button.setToolTip("redo the last undone change (Ctrl+Shift+Z)")
        grid.addWidget(self.undo_button, 2, 1)
        grid.addWidget(self.redo_button, 2, 2)
        self.help = QLabel(HELP)
        self.help.setWordWrap(True)
        self.help.setStyleSheet("color: #9e9e9e")
        self.help.setMinimumWidth(1)
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(self.help)
        layout.addWidget(self.status)
        self.undo_button.clicked.connect(self.tools.undo)
        self.redo_button.clicked.connect(self.tools.redo)
        self.tools.on_tool_changed.append(self._show_tool)
        viewer.layers.selection.events.active.connect(self._follow_active)
        self._follow_active()

    def _follow_active(self, *_: Any) -> None:
        active = self.viewer.layers.selection.active
        if editable_labels(active):
            self.tools.bind(active)
            self.status.setText(f"correcting {active.name!r}")
        else:
            self.tools.bind(None)
        enabled = self.tools.layer is not None
        for button in (*self.buttons.values(), self.undo_button, self.redo_button):
            button.setEnabled(enabled)

    def _show_tool(self, tool: str | None) -> None:
        for name, button in self.buttons.items():
            button.setChecked(name == tool)
