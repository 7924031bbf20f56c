"""Tiled prediction of an in-memory image (a tile, a region of a slide): probabilities, then instances."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from nucseg.config import TilingConfig
from nucseg.errors import InvalidInputError
from nucseg.inference.calibration import add_window_tile, centre_crop, centre_window, with_image_gates
from nucseg.inference.forward import predict_batch
from nucseg.inference.stitching import BlendCanvas
from nucseg.inference.tiling import iter_batches, pad_to_tile, tile_grid
from nucseg.models.registry import ModelSpec

if TYPE_CHECKING:
    import torch


def as_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check and convert an image to (H, W, 3) uint8, with an error a person can act on."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidInputError(
            f"{name} has shape {image.shape}; expected an RGB image (height, width, 3) - "
            "for a stack or a multichannel image, pick one RGB plane first"
        )
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number):
        raise InvalidInputError(f"{name} has dtype {image.dtype}; expected 8- or 16-bit RGB, or floats in [0, 1]")
    if np.issubdtype(image.dtype, np.floating):
        hi = 1.0 if float(np.nanmax(image)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(image) * (255.0 / hi), 0, 255).astype(np.uint8)
    hi = float(image.max()) or 1.0
    scale = 255.0 / (65535.0 if hi > 255 else 255.0)
    return np.clip(image * scale, 0, 255).astype(np.uint8)


def iter_tile_probabilities(
    net: torch.nn.Module,
    image: np.ndarray,
    spec: ModelSpec,
    device: torch.device,
    tiling: TilingConfig,
    tta: bool = False,
) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """Predict `image` tile by tile; yields (tiles done, total, None) per batch, then (total, total, probs).

    probs is (C, H, W) float32 blended across tile overlaps. Images smaller than a tile are padded with white.
    Squeeze-excitation gates are fixed once for the image (its centre window), so the tile size does not matter.
    """
    image = as_rgb_uint8(image)
    net, window_probs = with_image_gates(net, centre_crop(image), spec, device)
    padded, (h, w) = pad_to_tile(image, tiling.tile_size)
    tiles = tile_grid(padded.shape[:2], tiling.tile_size, tiling.overlap)
    canvas = BlendCanvas((h, w), len(spec.heads), tiling.tile_size, tiling.overlap)
    todo = add_window_tile(canvas, tiles, centre_window(image.shape[:2]), window_probs, tta)
    done = len(tiles) - len(todo)
    for batch_tiles in iter_batches(todo, tiling.batch_size):
        batch = np.stack([padded[t.slices] for t in batch_tiles])
        probs = predict_batch(net, batch, spec, device, tta=tta)
        for t, p in zip(batch_tiles, probs):
            canvas.add(t, p)
        done += len(batch_tiles)
        yield done, len(tiles), None
    yield len(tiles), len(tiles), canvas.result()


def predict_probabilities(
    net: torch.nn.Module,
    image: np.ndarray,
    spec: ModelSpec,
    device: torch.device,
    tiling: TilingConfig,
    tta: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(C, H, W) probabilities of a whole in-memory image, tiled."""
    result = None
    for done, total, probs in iter_tile_probabilities(net, image, spec, device, tiling, tta):
        if on_progress:
            on_progress(done, total)
        result = probs
    assert result is not None
    return result
