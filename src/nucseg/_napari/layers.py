"""Layers <-> arrays: what the widgets read from napari layers and what they turn results into.

Coordinates: napari places pixel ``i`` of a layer at ``translate + i * scale`` (the pixel's CENTRE) in world
coordinates. Regions are ``(y, x, h, w)`` in level-0 pixels of the image; a pixel belongs to a drawn rectangle
or to the field of view when its centre lies inside. A result of a region at level-0 offset ``(y0, x0)`` is
shown with the image's scale and ``translate = image translate + (y0, x0) * scale``, so it overlays exactly;
probabilities live at the model's resolution, each pixel covering ``f = region h / prob h`` level-0 pixels,
so their scale is ``image scale * f`` and their first pixel's centre sits at ``(f - 1) / 2`` level-0 pixels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QComboBox, QStyle, QStyleOptionComboBox, QStylePainter

from nucseg.errors import InvalidInputError
from nucseg.inference.result_store import PYRAMID_MIN_SIZE

from .layer_source import ImageInput, LayerPyramid, image_input, layer_mpp  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

    from nucseg.inference.predict import PredictionResult

Region = tuple[int, int, int, int]

#: a layer choice is this many characters wide, whatever the names (longer ones are elided)
MIN_NAME_CHARS = 14
#: pixels: how far outside a drawn box (or the field of view) a pixel centre may lie and still count as inside
EDGE_TOLERANCE = 1e-3


def field_of_view_region(viewer: napari.viewer.Viewer, layer: Layer) -> Region:
    """The part of `layer` visible on the canvas, as (y, x, h, w) level-0 pixels clipped to the image.

    Uses the camera (centre, zoom = screen pixels per world unit) and the size of one canvas view box.

    Raises:
        InvalidInputError: the image is not in view.
    """
    height, width = viewer.canvas.viewbox_size(viewer.layers)
    camera = viewer.scene.camera
    zoom = camera.zoom
    cy, cx = camera.center[-2:]
    corners = [(cy - height / zoom / 2, cx - width / zoom / 2), (cy + height / zoom / 2, cx + width / zoom / 2)]
    return _world_box_to_region(layer, corners, "the field of view")


def chosen_regions(choice: str, viewer: napari.viewer.Viewer, layer: Layer, shapes: Layer | None
                   ) -> list[Region | None]:
    """The regions to segment for a choice "whole" (``[None]``), "view" (the field of view) or "shapes" (each
    shape's bounding box in `shapes`).

    Raises:
        InvalidInputError: "shapes" without a Shapes layer, or a region outside the image.
    """
    if choice == "view":
        return [field_of_view_region(viewer, layer)]
    if choice == "shapes":
        if shapes is None:
            raise InvalidInputError("no Shapes layer: add one and draw rectangles on the image")
        return list(shapes_to_regions(shapes, layer))
    return [None]


def _world_box_to_region(layer: Layer, world_points: Sequence[Sequence[float]], what: str) -> Region:
    point = np.asarray(layer.data_to_world([0] * layer.ndim), float)
    data = []
    for yx in world_points:
        point[-2:] = yx
        data.append(np.asarray(layer.world_to_data(point))[-2:])
    lo, hi = np.min(data, axis=0), np.max(data, axis=0)
    H, W = _level0_shape(layer)
    # a centre within EDGE_TOLERANCE px of the box counts as inside: napari stores shapes in float32, so a corner
    # drawn on a pixel centre at 449.1 µm comes back as 449.10001 (900.00001 px at 0.499 µm/px)
    y0, x0 = max(math.ceil(lo[0] - EDGE_TOLERANCE), 0), max(math.ceil(lo[1] - EDGE_TOLERANCE), 0)
    y1 = min(math.floor(hi[0] + EDGE_TOLERANCE) + 1, H)
    x1 = min(math.floor(hi[1] + EDGE_TOLERANCE) + 1, W)
    if y1 <= y0 or x1 <= x0:
        raise InvalidInputError(f"{what} does not overlap the image {layer.name!r}")
    return (y0, x0, y1 - y0, x1 - x0)


def level0_data(layer: Layer) -> Any:
    """A layer's data, or the finest level of a multiscale layer."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def _level0_shape(layer: Layer) -> tuple[int, int]:
    shape = level0_data(layer).shape[:-1] if getattr(layer, "rgb", False) else level0_data(layer).shape
    return int(shape[-2]), int(shape[-1])


def shapes_to_regions(shapes_layer: Layer, image_layer: Layer) -> list[Region]:
    """The bounding boxes of the shapes (rectangles, or any shape) in level-0 pixels of the image.

    Raises:
        InvalidInputError: there are no shapes, or one lies outside the image.
    """
    if not len(shapes_layer.data):
        raise InvalidInputError(f"shapes layer {shapes_layer.name!r} is empty: draw a rectangle on the image first")
    regions = []
    for index, vertices in enumerate(shapes_layer.data, start=1):
        world = [np.asarray(shapes_layer.data_to_world(v))[-2:] for v in np.asarray(vertices)]
        regions.append(_world_box_to_region(image_layer, world, f"shape {index}"))
    return regions


def result_transform(image_scale: Sequence[float], image_translate: Sequence[float], region: Region
                     ) -> tuple[tuple[float, float], tuple[float, float]]:
    """(scale, translate) of a labels result of `region`, so that it overlays the image exactly."""
    scale = tuple(float(s) for s in image_scale[-2:])
    translate = tuple(float(t) + o * s for t, o, s in zip(image_translate[-2:], region[:2], scale))
    return scale, translate  # type: ignore[return-value]


def probability_transform(image_scale: Sequence[float], image_translate: Sequence[float], region: Region,
                          prob_shape: Sequence[int]) -> tuple[tuple[float, float], tuple[float, float]]:
    """(scale, translate) of a probability map at the model's resolution covering `region`."""
    factor = (region[2] / int(prob_shape[-2]), region[3] / int(prob_shape[-1]))
    scale = tuple(float(s) * f for s, f in zip(image_scale[-2:], factor))
    translate = tuple(float(t) + (o + (f - 1) / 2) * float(s)
                      for t, o, f, s in zip(image_translate[-2:], region[:2], factor, image_scale[-2:]))
    return scale, translate  # type: ignore[return-value]


@dataclasses.dataclass
class ResultDisplay:
    """What the layers of one result show, prepared in the worker (reading zarr on the GUI thread stalls it).

    Attributes:
        labels: numpy labels (editable), or zarr level arrays (a multiscale slide result, read-only in napari).
        labels_multiscale: whether `labels` is a list of levels.
        probability: the foreground probability (numpy, or level arrays), at the model's resolution.
        probability_multiscale: whether `probability` is a list of levels.
        contrast_limits: of the probability (0..1 float, or 0..255 for quantised zarr).
        layer: the Labels layer, when it was built in the worker too (`result_layers.build_labels_layer`).
    """

    labels: Any
    labels_multiscale: bool
    probability: Any
    probability_multiscale: bool
    contrast_limits: tuple[float, float]
    layer: Any = None


def result_display(result: PredictionResult, reuse_pyramid: bool = True) -> ResultDisplay:
    """Prepare a result for its layers (call it in a worker): numpy as it is; zarr as a stored pyramid
    (`nucseg.inference.result_store.zarr_pyramid`), and a zarr result small enough for one level is read into memory so that
    it can be edited (the run's array on disk stays as it was written)."""
    from nucseg.inference.result_store import zarr_pyramid

    labels, probs = result.labels, result.probabilities
    if isinstance(labels, np.ndarray):
        label_levels: Any = labels
    else:
        label_levels = zarr_pyramid(labels, PYRAMID_MIN_SIZE, reuse=reuse_pyramid)
        label_levels = label_levels if len(label_levels) > 1 else np.asarray(label_levels[0])
    if isinstance(probs, np.ndarray):
        prob_levels: Any = probs[0]
        limits = (0.0, 1.0)
    else:
        prob_levels = zarr_pyramid(probs, PYRAMID_MIN_SIZE, channel=0)
        prob_levels = prob_levels if len(prob_levels) > 1 else np.asarray(prob_levels[0])
        limits = (0.0, 255.0)
    return ResultDisplay(label_levels, isinstance(label_levels, list), prob_levels, isinstance(prob_levels, list),
                         limits)


def plane_index(layer: Layer, viewer: napari.viewer.Viewer) -> tuple[int, ...]:
    """Index of the displayed plane of a stack layer (leading axes), e.g. ``(3,)`` for slice 3 of (N, H, W)."""
    lead = layer.ndim - 2
    if lead <= 0:
        return ()
    data_point = np.asarray(layer.world_to_data(viewer.dims.point))
    shape = layer.data.shape
    return tuple(int(np.clip(round(float(v)), 0, shape[i] - 1)) for i, v in enumerate(data_point[:lead]))


def elided_text(combo: QComboBox) -> str:
    """A combo box's current text elided in the middle to the width of its text field."""
    option = QStyleOptionComboBox()
    combo.initStyleOption(option)
    field = combo.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, option,
                                         QStyle.SubControl.SC_ComboBoxEditField, combo)
    return combo.fontMetrics().elidedText(option.currentText, Qt.TextElideMode.ElideMiddle, field.width())


def paint_elided(combo: QComboBox) -> None:
    """Draw a (non-editable) combo box with its current text elided in the middle (Qt clips it at the right)."""
    painter = QStylePainter(combo)
    option = QStyleOptionComboBox()
    combo.initStyleOption(option)
    painter.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, option)
    option.currentText = elided_text(combo)
    painter.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, option)
    painter.end()


class ElideNames(QObject):
    """An event filter that draws a plain combo box's long entries elided in the middle (a layer picker,
    `layer_picker`, has it too) and gives it the whole text as its tooltip; `install` puts it on a combo box."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Paint and isinstance(watched, QComboBox) and not watched.isEditable():
            paint_elided(watched)
            return True
        return False

    @classmethod
    def install(cls, combo: QComboBox) -> None:
        if combo.isEditable() or combo.property("nucseg_elided"):
            return
        combo.setProperty("nucseg_elided", True)
        keeper = cls(combo)  # parented: lives as long as the combo
        combo.installEventFilter(keeper)
        combo.view().setTextElideMode(Qt.TextElideMode.ElideMiddle)
        hint = combo.toolTip()
        combo.currentTextChanged.connect(lambda text: combo.setToolTip("\n".join(t for t in (text, hint) if t)))
        combo.setToolTip("\n".join(t for t in (combo.currentText(), hint) if t))
