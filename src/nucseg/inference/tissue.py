"""Where the tissue is, from a low-resolution image, so background tiles are never sent to the network."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu


def tissue_mask(rgb: np.ndarray, min_saturation: float = 0.05) -> np.ndarray:
    """Boolean mask of stained tissue in an RGB thumbnail.

    Stained tissue is saturated, glass and pen-free background is not: threshold the saturation with Otsu
    (never below `min_saturation`), ignore near-black scanner borders, then close small gaps and grow the
    mask a little so nuclei at the edge of the tissue are kept.
    """
    rgb = np.asarray(rgb, dtype=np.float32) / 255.0
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    saturation = (mx - mn) / np.maximum(mx, 1e-6)
    if saturation.size < 4 or float(saturation.max() - saturation.min()) < 1e-3:
        return saturation > min_saturation
    threshold = max(min_saturation, float(threshold_otsu(saturation)) * 0.5)
    mask = (saturation > threshold) & (mx > 0.1)
    mask = ndi.binary_closing(mask, iterations=2)
    return ndi.binary_dilation(mask, iterations=2)


def tile_has_tissue(mask: np.ndarray, down: float, y: int, x: int, h: int, w: int) -> bool:
    """Whether the (y, x, h, w) box, in pixels `down` times finer than `mask`, touches any tissue."""
    y0, x0 = int(y // down), int(x // down)
    y1, x1 = int(np.ceil((y + h) / down)), int(np.ceil((x + w) / down))
    return bool(mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].any())
