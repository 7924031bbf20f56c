"""Where the tissue is, from a low-resolution image, so background tiles are never sent to the network."""

from __future__ import annotations

import dataclasses

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
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # 2-D uint8, no float copy of the three channels; channel by channel: `rgb.max(axis=2)` reduces over an axis
    # of 3 and is 7x slower on a 4 MP image
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
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


def tissue_share(mask: np.ndarray, down: float, y: int, x: int, h: int, w: int) -> float:
    """Share of tissue in `mask` over the (y, x, h, w) box, in pixels `down` times finer than `mask` (0 outside)."""
    y0, x0 = int(y // down), int(x // down)
    y1, x1 = int(np.ceil((y + h) / down)), int(np.ceil((x + w) / down))
    n = max(y1 - y0, 0) * max(x1 - x0, 0)
    if not n:
        return 0.0
    return float(mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].sum()) / n


@dataclasses.dataclass(frozen=True, eq=False)
class TissueMap:
    """The tissue mask of a whole image, seen from a region of it.

    The mask is the image's, never the region's (a region's own Otsu threshold would differ), so which tiles are
    skipped as glass is a matter of the image alone. Coordinates are model pixels relative to the region.

    Attributes:
        mask: boolean mask of the whole image; one mask pixel covers `down` x `down` model pixels.
        down: model pixels per mask pixel.
        origin: (y, x) of the region's top-left in the whole image's model pixels.
    """

    mask: np.ndarray
    down: float
    origin: tuple[int, int] = (0, 0)

    @property
    def empty(self) -> bool:
        """No tissue anywhere in the image (a grey or fluorescence image): nothing is skipped."""
        return not bool(self.mask.any())

    def any(self, y: int, x: int, h: int, w: int) -> bool:
        """Whether the (y, x, h, w) box (region pixels) touches tissue."""
        return tile_has_tissue(self.mask, self.down, y + self.origin[0], x + self.origin[1], h, w)

    def share(self, y: int, x: int, h: int, w: int) -> float:
        """Share of tissue over the (y, x, h, w) box (region pixels)."""
        return tissue_share(self.mask, self.down, y + self.origin[0], x + self.origin[1], h, w)

    def bounds(self) -> tuple[int, int, int, int] | None:
        """(y0, x0, y1, x1) of the image's tissue in region pixels, or None without tissue."""
        rows, cols = np.flatnonzero(self.mask.any(1)), np.flatnonzero(self.mask.any(0))
        if not rows.size:
            return None
        oy, ox = self.origin
        return (int(rows[0] * self.down) - oy, int(cols[0] * self.down) - ox,
                int(np.ceil((rows[-1] + 1) * self.down)) - oy, int(np.ceil((cols[-1] + 1) * self.down)) - ox)

    def moved(self, origin: tuple[int, int]) -> TissueMap:
        """The same mask seen from a region whose top-left is `origin`."""
        return TissueMap(self.mask, self.down, origin)
