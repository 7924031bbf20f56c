"""Nucleus outlines as valid shapely geometry: exterior rings, holes and multi-part nuclei.

A nucleus mask is traced with `skimage.measure.find_contours` at level 0.5 on the padded mask, with the nucleus
8-connected (``fully_connected="high"``, as the instance labels are), so the outline runs through the midpoints
between pixel centres: along straight runs its edges lie on pixel borders once shifted by half a pixel, and the
corners of boundary pixels are cut diagonally. Every ring of the mask comes back (marching-squares contours never
cross or touch each other); rings nested in an odd number of others are holes, the rest are exteriors, so a
nucleus with a hole is a Polygon with an interior ring and one cut in two by an edit is a MultiPolygon.

Geometries are built with shapely, simplified with its topology-preserving Douglas-Peucker (0.5 px), checked with
`shapely.is_valid` and repaired with `shapely.make_valid` (polygonal parts only) where needed, and oriented as
RFC 7946 asks (exterior rings of positive signed area in the x/y frame, holes the other way).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["mask_geometry", "finish_geometries"]

#: Douglas-Peucker tolerance in label pixels: removes the staircase's redundant vertices, moves no edge by more
SIMPLIFY_PX = 0.5
#: outlines with at most this many vertices (nuclei of a few pixels) are kept as traced
TINY = 12


def _rings(mask: np.ndarray) -> list[np.ndarray]:
    """Closed (N, 2) [x, y] rings of a boolean crop in pixel-centre coordinates of the crop."""
    from skimage.measure import find_contours

    padded = np.pad(mask, 1).astype(np.float32)
    return [ring[:, ::-1] - 1.0 for ring in find_contours(padded, 0.5, fully_connected="high")]  # - 1: the pad


def mask_geometry(mask: np.ndarray, origin: Sequence[float] = (0.0, 0.0)):
    """A Polygon or MultiPolygon tracing the True pixels of `mask`, in label pixels with the pixel (r, c) covering
    [c, c+1) x [r, r+1) of the crop placed at `origin` (y, x). Not yet simplified or checked (`finish_geometries`).
    """
    import shapely

    shift = np.array([origin[1] + 0.5, origin[0] + 0.5])
    rings = [ring + shift for ring in _rings(mask)]
    if len(rings) == 1:  # the usual nucleus: one exterior, no hole
        return shapely.Polygon(rings[0])
    shells = [shapely.Polygon(r) for r in rings]
    order = np.argsort([-s.area for s in shells])
    parent = {}
    for rank, i in enumerate(order):  # the smallest larger ring holding this ring's first vertex
        holders = [j for j in order[:rank] if shapely.contains_xy(shells[j], *rings[i][0])]
        parent[i] = holders[-1] if holders else None
    depth = {}
    for i in order:
        depth[i] = 0 if parent[i] is None else depth[parent[i]] + 1
    parts = [shapely.Polygon(rings[i], [rings[j] for j in order if parent[j] == i])
             for i in order if depth[i] % 2 == 0]
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


def _polygonal(geometry):
    """The polygonal part of a `make_valid` result (lines and points of collapsed slivers dropped)."""
    import shapely

    fixed = shapely.make_valid(geometry)
    if isinstance(fixed, (shapely.Polygon, shapely.MultiPolygon)):
        return fixed
    polygons = [g for g in shapely.get_parts(fixed) if isinstance(g, (shapely.Polygon, shapely.MultiPolygon))]
    return shapely.union_all(polygons) if polygons else geometry


def finish_geometries(geometries: Sequence, scale: float = 1.0, offset: Sequence[float] = (0.0, 0.0),
                      decimals: int = 3) -> np.ndarray:
    """Simplify (in label pixels), repair, map to ``scale * (x, y) + (x0, y0)`` (`offset` = (y0, x0)), round to
    `decimals` and orient a batch of geometries; every result is valid in shapely (checked after rounding)."""
    import shapely

    raw = np.asarray(geometries, dtype=object)
    if not raw.size:
        return raw
    simple = raw.copy()
    big = shapely.get_num_coordinates(raw) > TINY  # a few-pixel nucleus would lose area to a triangle: keep it
    simple[big] = shapely.simplify(raw[big], SIMPLIFY_PX, preserve_topology=True)
    for i in np.flatnonzero(~shapely.is_valid(simple)):  # repair the raw outline instead
        simple[i] = _polygonal(raw[i])
    add = np.array([offset[1], offset[0]], dtype=np.float64)
    moved = shapely.transform(simple, lambda xy: np.round(xy * scale + add, decimals))
    for i in np.flatnonzero(~shapely.is_valid(moved)):  # rounding can pinch a ring in rare cases: repair again
        moved[i] = _polygonal(moved[i])
    return shapely.orient_polygons(moved, exterior_cw=False)
