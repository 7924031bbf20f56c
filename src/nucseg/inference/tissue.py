"""Where the tissue is, from a low-resolution image, so background tiles are never sent to the network."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu


def tissue_mask(rgb: np.ndarray, min_saturation: float = 0.05, pool: int = 1) -> np.ndarray:
    """Boolean mask of stained tissue in an RGB thumbnail, `pool` times coarser than it.

    Stained tissue is saturated, glass and pen-free background is not: threshold the saturation with Otsu
    (never below `min_saturation`), ignore near-black scanner borders, then close small gaps and grow the
    mask a little so nuclei at the edge of the tissue are kept. With `pool`, each mask pixel takes the highest
    saturation of its pool x pool pixels, so a small stained object is kept however coarse the mask.
    """
    rgb = np.asarray(rgb, dtype=np.float32) / 255.0
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    saturation = np.where(mx > 0.1, (mx - mn) / np.maximum(mx, 1e-6), 0.0).astype(np.float32)
    if pool > 1:
        from skimage.measure import block_reduce

        saturation = block_reduce(saturation, (pool, pool), np.max, cval=0.0)
    if saturation.size < 4 or float(saturation.max() - saturation.min()) < 1e-3:
        return saturation > min_saturation
    threshold = max(min_saturation, float(threshold_otsu(saturation)) * 0.5)
    # closing erodes from a border of background: pad with the edge, so tissue at the image's edge is kept (on a
    # coarse mask those 2 pixels are 16 model pixels, where nuclei were lost)
    mask = np.pad(saturation > threshold, 2, mode="edge")
    mask = ndi.binary_closing(mask, iterations=2)[2:-2, 2:-2]
    return ndi.binary_dilation(mask, iterations=2)


def tile_has_tissue(mask: np.ndarray, down: float, y: int, x: int, h: int, w: int) -> bool:
    """Whether the (y, x, h, w) box, in pixels `down` times finer than `mask`, touches any tissue."""
    y0, x0 = int(y // down), int(x // down)
    y1, x1 = int(np.ceil((y + h) / down)), int(np.ceil((x + w) / down))
    return bool(mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].any())
