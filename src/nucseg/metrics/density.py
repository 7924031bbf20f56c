"""Nuclei per area of tissue: the count, the tissue area and the density a pathologist reports, for a whole slide
(or segmented region), a field of view or a drawn region, and a density grid for a heatmap.

- **Tissue** is the engine's own mask: `nucseg.inference.source.ScaledSource.tissue_mask` over
  `nucseg.inference.tissue.tissue_mask` (the rule that decides which tiles the network sees), read from a coarse
  level at level-0 resolution (a mask pixel is `TISSUE_MASK_DOWNSAMPLE` level-0 pixels or more). It is grown a
  little at its edges (the engine keeps nuclei there), so the tissue area errs on the large side by about two
  mask pixels along the tissue's border.
- **Nuclei** are counted by their centroid (`nucseg.io.measure`: full-resolution pixels, QuPath's corner
  convention): a nucleus is in a window or a drawn polygon when its centroid is.
- **Units**: mm² and nuclei per mm² only when the pixel size is known; otherwise the tissue area is in px² and the
  density in nuclei per megapixel (10^6 px²) of tissue, and the summary says the size is unknown.

Everything here is Qt-free and reads images only through ``read_region`` (slides are never read whole).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["AreaSummary", "DensityGrid", "TissueMap", "density_grid", "nucleus_columns", "summarize", "tissue_map"]

#: cells of the density heatmap: this many µm square when the pixel size is known ...
GRID_UM = 100.0
#: ... else this many level-0 pixels
GRID_PX = 256
#: a heatmap cell with less tissue than this share of its area is left empty (NaN): a sliver of tissue at the
#: tissue's edge would give a wild density
MIN_CELL_TISSUE = 0.25


@dataclasses.dataclass(frozen=True)
class TissueMap:
    """A tissue mask placed on the full-resolution image.

    Attributes:
        mask: boolean tissue mask.
        down: level-0 pixels per mask pixel (along each side).
        origin: level-0 (y, x) of the mask's top-left corner.
        extent: level-0 (h, w) the mask covers (the region it was made for; its last row / column may be partial).
    """

    mask: np.ndarray
    down: float
    origin: tuple[float, float]
    extent: tuple[float, float]

    def _weights(self, axis: int, lo: float, hi: float) -> np.ndarray:
        """Level-0 length of [lo, hi) that each mask row (axis 0) or column (axis 1) covers."""
        n = self.mask.shape[axis]
        start = self.origin[axis] + np.arange(n) * self.down
        end = np.minimum(start + self.down, self.origin[axis] + self.extent[axis])
        return np.clip(np.minimum(end, hi) - np.maximum(start, lo), 0.0, None)

    def area_px(self, window: Sequence[float] | None = None) -> float:
        """Tissue area in level-0 px² inside `window` (y, x, h, w; None: all of it), exact for the mask's pixels."""
        y, x, h, w = window if window is not None else (*self.origin, *self.extent)
        wy, wx = self._weights(0, y, y + h), self._weights(1, x, x + w)
        return float(wy @ self.mask.astype(np.float64) @ wx)

    def polygon_area_px(self, polygon: Any) -> float:
        """Tissue area in level-0 px² inside a polygon ((N, 2) level-0 y, x vertices) or a list of them (their
        union): mask pixels whose centre lies inside count whole (resolved at the mask's pixel, `down` px)."""
        from skimage.draw import polygon2mask

        inside = np.zeros(self.mask.shape, bool)
        for poly in _polygons(polygon):
            inside |= polygon2mask(self.mask.shape, (poly - np.asarray(self.origin)) / self.down - 0.5)
        wy = self._weights(0, -math.inf, math.inf)
        wx = self._weights(1, -math.inf, math.inf)
        return float(((inside & self.mask) * np.outer(wy, wx)).sum())


def tissue_map(image: Any, region: Sequence[int] | None = None) -> TissueMap:
    """The engine's tissue mask of `region` (y, x, h, w level-0 pixels; None: the whole image) of an RGB array or
    a region source (a `Slide`), at level-0 resolution (`ScaledSource` with no resampling)."""
    from nucseg.inference.source import ScaledSource

    source = ScaledSource(image, model_mpp=1.0, mpp=1.0, region=tuple(region) if region is not None else None)
    whole = source.tissue_mask()  # the whole image's mask (the tiles the engine skips are the image's)
    y0, x0, h, w = source.region0
    down = float(whole.down)
    # the mask pixels over the region, placed at its corner: off by less than one mask pixel where the region
    # does not start on the mask's grid, as the mask's own edge is
    i0, j0 = int(y0 // down), int(x0 // down)
    mask = whole.mask[i0 : i0 + math.ceil(h / down), j0 : j0 + math.ceil(w / down)]
    return TissueMap(np.asarray(mask, bool), down, (float(y0), float(x0)), (float(h), float(w)))


def _polygons(polygon: Any) -> list[np.ndarray]:
    """One (N, 2) polygon or a list of them, as a list."""
    if polygon is None:
        return []
    if isinstance(polygon, np.ndarray) and polygon.ndim == 2:
        return [polygon.astype(float)]
    return [np.asarray(p, float) for p in polygon]


def _inside(centroids: np.ndarray, window: Sequence[float] | None, polygon: Any) -> np.ndarray:
    centroids = np.asarray(centroids, float).reshape(-1, 2)
    keep = np.ones(len(centroids), bool)
    if window is not None:
        y, x, h, w = window
        keep &= (centroids[:, 0] >= y) & (centroids[:, 0] < y + h) & (centroids[:, 1] >= x) & (centroids[:, 1] < x + w)
    polygons = _polygons(polygon)
    if polygons:
        import shapely

        shape = shapely.union_all([shapely.Polygon(p[:, ::-1]).buffer(0) for p in polygons])
        keep &= shapely.contains_xy(shape, centroids[:, 1], centroids[:, 0])
    return keep


@dataclasses.dataclass(frozen=True)
class AreaSummary:
    """Nuclei and tissue of one area. `tissue_px` is level-0 px²; `mpp` the pixel size when known, else None."""

    nuclei: int
    tissue_px: float
    mpp: float | None

    @property
    def tissue_mm2(self) -> float | None:
        return self.tissue_px * self.mpp**2 / 1e6 if self.mpp else None

    @property
    def per_mm2(self) -> float | None:
        """Nuclei per mm² of tissue (None: pixel size unknown, or no tissue)."""
        area = self.tissue_mm2
        return self.nuclei / area if area else None

    @property
    def per_mpx(self) -> float | None:
        """Nuclei per 10^6 px² of tissue (None: no tissue)."""
        return self.nuclei / (self.tissue_px / 1e6) if self.tissue_px > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: mm² figures only when the pixel size is known (`pixel_size` says which)."""
        out: dict[str, Any] = {"nuclei": int(self.nuclei), "tissue_px2": round(self.tissue_px, 1)}
        if self.mpp:
            out.update(tissue_mm2=round(self.tissue_mm2, 6), nuclei_per_mm2=_round(self.per_mm2),
                       mpp=self.mpp, pixel_size="known")
        else:
            out.update(nuclei_per_mpx=_round(self.per_mpx), mpp=None,
                       pixel_size="unknown: tissue area in px², density per 10^6 px²")
        return out

    def text(self) -> str:
        """One line for people: '1234 nuclei in 2.31 mm² of tissue: 534 /mm²' (px when the size is unknown)."""
        if self.mpp:
            density = f"{self.per_mm2:.0f} /mm²" if self.per_mm2 is not None else "no tissue"
            return f"{self.nuclei} nuclei in {self.tissue_mm2:.3g} mm² of tissue: {density}"
        density = f"{self.per_mpx:.0f} per 10⁶ px²" if self.per_mpx is not None else "no tissue"
        return f"{self.nuclei} nuclei in {self.tissue_px / 1e6:.3g}×10⁶ px² of tissue: {density} (pixel size unknown)"


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


def summarize(centroids: np.ndarray, tissue: TissueMap, mpp: float | None, *, window: Sequence[float] | None = None,
              polygon: np.ndarray | None = None, count: int | None = None) -> AreaSummary:
    """Nuclei and tissue inside `window` (y, x, h, w) and / or `polygon` ((N, 2) y, x, or a list of them: their
    union), all in level-0 pixels; neither: the whole tissue map.

    Args:
        centroids: (N, 2) nucleus centroids (y, x) in level-0 pixels (`nucseg.io.measure`'s centroid_y / _x).
        tissue: the tissue map of the image (`tissue_map`).
        mpp: microns per level-0 pixel when known.
        count: the number of nuclei when it is known without centroids (a whole result): used when no window or
            polygon is given.
    """
    if window is None and polygon is None:
        nuclei = int(count) if count is not None else int(len(np.asarray(centroids).reshape(-1, 2)))
        return AreaSummary(nuclei, tissue.area_px(), mpp)
    nuclei = int(_inside(centroids, window, polygon).sum())
    area = tissue.area_px(window) if polygon is None else tissue.polygon_area_px(polygon) if window is None else \
        min(tissue.area_px(window), tissue.polygon_area_px(polygon))
    return AreaSummary(nuclei, area, mpp)


def nucleus_columns(labels: Any, image: Any = None, mpp: float | None = None,
                    offset: Sequence[float] = (0, 0)) -> dict[str, np.ndarray]:
    """Every nucleus's measurements as columns sorted by id (`nucseg.io.export.iter_nuclei` over
    `nucseg.io.measure`, block by block; `image` and `mpp` as there): centroids in full-resolution pixels."""
    from nucseg.io.export import iter_nuclei
    from nucseg.io.measure import measurement_columns

    blocks = [cols for cols, _ in iter_nuclei(labels, image, mpp, offset=offset)]
    names = measurement_columns(bool(mpp), image is not None)
    if not blocks:
        return {name: np.zeros(0, np.int64 if name == "id" else np.float64) for name in names}
    columns = {name: np.concatenate([np.asarray(b[name]) for b in blocks]) for name in names}
    order = np.argsort(columns["id"], kind="stable")
    return {name: values[order] for name, values in columns.items()}


@dataclasses.dataclass(frozen=True)
class DensityGrid:
    """Nuclei per mm² (or per 10^6 px² when the size is unknown) of tissue in square cells.

    Attributes:
        density: (rows, cols) float32, NaN where a cell holds less than `MIN_CELL_TISSUE` tissue.
        cell: cell side in level-0 pixels.
        origin: level-0 (y, x) of the first cell's top-left corner.
        unit: "nuclei per mm²" or "nuclei per 10^6 px²".
    """

    density: np.ndarray
    cell: float
    origin: tuple[float, float]
    unit: str


def density_grid(centroids: np.ndarray, tissue: TissueMap, mpp: float | None, cell: float | None = None
                 ) -> DensityGrid:
    """Count centroids per cell of a grid over the tissue map, divided by each cell's tissue area."""
    cell = float(cell) if cell else (GRID_UM / mpp if mpp else float(GRID_PX))
    (y0, x0), (h, w) = tissue.origin, tissue.extent
    rows, cols = max(1, math.ceil(h / cell)), max(1, math.ceil(w / cell))
    centroids = np.asarray(centroids, float).reshape(-1, 2)
    counts, _, _ = np.histogram2d(centroids[:, 0], centroids[:, 1], bins=(rows, cols),
                                  range=((y0, y0 + rows * cell), (x0, x0 + cols * cell)))
    # tissue per cell, exact for the mask's pixels: (rows, mask_h) @ mask @ (mask_w, cols) of overlap lengths
    wy = np.stack([tissue._weights(0, y0 + r * cell, y0 + (r + 1) * cell) for r in range(rows)])
    wx = np.stack([tissue._weights(1, x0 + c * cell, x0 + (c + 1) * cell) for c in range(cols)], axis=1)
    area = wy @ tissue.mask.astype(np.float64) @ wx
    scale = (mpp**2 / 1e6) if mpp else 1e-6
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(area >= MIN_CELL_TISSUE * cell * cell, counts / (area * scale), np.nan)
    return DensityGrid(density.astype(np.float32), cell, (y0, x0),
                       "nuclei per mm²" if mpp else "nuclei per 10^6 px²")
