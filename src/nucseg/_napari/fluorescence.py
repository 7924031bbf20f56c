"""A persistent, readable warning in the Segment dock before a fluorescence slide is segmented.

The reader marks a slide that looks like fluorescence (``metadata["modality"]``, with its reason, from
`nucseg.io.slides.slide_modality`). The default model segments brightfield H&E and finds background blobs in such
an image, so, as ``nucseg predict`` refuses it without ``--allow-fluorescence`` (`require_brightfield`), the
Segment dock shows the same message (`fluorescence_refusal`) under the image choice for as long as that image is
chosen, and Run refuses it until *segment this fluorescence image anyway* is ticked (the tick is per image).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QCheckBox, QLabel, QVBoxLayout, QWidget

from nucseg.errors import InvalidInputError
from nucseg.io.slides import fluorescence_refusal

ALLOW_TEXT = "segment this fluorescence image anyway"
#: image-layer metadata key: the user ticked `ALLOW_TEXT` for this image
ALLOWED_KEY = "nucseg_allow_fluorescence"
STYLE = ("QLabel { background-color: #ffcc80; color: #1a1a1a; border: 2px solid #e65100; border-radius: 4px; "
         "padding: 6px; font-weight: bold; }")


def _fluorescent(layer: Any) -> bool:
    return layer is not None and layer.metadata.get("modality") == "fluorescence"


def message(layer: Any) -> str:
    """The refusal for a fluorescence image layer (the CLI's words, with the viewer's way on)."""
    return fluorescence_refusal(repr(layer.name), layer.metadata.get("modality_reason") or "its colours",
                                f"tick '{ALLOW_TEXT}' in the Segment dock")


class FluorescenceGuard(QWidget):
    """The warning and the tick box; hidden while the chosen image is brightfield."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setStyleSheet(STYLE)
        self.allow_check = QCheckBox(ALLOW_TEXT)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.allow_check)
        self._layer: Any = None
        self.allow_check.toggled.connect(self._toggled)
        self.setVisible(False)

    def sync(self, layer: Any) -> None:
        """Show the warning for `layer` (the chosen image) when it is fluorescence, else hide it."""
        self._layer = layer
        shown = _fluorescent(layer)
        if shown:
            self.label.setText(f"⚠ Fluorescence image. {message(layer)}.")
            self.allow_check.blockSignals(True)
            self.allow_check.setChecked(bool(layer.metadata.get(ALLOWED_KEY)))
            self.allow_check.blockSignals(False)
        self.setVisible(shown)

    def _toggled(self, on: bool) -> None:
        if self._layer is not None:
            self._layer.metadata[ALLOWED_KEY] = on

    def check(self, layer: Any) -> None:
        """Raise `InvalidInputError` (the warning's message) when `layer` is fluorescence and not allowed."""
        if _fluorescent(layer) and not layer.metadata.get(ALLOWED_KEY):
            raise InvalidInputError(message(layer))
