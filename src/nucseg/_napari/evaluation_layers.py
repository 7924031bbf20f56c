"""The layers the Evaluate widget draws (TP / FP / FN overlays, the box around a chosen error) and the camera moves
that take the user to an error. Overlays are marked ``metadata["nucseg_overlay"]`` and are never offered as inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.colormaps import DirectLabelColormap

from nucseg.metrics.overlays import CONFUSION_COLORS

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels, Layer

    from nucseg.jobs.evaluate import ErrorObject

OBJECTS_LAYER, PIXELS_LAYER = "TP/FP/FN (objects)", "TP/FP/FN (pixels)"
HIGHLIGHT_LAYER = "selected FP / FN"
#: a nucleus the camera is taken to fills about this fraction of the view's shorter side
ERROR_FRACTION = 1 / 8
#: "cell level" in the side-by-side view: this many image pixels across the shorter side of each panel
CELL_VIEW_PX = 160


def confusion_colormap() -> DirectLabelColormap:
    """TP cyan, FP magenta, FN yellow, everything else transparent."""
    colors: dict[int | None, Any] = {None: "transparent", 0: "transparent"}
    colors.update({code: np.array([*rgb, 255]) / 255 for code, rgb in CONFUSION_COLORS.items()})
    return DirectLabelColormap(color_dict=colors)


def show_overlay(viewer: napari.viewer.Viewer, name: str, data: np.ndarray, like: Labels, visible: bool) -> Labels:
    """Add (or refresh) a read-only confusion overlay in `like`'s pixel frame."""
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        layer.scale, layer.translate, layer.units = like.scale, like.translate, like.units
    else:
        layer = viewer.add_labels(data, name=name, colormap=confusion_colormap(), opacity=0.6, visible=visible,
                                  scale=like.scale, translate=like.translate, units=like.units,
                                  metadata={"nucseg_overlay": True})
    layer.editable = False  # a derived map: a brush stroke here would be lost work
    return layer


def highlight(viewer: napari.viewer.Viewer, error: ErrorObject, like: Layer) -> None:
    """A white box around the nucleus, in a Shapes layer of its own (user layers are left as they are)."""
    (y0, x0, y1, x1), pad = error.box, 2.5  # pad: pixels around the nucleus (pixel i spans i +- 0.5)
    ys, xs = (y0 - pad, y1 - 1 + pad), (x0 - pad, x1 - 1 + pad)
    box = np.array([[*error.plane, ys[i], xs[j]] for i, j in ((0, 0), (0, 1), (1, 1), (1, 0))], float)
    layer = next((lay for lay in viewer.layers if lay.name == HIGHLIGHT_LAYER), None)
    if layer is None or layer.ndim != box.shape[1]:
        if layer is not None:
            viewer.layers.remove(layer)
        layer = viewer.add_shapes(ndim=box.shape[1], name=HIGHLIGHT_LAYER, metadata={"nucseg_overlay": True},
                                  scale=like.scale, translate=like.translate, units=like.units)
    layer.scale, layer.translate, layer.units = like.scale, like.translate, like.units
    layer.data = []
    layer.add_rectangles([box], edge_width=1.0, edge_color="white", face_color="transparent")
    layer.visible = True
    layer.editable = False


def centre_on(viewer: napari.viewer.Viewer, layer: Layer, plane: tuple[int, ...], centroid: tuple[float, float],
              extent_px: float, fraction: float = ERROR_FRACTION) -> None:
    """Move the camera (and the stack slider) to `centroid` of `plane` of `layer`, zoomed so that `extent_px`
    pixels fill `fraction` of the view's shorter side."""
    world = np.asarray(layer.data_to_world([*plane, *centroid]), float)
    for axis in range(len(plane)):
        viewer.dims.set_point(viewer.dims.ndim - layer.ndim + axis, world[axis])
    camera = viewer.scene.camera
    camera.center = tuple(world[-2:])
    extent = max(extent_px * max(abs(layer.scale[-2]), abs(layer.scale[-1])), 1e-9)
    height, width = viewer.canvas.viewbox_size(viewer.layers)
    camera.zoom = min(height, width) * fraction / extent


def go_to_error(viewer: napari.viewer.Viewer, error: ErrorObject, layer: Layer) -> None:
    """Centre the view on an FP / FN nucleus of `layer` (its own labels layer) and box it."""
    y0, x0, y1, x1 = error.box
    centre_on(viewer, layer, error.plane, error.centroid, max(y1 - y0, x1 - x0, 1))
    highlight(viewer, error, layer)
