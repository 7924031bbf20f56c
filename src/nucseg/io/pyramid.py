"""The one pyramid rule for label maps and images: which levels (`pyramid_steps`) and how a level is made from the
one above (`copy_level`: every `step`-th pixel, nearest, so labels stay labels), block by block so a slide-sized
level never sits in memory. Used by the zarr results the viewer shows (`nucseg.inference.result_store`), the
OME-NGFF and OME-TIFF exports and the napari reader's display levels."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LEVEL_BLOCK", "copy_level", "pyramid_steps"]

#: output pixels per side written at a time when a level is built from the one above
LEVEL_BLOCK = 2048


def pyramid_steps(shape: tuple[int, ...], smallest: int) -> list[int]:
    """Downsamples ``[1, 2, 4, ...]`` of a pyramid over `shape` (h, w, ...), halving until the longer side of the
    coarsest level is at most `smallest` (a chunk, a tile, a screen)."""
    h, w = int(shape[0]), int(shape[1])
    steps = [1]
    while max(-(-h // steps[-1]), -(-w // steps[-1])) > smallest:
        steps.append(steps[-1] * 2)
    return steps


def copy_level(source: Any, target: Any, step: int = 2, block: int = LEVEL_BLOCK) -> None:
    """``target[y, x] = source[y * step, x * step]`` over all of `target` (its shape is the source's divided by
    `step`, rounded up), `block` output pixels per side at a time; `source` and `target` are numpy, zarr or dask
    arrays (2-D, or (H, W, C))."""
    th, tw = int(target.shape[0]), int(target.shape[1])
    for y in range(0, th, block):
        for x in range(0, tw, block):
            h, w = min(block, th - y), min(block, tw - x)
            part = np.asarray(source[y * step : (y + h) * step : step, x * step : (x + w) * step : step])
            target[y : y + h, x : x + w] = part.astype(target.dtype, copy=False)
