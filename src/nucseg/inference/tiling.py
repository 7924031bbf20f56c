"""A grid of overlapping tiles over an image, and the tapered weights that blend them back (pure numpy)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

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
    """Start offsets covering [0, length) with tiles of `tile` pixels, `stride` apart, the last flush with the end.

    `length` must be >= `tile` (`tile_grid` lets a shorter axis hold one tile that reaches past its end).
    """
    if length < tile:
        raise ValueError(f"length {length} is smaller than the tile {tile}: pad the image first")
    if stride <= 0:
        raise ValueError("stride must be positive")
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _axis_starts(lo: int, hi: int, length: int, tile: int, stride: int) -> list[int]:
    """Tile starts covering [lo, hi) of an axis of `length` (tiles stay inside it when it holds one)."""
    if hi - lo < tile:
        lo = max(0, min(lo, length - tile)) if length >= tile else 0
        hi = lo + tile
    return [lo + s for s in tile_starts(hi - lo, tile, stride)]


def tile_grid(shape: tuple[int, int], tile: int, overlap: int,
              box: tuple[int, int, int, int] | None = None) -> list[Tile]:
    """The tiles covering `box` (y0, x0, y1, x1; None: the whole image) of an image of `shape`, row-major: the
    engine's grid (`nucseg.inference.plan.tile_layout`).

    The last tile of a row or column is flush with the box's end; a box shorter than a tile gets one tile, kept
    inside the image when the image holds one, else starting at 0 and reaching past the image's end (read as
    white there, as `pad_to_tile` pads).
    """
    y0, x0, y1, x1 = box if box is not None else (0, 0, *shape)
    stride = tile - overlap
    return [Tile(y, x, y + tile, x + tile) for y in _axis_starts(y0, y1, shape[0], tile, stride)
            for x in _axis_starts(x0, x1, shape[1], tile, stride)]


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


def iter_batches(tiles: list[Tile], batch_size: int) -> Iterator[list[Tile]]:
    for i in range(0, len(tiles), batch_size):
        yield tiles[i : i + batch_size]


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


def pad_to_tile(image: np.ndarray, tile: int, fill: float = 255) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad an (H, W, C) image below and right so both sides are at least `tile`; returns it and the original (H, W).

    The padding is `fill` (white: no tissue), as `iter_predict` reads beyond an image's edge, so an in-memory
    prediction and a slide prediction of the same pixels agree. Mirroring would add phantom nuclei, and a
    network with squeeze-excitation (global pooling) changes its output for the whole tile with them.
    """
    h, w = image.shape[:2]
    ph, pw = max(0, tile - h), max(0, tile - w)
    if ph == 0 and pw == 0:
        return image, (h, w)
    pad = ((0, ph), (0, pw)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad, mode="constant", constant_values=fill), (h, w)
