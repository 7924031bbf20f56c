"""Image | truth | prediction side by side in napari's grid mode, at cell level, with one linked camera."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.layers import Image, Labels

from ._loop import StepQueue
from .evaluation_layers import CELL_VIEW_PX
from .reader import display_levels

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer


class SideBySide:
    """Image | truth | prediction in napari's grid mode, each labels panel drawn over its own copy of the image.

    Grid mode puts each group of ``|stride|`` consecutive visible layers in its own view box. With stride -2 the
    groups are counted from the TOP of the layer list, so appending, bottom to top, ``image copy, prediction
    copy, image copy, truth copy, image copy, overlay copy (hidden)`` gives three panels, left to right: the
    image (with the TP/FP/FN overlay, hidden, a click away), the truth over the image, the prediction over the
    image. Copies share the originals' data (no memory), every other layer is hidden while the view is on,
    and `disable` removes the copies and restores visibility and the grid settings. Turned on or off from the GUI,
    each layer is added, removed or shown again in its own turn of the event loop (`StepQueue`), so the window
    never freezes for their sum.

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
            image, truth, pred: the layers to show (copies share their data).
            overlay: the TP / FP / FN overlay, hidden in the image panel.
            centre: world (y, x) to centre the panels on; default the current camera centre. The zoom shows
                about `CELL_VIEW_PX` image pixels across each panel: cells, not the whole image.
        """
        self.disable()
        grid = self.viewer.canvas.grid

        def hide_all() -> None:
            self._saved = {"visible": {layer: layer.visible for layer in self.viewer.layers},
                           "grid": (grid.enabled, grid.stride, grid.shape)}
            for layer in self.viewer.layers:
                layer.visible = False
            grid.stride, grid.shape = -2, (1, 3)  # cheap while the grid is off

        def show_grid() -> None:  # before the copies arrive: napari builds the empty panels once, not per copy
            grid.enabled = True

        def image_copy(title: str) -> Layer:
            return Image(image.data, name=f"{self.PREFIX}{title}", rgb=image.rgb, multiscale=image.multiscale,
                         scale=image.scale, translate=image.translate, units=image.units,
                         contrast_limits=image.contrast_limits, visible=False, metadata={"nucseg_overlay": True})

        def labels_copy(layer: Layer, title: str, **kwargs: Any) -> Layer:
            # a whole-slide labels array as display levels: the panels draw their field of view, not a 6-Mpx texture
            levels = display_levels(layer.data if layer.multiscale else [layer.data])
            return Labels(levels if len(levels) > 1 else levels[0], name=f"{self.PREFIX}{title}",
                          multiscale=len(levels) > 1, scale=layer.scale,
                          translate=layer.translate, units=layer.units, visible=False,
                          metadata={"nucseg_overlay": True}, **kwargs)

        partner = overlay if overlay is not None else truth
        self.copies = [
            image_copy(f"image under {pred.name}"), labels_copy(pred, pred.name, opacity=0.6),
            image_copy(f"image under {truth.name}"), labels_copy(truth, truth.name, opacity=0.6),
            image_copy(image.name),
            labels_copy(partner, partner.name, opacity=0.6, colormap=partner.colormap),
        ]
        shown = self.copies[:-1]  # the overlay stays a click away
        camera = self.viewer.scene.camera
        centre = tuple(camera.center[-2:]) if centre is None else centre

        def zoom_to_cells() -> None:
            # one camera for all panels: zoom and pan stay linked; cell level = CELL_VIEW_PX pixels across a panel
            height, width = self.viewer.canvas.viewbox_size(self.viewer.layers)
            camera.center = centre
            camera.zoom = min(height, width) / (CELL_VIEW_PX * max(abs(float(s)) for s in image.scale[-2:]))

        # each copy added hidden (its controls and visual), then shown (its slice, its texture, the panels laid out):
        # two shorter stalls instead of one
        self._steps.extend([hide_all, show_grid,
                            *(lambda layer=layer: self.viewer.add_layer(layer) for layer in self.copies),
                            *(lambda layer=layer: setattr(layer, "visible", True) for layer in shown), zoom_to_cells])

    @property
    def busy(self) -> bool:
        """Whether steps of turning the view on or off are still to run."""
        return bool(self._steps)

    def disable(self) -> None:
        """Remove the copies, restore the layers' visibility and the grid settings."""
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

        def restore_visibility() -> None:
            saved, self._saved = self._saved, None
            shown = [layer for layer, visible in (saved or {"visible": {}})["visible"].items() if visible]
            self._steps.then([lambda layer=layer: show(layer) for layer in shown])  # before a queued `enable`

        def show(layer: Layer) -> None:
            if layer in layers:
                layer.visible = True

        self._steps.extend([layers.events.begin_batch, *(lambda layer=layer: remove(layer) for layer in copies),
                            restore_grid, layers.events.end_batch, restore_visibility])
