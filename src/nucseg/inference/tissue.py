"""Where the tissue is, from a low-resolution image, so background tiles are never sent to the network."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

#: side (pixels) of the blocks a tissue mask reads at once: memory stays about 40 MB whatever the image's size
MASK_READ_BLOCK = 2048


def saturation_map(rgb: np.ndarray, pool: int = 1) -> np.ndarray:
    """HSV saturation of an RGB image (0 where near black), float32, each `pool` x `pool` block taking its highest
    value (a partial block at the end is pooled with zeros)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        rgb = np.clip(np.asarray(rgb, dtype=np.float32), 0, 255).astype(np.uint8)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)  # 2-D uint8: no float copy of the three channels
    top = mx.astype(np.float32)
    saturation = (top - mn) / np.maximum(top, 1e-6)
    saturation[top <= 25.5] = 0.0  # near-black scanner borders (max <= 0.1) are not tissue
    if pool > 1:
        from skimage.measure import block_reduce

        saturation = block_reduce(saturation, (pool, pool), np.max, cval=0.0)
    return saturation


def mask_from_saturation(saturation: np.ndarray, min_saturation: float = 0.05) -> np.ndarray:
    """Boolean tissue mask from a (pooled) saturation map; see `tissue_mask`."""
    if saturation.size < 4 or float(saturation.max() - saturation.min()) < 1e-3:
        return saturation > min_saturation
    threshold = max(min_saturation, float(threshold_otsu(saturation)) * 0.5)
    # closing erodes from a border of background: pad with the edge, so tissue at the image's edge is kept (on a
    # coarse mask those 2 pixels are 16 model pixels, where nuclei were lost)
    mask = np.pad(saturation > threshold, 2, mode="edge")
    mask = ndi.binary_closing(mask, iterations=2)[2:-2, 2:-2]
    return ndi.binary_dilation(mask, iterations=2)


def tissue_mask(rgb: np.ndarray, min_saturation: float = 0.05, pool: int = 1) -> np.ndarray:
    """Boolean mask of stained tissue in an RGB thumbnail, `pool` times coarser than it.

    Stained tissue is saturated, glass and pen-free background is not: threshold the saturation with Otsu
    (never below `min_saturation`), ignore near-black scanner borders, then close small gaps and grow the
    mask a little so nuclei at the edge of the tissue are kept. With `pool`, each mask pixel takes the highest
    saturation of its pool x pool pixels, so a small stained object is kept however coarse the mask.
    """
    return mask_from_saturation(saturation_map(rgb, pool), min_saturation)


def tissue_mask_blockwise(read, shape: tuple[int, int], pool: int = 1, min_saturation: float = 0.05,
                          block: int = MASK_READ_BLOCK) -> np.ndarray:
    """`tissue_mask` of an image read block by block with ``read(y, x, h, w) -> (h, w, 3) uint8``: the same mask,
    in memory bounded by one block and the pooled map, however large the image (a flat 20480² TIFF read whole as
    float32 needed more than 9 GB)."""
    h, w = int(shape[0]), int(shape[1])
    step = pool * max(1, block // pool)  # blocks on whole pools: the pooled map equals the whole image's
    out = np.zeros((-(-h // pool), -(-w // pool)), np.float32)
    for y in range(0, h, step):
        for x in range(0, w, step):
            bh, bw = min(step, h - y), min(step, w - x)
            pooled = saturation_map(read(y, x, bh, bw), pool)
            out[y // pool : y // pool + pooled.shape[0], x // pool : x // pool + pooled.shape[1]] = pooled
    return mask_from_saturation(out, min_saturation)


def tile_has_tissue(mask: np.ndarray, down: float, y: int, x: int, h: int, w: int) -> bool:
    """Whether the (y, x, h, w) box, in pixels `down` times finer than `mask`, touches any tissue."""
    y0, x0 = int(y // down), int(x // down)
    y1, x1 = int(np.ceil((y + h) / down)), int(np.ceil((x + w) / down))
    return bool(mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].any())
