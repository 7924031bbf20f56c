"""The pieces of the image's grid of overlapping tiles, and the tapered weights that blend them back (pure numpy).

The grid itself is planned in one place, `nucseg.inference.plan.tile_layout`: tiles `aligned_stride` apart on the
32-px lattice from the grid's start (`grid_starts`), the last of a row or column stopping at the grid's end
(`tile_extent`), their side the configured one or, for an image of one block, the `fitted_tile`.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tile:
    """One tile: rows y0:y1 and columns x0:x1 of the (padded) image."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` pixels, `stride` apart, the last flush with the end
    (the windows the squeeze-excitation gates are measured on, `nucseg.inference.calibration`).

    `length` must be >= `tile`.
    """
    if length < tile:
        raise ValueError(f"length {length} is smaller than the tile {tile}: pad the image first")
    if stride <= 0:
        raise ValueError("stride must be positive")
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def fitted_tile(shape: tuple[int, int], tile: int, overlap: int, multiple: int = 32, smallest: int = 512) -> int:
    """The tile side to cover `shape` with as few tiles as `tile` allows, shrunk to just cover it.

    A fixed tile wastes up to a tile's worth of pixels per axis (a 2000 px image in 1120 px tiles computes
    2240 px per axis; one in 1024 px tiles, three tiles). Here the number of tiles per axis stays what `tile`
    needs and their side shrinks to the smallest multiple of `multiple` that still spans the image with `overlap`
    from its origin: 2000 px -> two tiles of 1056. Never below min(`smallest`, `tile`), so an image smaller than
    512 px is one tile of 512 (white beyond it), as it always was.
    """
    sides = []
    for length in shape:
        n = 1 if length <= tile else -(-(length - overlap) // (tile - overlap))
        side = -(-(length + (n - 1) * overlap) // n)
        sides.append(-(-side // multiple) * multiple)
    return int(min(tile, max(*sides, min(smallest, tile))))


#: tiles shorter than this get at least `SMALL_TILE_OVERLAP` px of overlap
SMALL_TILE = 512
SMALL_TILE_OVERLAP = 96


def plan_overlap(tile: int, overlap: int) -> int:
    """The overlap a run uses: the configured one, but for tiles under `SMALL_TILE` px at least
    `SMALL_TILE_OVERLAP` (never more than 3/8 of the tile; an overlap of 0, no blending, is kept).

    A tile's outermost quarter of the overlap hardly counts in the blend (`blend_window`), so the overlap sets the
    context every blended pixel has. A 256-px tile's deepest maps are 8 x 8 cells, and its 16 px of context at
    overlap 64 were too few: against one 1024-px tile on 1000-px MoNuSeg tiles (image gates, tiles on the 32-px
    grid), object F1 0.983 / 0.986 and Dice 0.993 / 0.995 on two tiles; with 96 px (24 of context), 0.991 / 0.992
    and 0.995 / 0.996 (docs/MODEL.md, "Tiling"). 512-px tiles agree with 64 (F1 0.990 / 0.994, Dice 0.997 /
    0.998), where 96 would cost 16 % more tiles.
    """
    if tile >= SMALL_TILE or overlap == 0:
        return overlap
    return max(overlap, min(SMALL_TILE_OVERLAP, tile * 3 // 8))


def aligned_stride(tile: int, overlap: int, multiple: int = 32) -> int:
    """The step between tiles: `tile` - `overlap`, down to a multiple of `multiple` (the encoder's stride).

    A network that halves its maps five times samples a shifted input on other pixels: measured with the default
    model and fixed gates, 256-px tiles at random offsets differed from one 1024-px tile by 0.013 mean
    probability even at their centres, and by 0.0027 at offsets that are multiples of 32. Tiles therefore start
    at multiples of 32 from the image's origin (their overlap grows to what makes that so).
    """
    return max(multiple, (tile - overlap) // multiple * multiple)


def grid_starts(lo: int, hi: int, start: int, end: int, tile: int, stride: int) -> list[int]:
    """Starts of the tiles of the image's grid over [`start`, `end`) (start + j * `stride`, j >= 0, as many as
    cover it) that overlap [lo, hi) (image coordinates). The grid is the image's, whatever part of it is asked."""
    last = max(0, -(-(end - start - tile) // stride))
    first_j = max(0, (lo - start - tile) // stride + 1)
    last_j = min(last, -(-(hi - start) // stride) - 1)
    return [start + j * stride for j in range(first_j, last_j + 1)]


#: weight of a tile's outermost quarter of the overlap, where its network saw least context (never 0: at the
#: image's edges that tile is the only one)
EDGE_WEIGHT = 1e-3


def blend_ramp(length: int, overlap: int) -> np.ndarray:
    """The 1-D weight along one side of a tile (see `blend_window`); a tile shorter than two overlaps (the last,
    clipped at the image's end) takes the lower of its two ramps."""
    ramp = np.ones(length, dtype=np.float32)
    if overlap > 0:
        q = overlap // 4
        edge = np.ones(overlap, dtype=np.float32)
        edge[:q] = EDGE_WEIGHT
        edge[q : overlap - q] = (np.arange(overlap - 2 * q, dtype=np.float32) + 0.5) / (overlap - 2 * q)
        n = min(overlap, length)
        ramp[:n] = edge[:n]
        ramp[length - n :] = np.minimum(ramp[length - n :], edge[::-1][overlap - n :])
    return ramp


def blend_window(tile: int, overlap: int, width: int | None = None) -> np.ndarray:
    """A (tile, width or tile) float32 weight, 1 in the core, ramping linearly across the middle half of the
    overlap, and nearly 0 (`EDGE_WEIGHT`) over its outer quarter.

    Tiles are weighted by it and the sum divided by the summed weights, so where only one tile covers a
    pixel (image borders) its prediction is taken as is, and across overlaps predictions fade into each
    other without seams. The outer quarter, where zero padding inside the network distorts a tile's output most,
    hardly counts where a neighbour covers it: against one whole-image tile, 256-px tiles (overlap 64) differed
    by 0.00196 / 0.00098 mean probability on two 768-px MoNuSeg crops, against 0.00237 / 0.00123 with a ramp
    over the whole overlap.
    """
    return np.outer(blend_ramp(tile, overlap), blend_ramp(tile if width is None else width, overlap))


def tile_extent(start: int, end: int, tile: int, multiple: int = 32) -> int:
    """The side of a grid tile at `start` on a grid that ends at `end`: `tile`, or for the last one, what reaches
    `end` rounded up to `multiple`. At the image's end, every run of the image then meets its far edges alike
    (the same few white pixels beyond them, then the network's own padding, as at its near edges), whatever tile
    size or region was asked."""
    return int(min(tile, -(-(end - start) // multiple) * multiple))
