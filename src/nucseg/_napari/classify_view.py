"""What the Classify dock reads from and shows in napari: the nuclei layer's geometry, clicked points, the
classified nuclei as coloured points (uncertain ones ringed), and counts per class for the view, a region, the
slide. Coordinates: full-resolution pixels in QuPath's convention (a pixel (r, c) covers [c, c+1) x [r, r+1)),
as the points CSV and the exports use; napari places pixel centres at integer data coordinates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError

from .layers import field_of_view_region, level0_data, shapes_to_regions

#: point size (screen-independent: data pixels at level 0) of the class markers
MARKER_PX = 10


@dataclasses.dataclass(frozen=True)
class NucleiSource:
    """A Labels layer and the image it was segmented from, captured on the GUI thread.

    Attributes:
        labels: level-0 label data (numpy, zarr or dask); offset: its (y, x) in full-resolution image pixels.
        image: the image's pixels (an RGB array) or slide (``read_region``), see `ImageInput.load`.
        key: what the image is (its file path, else the layer name): the clicked labels are kept under it.
        mpp: microns per pixel when known; model: the segmentation model's binding; model_mpp: its resolution.
    """

    labels: Any
    offset: tuple[int, int]
    image_layer: Any
    labels_layer: Any
    key: str
    mpp: float | None
    model: dict[str, Any]
    model_mpp: float

    def nucleus_at(self, x: float, y: float) -> int:
        """The label id under a full-resolution point (0: background or outside)."""
        r, c = int(np.floor(y)) - self.offset[0], int(np.floor(x)) - self.offset[1]
        h, w = self.labels.shape[-2:]
        if not (0 <= r < h and 0 <= c < w):
            return 0
        return int(np.asarray(self.labels[r, c]))

    def world_to_point(self, world: Sequence[float]) -> tuple[float, float]:
        """(x, y) full-resolution pixels of a world position on the image layer."""
        r, c = np.asarray(self.image_layer.world_to_data(world), float)[-2:]
        return c + 0.5, r + 0.5

    def point_to_world(self, x: float, y: float) -> np.ndarray:
        data = np.zeros(self.image_layer.ndim)
        data[-2:] = (y - 0.5, x - 0.5)
        return np.asarray(self.image_layer.data_to_world(data), float)

    def image_shape(self) -> tuple[int, int]:
        data = level0_data(self.image_layer)
        shape = data.shape[:-1] if getattr(self.image_layer, "rgb", False) else data.shape
        return int(shape[-2]), int(shape[-1])


def nuclei_source(labels_layer: Any, image_layer: Any) -> NucleiSource:
    """Capture the nuclei layer and its image.

    Raises:
        InvalidInputError: either is missing or not 2-D.
    """
    from nucseg.classify.store import model_binding
    from nucseg.models.registry import DEFAULT_MODEL, resolve_model

    from .layer_source import layer_mpp

    if labels_layer is None or image_layer is None:
        raise InvalidInputError("choose the nuclei (a Labels layer, e.g. from Segment nuclei) and their H&E image")
    labels = level0_data(labels_layer)
    if len(labels.shape) != 2:
        raise InvalidInputError(f"labels layer {labels_layer.name!r} is not 2-D")
    region = labels_layer.metadata.get("nucseg_region") or (0, 0)
    result = labels_layer.metadata.get("nucseg_result")
    bound = labels_layer.metadata.get("nucseg_model") or {}
    if bound.get("name"):
        model = {"name": bound["name"], "sha256": bound.get("sha256")}
        model_mpp = float(getattr(result, "model_mpp", None) or resolve_model(bound["name"]).mpp)
    else:
        model, model_mpp = model_binding(None, f"layer {labels_layer.name}"), resolve_model(DEFAULT_MODEL).mpp
    key = image_layer.metadata.get("nucseg_path") or image_layer.name
    return NucleiSource(labels, (int(region[0]), int(region[1])), image_layer, labels_layer, str(key),
                        layer_mpp(image_layer) or layer_mpp(labels_layer), model, model_mpp)


def pixel_reader(source: NucleiSource, image: Any):
    """(y0, y1, x0, x1) in label-map pixels -> RGB, from the loaded image (array or slide)."""
    oy, ox = source.offset
    if hasattr(image, "read_region"):
        return lambda y0, y1, x0, x1: image.read_region(0, oy + y0, ox + x0, y1 - y0, x1 - x0)
    return lambda y0, y1, x0, x1: np.asarray(image[oy + y0:oy + y1, ox + x0:ox + x1, :3])


def scope_box(scope: str, viewer: Any, source: NucleiSource, shapes: Any) -> tuple[int, int, int, int]:
    """(y, x, h, w) in full-resolution pixels of the view, the region (the shapes' bounding box) or the slide."""
    if scope == "view":
        return field_of_view_region(viewer, source.image_layer)
    if scope == "region":
        boxes = shapes_to_regions(shapes, source.image_layer) if shapes is not None else []
        if not boxes:
            raise InvalidInputError("draw a region first (a rectangle or polygon in a Shapes layer)")
        y0, x0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        y1, x1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
        return y0, x0, y1 - y0, x1 - x0
    oy, ox = source.offset
    h, w = source.labels.shape[-2:]
    return oy, ox, int(h), int(w)


def region_polygons(shapes: Any, image_layer: Any) -> list[np.ndarray]:
    """Each shape as (n, 2) x, y full-resolution vertices."""
    out = []
    for vertices in shapes.data:
        world = [np.asarray(shapes.data_to_world(v), float) for v in np.asarray(vertices)]
        data = np.array([np.asarray(image_layer.world_to_data(p), float)[-2:] for p in world])
        out.append(np.stack([data[:, 1] + 0.5, data[:, 0] + 0.5], axis=1))
    return out


def inside_polygons(x: np.ndarray, y: np.ndarray, polygons: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
    """Which points lie in any polygon, and the polygons' total area in pixels²."""
    import shapely

    geometry = shapely.union_all([shapely.Polygon(p) for p in polygons if len(p) >= 3])
    inside = shapely.contains_xy(geometry, x, y) if len(x) else np.zeros(0, bool)
    return np.asarray(inside, bool), float(geometry.area)


def inside_box(x: np.ndarray, y: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    by, bx, bh, bw = box
    return (x >= bx) & (x < bx + bw) & (y >= by) & (y < by + bh)


def density_text(count: int, area_px: float, mpp: float | None) -> str:
    """'N (D /mm²)' when the pixel size is known, else 'N'."""
    if not mpp or area_px <= 0:
        return str(count)
    return f"{count} ({count / (area_px * mpp * mpp / 1e6):.0f}/mm²)"


def ratio_text(counts: dict[str, int], top: str = "lymphocyte", bottom: str = "tumour") -> str:
    if top not in counts or bottom not in counts:
        return ""
    return f"{counts[top] / counts[bottom]:.2f}" if counts[bottom] else "n/a (no tumour cell)"


def marker_style(names: np.ndarray, probability: np.ndarray, colors: dict[str, tuple[int, int, int]],
                 uncertain_below: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face colours, border colours, border widths) of class markers: uncertain ones get a white, thick ring."""
    face = np.array([[*(np.array(colors.get(str(n), (128, 128, 128))) / 255.0), 1.0] for n in names]).reshape(-1, 4)
    uncertain = probability < uncertain_below
    border = np.where(uncertain[:, None], np.array([1.0, 1.0, 1.0, 1.0]), face)
    width = np.where(uncertain, 0.35, 0.05)
    return face, border, width
