"""The docks' layer pickers: magicgui's layer-aware `ComboBox` (`LayerPicker`), one per layer choice.

magicgui builds the widget from a napari layer annotation (`napari.layers.Image`, `...Labels`, `...Shapes`); its
choices are a callable of the viewer's layers of that type, filtered by the dock's rule (e.g. not an overlay), and
`reset_choices` re-reads them. napari calls `reset_choices` on a docked magicgui widget when layers are added,
removed, reordered or renamed; the docks are plain QWidgets that are also used undocked (tests, scripts), so each
picker listens to the same four events of its viewer itself.

A name too long for the box is shown elided in the middle ("TCGA-A7-A1…v2)", `layers.ElideNames`), so neither the
dock nor the box grows with it; the whole name is its tooltip, above what the choice is for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from magicgui.widgets import ComboBox, create_widget
from qtpy.QtWidgets import QComboBox

from .layers import MIN_NAME_CHARS, ElideNames, elided_text

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

#: the viewer's layer-list events after which the choices are re-read (those napari wires to a docked widget)
LAYER_EVENTS = ("inserted", "removed", "reordered", "renamed")


def layer_picker(viewer: napari.viewer.Viewer, layer_type: type, *, optional: bool = False,
                 predicate: Callable[[Layer], bool] | None = None) -> LayerPicker:
    """A magicgui combo box of `viewer`'s layers of `layer_type` that pass `predicate`, kept in step with them.

    Args:
        viewer: the napari viewer.
        layer_type: a napari layer class (the annotation magicgui builds the widget for).
        optional: offer no layer too (magicgui's null choice).
        predicate: a dock's extra rule, e.g. no overlay layers.
    """

    def choices(_widget: Any) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in viewer.layers
                if isinstance(layer, layer_type) and (predicate is None or predicate(layer))]

    annotation = Optional[layer_type] if optional else layer_type  # noqa: UP045 - magicgui reads typing.Optional
    widget = create_widget(annotation=annotation, options={"choices": choices, "nullable": optional},
                           widget_type=LayerPicker)
    widget._follow(viewer)
    return widget


class LayerPicker(ComboBox):
    """magicgui's layer `ComboBox`, with the few calls the docks and their tests make: `current_layer`,
    `set_layer`, `layers`, `setToolTip`, `currentText`, `shown_text`. Put `.native` in a Qt layout."""

    null_string = "(none)"

    def _follow(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self._hint = ""
        combo: QComboBox = self.native
        # set before the first size is computed: QComboBox caches its minimum size hint
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(MIN_NAME_CHARS)
        combo.setProperty("nucseg_elided", True)  # `ElideNames.install` (docks) leaves it as it is
        combo.installEventFilter(ElideNames(combo))
        combo.currentTextChanged.connect(self._show_name_tip)
        for name in LAYER_EVENTS:
            getattr(viewer.layers.events, name).connect(self._layers_changed)
        self.reset_choices()
        self._show_name_tip()

    def _layers_changed(self, *_: Any) -> None:
        try:
            chosen = self.value
            with self.changed.blocked():  # one `changed`, and only when the choice really changed
                self.reset_choices()
                if chosen is not None and self.value is not chosen and any(c is chosen for c in self.choices):
                    self.value = chosen  # renamed: magicgui keeps a choice by its name; this follows the layer
            if self.value is not chosen:
                self.changed.emit(self.value)
        except RuntimeError:  # the dock was closed: its Qt combo box is gone
            for name in LAYER_EVENTS:
                getattr(self.viewer.layers.events, name).disconnect(self._layers_changed)

    def setToolTip(self, text: str) -> None:  # noqa: N802 - Qt's name, as `tooltips.apply` calls it
        """What the choice is for; shown under the chosen layer's whole name."""
        self._hint = text
        self._show_name_tip()

    def toolTip(self) -> str:  # noqa: N802 - Qt's name
        return self.native.toolTip()

    def _show_name_tip(self, *_: Any) -> None:
        name = self.currentText()
        self.native.setToolTip("\n".join(t for t in (name, self._hint) if t))

    def currentText(self) -> str:  # noqa: N802 - Qt's name
        """The chosen layer's name ("(none)" for no layer)."""
        return self.native.currentText()

    def shown_text(self) -> str:
        """The chosen name as drawn: elided in the middle to the width of the box's text field."""
        return elided_text(self.native)

    def layers(self) -> list[Layer]:
        """The layers that may be chosen now (read from the viewer: napari may call a dock's own layer-event
        callbacks before this picker's `reset_choices`)."""
        return [layer for _, layer in self._default_choices(self)]

    def current_layer(self) -> Layer | None:
        """The chosen layer, or None."""
        return self.value

    def set_layer(self, layer: Layer | str | None) -> None:
        """Choose a layer (or a layer name; None or "(none)": no layer, where that is offered). A layer that is
        not offered leaves the choice as it is (as a Qt combo box does with an unknown text)."""
        self.reset_choices()
        if layer is None or layer == self.null_string:
            if self._nullable:
                self.value = None
            return
        name = layer if isinstance(layer, str) else layer.name
        chosen = next((choice for choice in self.layers() if choice.name == name), None)
        if chosen is not None:
            self.value = chosen
