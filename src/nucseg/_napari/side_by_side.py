"""Image | truth | prediction side by side in napari's grid mode, at cell level, with one linked camera."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

from .evaluation_layers import CELL_VIEW_PX

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
    the layers are added or removed one per turn of the event loop (`_queue`), so the window never freezes for
    their sum.

    Args:
        viewer: the napari viewer.
    """

    PREFIX = "[side by side] "

    def __init__(self, viewer: napari.viewer.Viewer):
        self.viewer = viewer
        self.copies: list[Layer] = []
        self._saved: dict[str, Any] | None = None
        self._steps: collections.deque[Callable[[], None]] = collections.deque()

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

        def image_copy(title: str) -> Layer:
            return Image(image.data, name=f"{self.PREFIX}{title}", rgb=image.rgb, multiscale=image.multiscale,
                         scale=image.scale, translate=image.translate, units=image.units,
                         contrast_limits=image.contrast_limits, metadata={"nucseg_overlay": True})

        def labels_copy(layer: Layer, title: str, visible: bool = True, **kwargs: Any) -> Layer:
            return Labels(layer.data, name=f"{self.PREFIX}{title}", multiscale=layer.multiscale, scale=layer.scale,
                          translate=layer.translate, units=layer.units, visible=visible,
                          metadata={"nucseg_overlay": True}, **kwargs)

        partner = overlay if overlay is not None else truth
        self.copies = [
            image_copy(f"image under {pred.name}"), labels_copy(pred, pred.name, opacity=0.6),
            image_copy(f"image under {truth.name}"), labels_copy(truth, truth.name, opacity=0.6),
            image_copy(image.name),
            labels_copy(partner, partner.name, visible=False, opacity=0.6, colormap=partner.colormap),
        ]
        camera = self.viewer.scene.camera
        centre = tuple(camera.center[-2:]) if centre is None else centre

        def show_grid() -> None:
            grid.stride, grid.shape, grid.enabled = -2, (1, 3), True
            # one camera for all panels: zoom and pan stay linked; cell level = CELL_VIEW_PX pixels across a panel
            height, width = self.viewer.canvas.viewbox_size(self.viewer.layers)
            camera.center = centre
            camera.zoom = min(height, width) / (CELL_VIEW_PX * max(abs(float(s)) for s in image.scale[-2:]))

        self._queue([hide_all, *(lambda layer=layer: self.viewer.add_layer(layer) for layer in self.copies),
                     show_grid])

    @property
    def busy(self) -> bool:
        """Whether steps of turning the view on or off are still to run."""
        return bool(self._steps)

    def _queue(self, steps: list[Callable[[], None]]) -> None:
        """Run `steps`: now, or, from the GUI's event loop, one per turn of it (adding or removing a layer costs
        napari's GUI thread up to a few hundred ms: one at a time, the window keeps answering)."""
        from ._loop import in_event_loop

        self._steps.extend(steps)
        if not in_event_loop():
            while self._steps:
                self._steps.popleft()()
        elif len(self._steps) == len(steps):  # nothing was queued: start
            QTimer.singleShot(0, self._next)

    def _next(self) -> None:
        if self._steps:
            self._steps.popleft()()
        if self._steps:
            QTimer.singleShot(0, self._next)

    def disable(self) -> None:
        """Remove the copies, restore the layers' visibility and the grid settings."""
        copies, self.copies = self.copies, []

        def remove(layer: Layer) -> None:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

        def restore() -> None:
            if self._saved is None:
                return
            for layer, visible in self._saved["visible"].items():
                if layer in self.viewer.layers:
                    layer.visible = visible
            grid = self.viewer.canvas.grid
            grid.enabled, grid.stride, grid.shape = self._saved["grid"]
            self._saved = None

        if copies or self._saved is not None:
            self._queue([*(lambda layer=layer: remove(layer) for layer in copies), restore])
