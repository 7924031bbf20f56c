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

    The grid of `tile_grid` puts its last tile flush with the end, so a fixed tile wastes up to a tile's worth of
    pixels per axis (a 2000 px image in 1120 px tiles computes 2240 px per axis; one in 1024 px tiles, three
    tiles). Here the number of tiles per axis stays what `tile` needs and their side shrinks to the smallest
    multiple of `multiple` that still spans the image with `overlap`: 2000 px -> two tiles of 1056. Never below
    min(`smallest`, `tile`), so an image smaller than a calibration window is one tile of the window's size
    (whose pass is reused, see nucseg.inference.calibration).
    """
    sides = []
    for length in shape:
        n = 1 if length <= tile else -(-(length - overlap) // (tile - overlap))
        side = -(-(length + (n - 1) * overlap) // n)
        sides.append(-(-side // multiple) * multiple)
    return int(min(tile, max(*sides, min(smallest, tile))))


def iter_batches(tiles: list[Tile], batch_size: int) -> Iterator[list[Tile]]:
    for i in range(0, len(tiles), batch_size):
        yield tiles[i : i + batch_size]


#: weight of a tile's outermost quarter of the overlap, where its network saw least context (never 0: at the
#: image's edges that tile is the only one)
EDGE_WEIGHT = 1e-3


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """A (tile, tile) float32 weight, 1 in the core, ramping linearly across the middle half of the overlap, and
    nearly 0 (`EDGE_WEIGHT`) over its outer quarter.

    Tiles are weighted by it and the sum divided by the summed weights, so where only one tile covers a
    pixel (image borders) its prediction is taken as is, and across overlaps predictions fade into each
    other without seams. The outer quarter, where zero padding inside the network distorts a tile's output most,
    hardly counts where a neighbour covers it: against one whole-image tile, 256-px tiles (overlap 64) differed
    by 0.00196 / 0.00098 mean probability on two 768-px MoNuSeg crops, against 0.00237 / 0.00123 with a ramp
    over the whole overlap.
    """
    ramp = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        q = overlap // 4
        edge = np.ones(overlap, dtype=np.float32)
        edge[:q] = EDGE_WEIGHT
        edge[q : overlap - q] = (np.arange(overlap - 2 * q, dtype=np.float32) + 0.5) / (overlap - 2 * q)
        ramp[:overlap] = edge
        ramp[tile - overlap :] = edge[::-1]
    return np.outer(ramp, ramp)


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
