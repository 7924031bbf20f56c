"""Image | truth | prediction side by side in napari's grid mode, at cell level, with one linked camera."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.layers import Image

from nucseg.errors import InvalidInputError

from ._loop import StepQueue, collect_garbage
from .evaluation_layers import CELL_VIEW_PX

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer


class SideBySide:
    """Image | truth | prediction in napari's grid mode, each labels layer drawn over its own copy of the image.

    Grid mode puts each group of ``|stride|`` consecutive visible layers in its own view box. With stride -2 the
    groups are counted from the TOP of the layer list, so the layers ordered, bottom to top, ``image copy,
    prediction, image copy, truth, image, overlay (hidden)`` give three panels, left to right: the image (with the
    TP/FP/FN overlay, hidden, a click away), the truth over the image, the prediction over the image.

    The panels show the user's own layers: corrections made there are made to them, with their undo history.
    Only the two images under the labels are copies (sharing the image's data: no memory). Every other layer is
    hidden while the view is on. `disable` removes the copies and restores the layers' order, visibility and the
    grid settings. Turned on or off from the GUI, each layer is added, moved, removed or shown in its own turn of
    the event loop (`StepQueue`), so the window never freezes for their sum: adding a labels layer was the
    costliest of those turns (0.1-0.25 s on a 2-core machine), and there are none left to add.

    Args:
        viewer: the napari viewer.
    """

    PREFIX = "[side by side] "

    def __init__(self, viewer: napari.viewer.Viewer):
        self.viewer = viewer
        self.copies: list[Layer] = []
        self._saved: dict[str, Any] | None = None
        self._steps = StepQueue()

    @property
    def enabled(self) -> bool:
        return self._saved is not None

    def enable(self, image: Layer, truth: Layer, pred: Layer, overlay: Layer | None = None,
               centre: tuple[float, float] | None = None) -> None:
        """Show the three panels (replacing an earlier side-by-side view), at cell level.

        Args:
            image, truth, pred: the layers to show.
            overlay: the TP / FP / FN overlay, hidden in the image panel.
            centre: world (y, x) to centre the panels on; default the current camera centre. The zoom shows
                about `CELL_VIEW_PX` image pixels across each panel: cells, not the whole image.
        """
        if truth is pred:
            raise InvalidInputError("side by side needs two different labels layers: the truth and the prediction")
        self.disable()
        layers, grid = self.viewer.layers, self.viewer.canvas.grid
        shown = [layer for layer in (pred, truth, image, overlay) if layer is not None]  # bottom to top

        def hide_all() -> None:
            self._saved = {"visible": {layer: layer.visible for layer in layers}, "order": list(layers),
                           "grid": (grid.enabled, grid.stride, grid.shape)}
            for layer in layers:
                layer.visible = False
            grid.stride, grid.shape = -2, (1, 3)  # cheap while the grid is off

        def arrange() -> None:  # hidden layers do not count in the grid: only these four need an order
            present = [layer for layer in shown if layer in layers]
            layers.move_multiple([layers.index(layer) for layer in present], len(layers))

        def show_grid() -> None:  # before the layers appear: napari builds the empty panels once
            grid.enabled = True

        def image_copy(title: str) -> Layer:
            return Image(image.data, name=f"{self.PREFIX}{title}", rgb=image.rgb, multiscale=image.multiscale,
                         scale=image.scale, translate=image.translate, units=image.units,
                         contrast_limits=image.contrast_limits, visible=False, metadata={"nucseg_overlay": True})

        under_pred, under_truth = image_copy(f"image under {pred.name}"), image_copy(f"image under {truth.name}")
        self.copies = [under_pred, under_truth]

        def insert_below(copy: Layer, labels: Layer) -> None:
            if labels in layers:
                layers.insert(layers.index(labels), copy)

        camera = self.viewer.scene.camera
        centre = tuple(camera.center[-2:]) if centre is None else centre

        def zoom_to_cells() -> None:
            # one camera for all panels: zoom and pan stay linked; cell level = CELL_VIEW_PX pixels across a panel
            height, width = self.viewer.canvas.viewbox_size(self.viewer.layers)
            camera.center = centre
            camera.zoom = min(height, width) / (CELL_VIEW_PX * max(abs(float(s)) for s in image.scale[-2:]))
            if pred in layers:
                layers.selection.active = pred  # the layer a correction goes to, not the last copy added

        # each image copy added hidden (napari's controls and visual), then shown (its slice and texture)
        self._steps.extend([collect_garbage, hide_all, arrange, show_grid,
                            lambda: insert_below(under_pred, pred), lambda: insert_below(under_truth, truth),
                            *(lambda layer=layer: self._show(layer) for layer in (under_pred, pred, under_truth,
                                                                                  truth, image)),
                            zoom_to_cells])

    def _show(self, layer: Layer) -> None:
        if layer in self.viewer.layers:  # the user may have deleted it meanwhile
            layer.visible = True

    @property
    def busy(self) -> bool:
        """Whether steps of turning the view on or off are still to run."""
        return bool(self._steps)

    def disable(self) -> None:
        """Remove the copies, restore the layers' order, their visibility and the grid settings."""
        copies, self.copies = self.copies, []
        if not copies and self._saved is None:
            return
        layers = self.viewer.layers

        # napari collects garbage (0.1-0.2 s with a few hundred thousand objects) and rebuilds its scene after each
        # removal; inside one batch it does so once, at its end
        def remove(layer: Layer) -> None:
            if layer in layers:
                layers.remove(layer)

        def restore_grid() -> None:
            if self._saved is not None:
                grid = self.viewer.canvas.grid
                grid.enabled, grid.stride, grid.shape = self._saved["grid"]

        def restore_order() -> None:  # layers added meanwhile stay above the user's own
            if self._saved is not None:
                present = [layer for layer in self._saved["order"] if layer in layers]
                if present != [layer for layer in layers if layer in present]:
                    layers.move_multiple([layers.index(layer) for layer in present], 0)

        def restore_visibility() -> None:
            saved, self._saved = self._saved, None
            shown = [layer for layer, visible in (saved or {"visible": {}})["visible"].items() if visible]
            self._steps.then([lambda layer=layer: self._show(layer) for layer in shown])  # before a queued `enable`

        # the scene is rebuilt once, at the batch's end, after every change of its structure
        self._steps.extend([layers.events.begin_batch, *(lambda layer=layer: remove(layer) for layer in copies),
                            restore_grid, restore_order, layers.events.end_batch, restore_visibility])
