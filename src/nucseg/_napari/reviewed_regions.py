"""The "reviewed regions" Shapes layer: where the person says "I checked the nuclei here".

Fine-tuning learns only inside reviewed regions (`nucseg.training.corrections`), so a correction never teaches
the parts of a prediction nobody looked at. The person marks them in two ways a pathologist already knows:

* *Mark current view as reviewed*: the field of view becomes a rectangle in the layer (review by screenful);
* drawing rectangles, polygons or ellipses in the layer with napari's shape tools (lines and paths enclose
  nothing and are ignored).

The layer is a plain napari Shapes layer (``metadata["nucseg"]["role"] == "reviewed"``), so its shapes can be
moved, edited, deleted and saved like any other. `reviewed_mask` rasterises them on the pixels of a region.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Shapes

from nucseg.errors import InvalidInputError

from .layer_roles import REVIEWED, layer_role, set_role
from .layers import Region, _world_box_to_region, field_of_view_region

REVIEWED_LAYER = "reviewed regions"
REVIEWED_COLOUR = "#00e676"
_AREA_TYPES = ("rectangle", "polygon", "ellipse")


def find_reviewed_layer(viewer: Any) -> Shapes | None:
    """The reviewed-regions layer (by role, else by name), or None."""
    shapes = [layer for layer in viewer.layers if isinstance(layer, Shapes)]
    return next((layer for layer in shapes if layer_role(layer) == REVIEWED),
                next((layer for layer in shapes if layer.name == REVIEWED_LAYER), None))


def reviewed_layer(viewer: Any, image: Image) -> Shapes:
    """The reviewed-regions layer, made on the image's pixel grid when there is none yet."""
    layer = find_reviewed_layer(viewer)
    if layer is None:
        layer = viewer.add_shapes(name=REVIEWED_LAYER, ndim=2, scale=image.scale[-2:], translate=image.translate[-2:],
                                  edge_color=REVIEWED_COLOUR, face_color="transparent", edge_width=2)
        layer.current_edge_color = REVIEWED_COLOUR
        layer.current_face_color = "transparent"
        viewer.layers.selection.active = image  # the next brush stroke still goes where it went before
    set_role(layer, REVIEWED)
    return layer


def mark_view_reviewed(viewer: Any, image: Image) -> Region:
    """Add the field of view (clipped to the image) as a reviewed rectangle; returns it in image pixels."""
    y, x, h, w = field_of_view_region(viewer, image)
    corners = np.array([[y, x], [y, x + w - 1], [y + h - 1, x + w - 1], [y + h - 1, x]], float)  # pixel centres
    layer = reviewed_layer(viewer, image)
    layer.add_rectangles(_image_to_layer(corners, image, layer), edge_color=REVIEWED_COLOUR,
                         face_color="transparent")
    return (y, x, h, w)


def _image_to_layer(points: np.ndarray, image: Image, layer: Shapes) -> np.ndarray:
    return np.array([np.asarray(layer.world_to_data(image.data_to_world(p)))[-2:] for p in points])


def _layer_to_image(points: np.ndarray, layer: Shapes, image: Image) -> np.ndarray:
    out = []
    for p in np.asarray(points, float):
        world = np.asarray(layer.data_to_world(p))
        out.append(np.asarray(image.world_to_data(world[-image.ndim:]))[-2:])
    return np.array(out)


def area_polygons(layer: Shapes, image: Image) -> list[np.ndarray]:
    """Each area shape of `layer` as an (n, 2) polygon in level-0 pixel coordinates of `image`."""
    polygons = []
    for vertices, kind in zip(layer.data, layer.shape_type):
        if kind not in _AREA_TYPES:
            continue
        points = _layer_to_image(np.asarray(vertices)[:, -2:], layer, image)
        if kind == "ellipse":  # napari keeps an ellipse as the four corners of its box
            centre = points.mean(axis=0)
            a, b = (points[1] - points[0]) / 2, (points[3] - points[0]) / 2
            t = np.linspace(0, 2 * np.pi, 64, endpoint=False)[:, None]
            points = centre + np.cos(t) * a + np.sin(t) * b
        polygons.append(points)
    return polygons


def reviewed_boxes(layer: Shapes, image: Image) -> list[Region]:
    """The bounding box of each reviewed area, in level-0 pixels of the image (one correction each).

    Raises:
        InvalidInputError: the layer holds no area shape.
    """
    polygons = area_polygons(layer, image)
    if not polygons:
        raise InvalidInputError(f"the layer {layer.name!r} marks nothing as reviewed yet: press 'Mark current view "
                                "as reviewed' or draw rectangles or polygons around the nuclei you checked")
    boxes = []
    for k, poly in enumerate(polygons, start=1):
        world = [np.asarray(image.data_to_world(p)) for p in (poly.min(axis=0), poly.max(axis=0))]
        boxes.append(_world_box_to_region(image, world, f"reviewed region {k}"))
    return boxes


def reviewed_boxes_or_none(layer: Shapes, image: Image) -> list[Region]:
    """`reviewed_boxes`, or no box when the layer marks nothing yet (edits may still say what was checked)."""
    return reviewed_boxes(layer, image) if area_polygons(layer, image) else []


def reviewed_mask(layer: Shapes | None, image: Image, region: Region) -> np.ndarray:
    """(h, w) bool: the pixels of `region` (level-0 image pixels) inside any reviewed area (pixel centres)."""
    from skimage.draw import polygon2mask

    y, x, h, w = region
    mask = np.zeros((h, w), bool)
    if layer is None:
        return mask
    for poly in area_polygons(layer, image):
        local = poly - (y, x)
        lo, hi = local.min(axis=0), local.max(axis=0)
        if hi[0] < -0.5 or hi[1] < -0.5 or lo[0] > h - 0.5 or lo[1] > w - 0.5:
            continue
        mask |= polygon2mask((h, w), local)
    return mask

