"""The pixel-size field of the segment widget: the file's size (fixed), a size the user gives, or "unknown".

Honesty rule: a size counts as known only when the file says it or the user gave it, whatever its value (a 40x
PNG for which the user types 0.25 gets µm exports, though 0.25 is also the model's own). Untouched, the field
shows "unknown": the model then assumes its own resolution and exports stay in pixels. A value the user gave is
kept on the image layer (``metadata["mpp"]``, ``metadata[MPP_FROM] == "user"``) so corrections, fine-tuning and
measurements use it too, and when a run starts the image is shown in µm (`show_in_microns`) with the layers on it,
so the image, its labels and their reopened exports share one frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QDoubleSpinBox, QLabel

from nucseg.errors import InvalidInputError

from .layer_source import layer_mpp

if TYPE_CHECKING:
    from napari.layers import Layer

#: image-layer metadata key: "user" when its "mpp" was given in this widget rather than read from the file
MPP_FROM = "nucseg_mpp_from"
#: the nuclei can be segmented from 100x to 5x
MPP_RANGE = (0.1, 2.0)
UNKNOWN_TEXT = "unknown"


def _file_mpp(layer: Layer | None) -> float | None:
    if layer is None or layer.metadata.get(MPP_FROM) == "user":
        return None
    return layer_mpp(layer)


class PixelSizeField:
    """A spin box (its minimum, 0, reads "unknown") and a note under it, synchronised with the chosen image.

    Args:
        model_mpp: a callable giving the chosen model's µm/px (for the note).
    """

    def __init__(self, model_mpp):
        self.model_mpp = model_mpp
        self.spin = QDoubleSpinBox()
        self.spin.setRange(0.0, MPP_RANGE[1])
        self.spin.setSpecialValueText(UNKNOWN_TEXT)  # shown at the minimum, 0
        self.spin.setDecimals(3)
        self.spin.setSingleStep(0.05)
        self.spin.setSuffix(" µm/px")
        self.spin.setToolTip("microns per pixel of the image; 'unknown' keeps every export in pixels")
        self.note = QLabel()
        self.note.setWordWrap(True)

    def sync(self, layer: Layer | None) -> None:
        """Show `layer`'s size: the file's (fixed), the user's earlier value, or unknown."""
        file_mpp = _file_mpp(layer)
        self.spin.setEnabled(layer is not None and file_mpp is None)
        self.spin.blockSignals(True)
        self.spin.setValue(file_mpp or (layer_mpp(layer) if layer is not None else None) or 0.0)
        self.spin.blockSignals(False)
        model_mpp = self.model_mpp()
        if layer is None:
            self.note.setText("")
        elif file_mpp is not None:
            self.note.setText(f"from the file (about {10 / file_mpp:.0f}x)")
        else:
            assumed = f"its own {model_mpp:g} µm/px" if model_mpp else "its own resolution"
            self.note.setText(f"not in the file: type it (40x is about 0.25, 20x about 0.5, 10x about 1.0); "
                              f"left unknown, the model assumes {assumed} and exports stay in px")

    def value_for(self, layer: Layer) -> float | None:
        """The µm/px to segment `layer` at: the file's, the user's (stored on the layer), or None (unknown).

        Raises:
            InvalidInputError: a value below the smallest pixel size nuclei can be segmented at.
        """
        file_mpp = _file_mpp(layer)
        if file_mpp is not None:
            return file_mpp
        value = round(self.spin.value(), 4)
        if value == 0.0:
            if layer.metadata.get(MPP_FROM) == "user":  # the user set it back to unknown
                layer.metadata.pop("mpp", None)
                layer.metadata.pop(MPP_FROM, None)
            return None
        if value < MPP_RANGE[0]:
            raise InvalidInputError(f"pixel size {value} µm/px is finer than {MPP_RANGE[0]} (100x): type the image's "
                                    "real size, or leave it 'unknown'")
        layer.metadata["mpp"], layer.metadata[MPP_FROM] = value, "user"
        return value


#: image-layer metadata key: the µm/px the layer is shown in because the user gave it (see `show_in_microns`)
SHOWN_MPP = "nucseg_shown_mpp"


def _attached(layer: Layer, image: Layer, units: tuple) -> bool:
    """Whether `layer` sits on `image` in its frame: a result or probability naming it, or labels / shapes /
    points in the image's units lying within its extent (drawn regions, a truth of the same tile)."""
    ref = layer.metadata.get("nucseg_image")
    name = ref.get("name") if isinstance(ref, dict) else ref
    if name is not None:
        return name == image.name
    if layer._type_string not in ("labels", "shapes", "points") or tuple(layer.units)[-2:] != units:
        return False
    lo, hi = np.asarray(layer.extent.world)[:, -2:]
    ilo, ihi = np.asarray(image.extent.world)[:, -2:]
    step = np.asarray(image.scale[-2:], float)
    return bool(np.all(lo >= ilo - step) and np.all(hi <= ihi + step))


def show_in_microns(viewer, image: Layer, mpp: float | None) -> None:
    """Show an image whose pixel size the user gave (`mpp`) in µm, with the layers attached to it, so that its
    results, their exports and their reopened files share one frame; back in pixels when the size is set back to
    unknown. Images whose size came from their file are left as they are (already in µm)."""
    if image.metadata.get(MPP_FROM) != "user" and SHOWN_MPP not in image.metadata:
        return
    old_size = float(image.scale[-1])
    old_units = tuple(image.units)[-2:]
    new_size, new_units = (float(mpp), ("micrometer", "micrometer")) if mpp else (1.0, ("pixel", "pixel"))
    if image.metadata.get(SHOWN_MPP) == mpp and abs(old_size - new_size) <= 1e-12 * new_size:
        return
    ratio = new_size / old_size if old_size else 1.0
    moving = [image, *(layer for layer in viewer.layers if layer is not image and _attached(layer, image, old_units))]
    for layer in moving:
        lead = layer.ndim - 2
        layer.scale = [*layer.scale[:lead], *(float(s) * ratio for s in layer.scale[-2:])]
        layer.translate = [*layer.translate[:lead], *(float(t) * ratio for t in layer.translate[-2:])]
        layer.units = [*tuple(layer.units)[:lead], *new_units]
    if mpp:
        image.metadata[SHOWN_MPP] = mpp
    else:
        image.metadata.pop(SHOWN_MPP, None)
