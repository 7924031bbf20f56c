"""The squeeze-excitation gates of an image: a function of the image alone, never of the region, the field of
view, the tile size or the block that is asked (see `nucseg.models.squeeze_excitation`).

The gates are measured once per image, on `GATE_WINDOW` px windows at the model's resolution laid on a grid over
the whole image (from its origin, the last window of a row or column flush with the image's end; an image
smaller than a window is one window, white beyond it): those with the most tissue in the image's own tissue
mask (at least `MOST_TISSUE` of the best window's share), at most `GATE_WINDOWS` of them spread evenly over the
image. The encoder runs on them as if they were one image (each block's squeeze pooled over every window,
`pooled_gates`): one gate vector per block, for every tile of the image. A slide's gates are kept with the open
slide (`source_cache`), so its regions measure nothing again; a region asked of a slide gets exactly the gates
of the whole-slide run.

Before, each block of a slide took the gates of its own window with most tissue, and an image of one block the
gates of its centre window, so the same pixels gave other nuclei in a drawn region than in the whole-slide run
(small_HE.svs: object F1 0.854 over a 401 px region). The figures of the change are in docs/MODEL.md ("Tiling").
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from nucseg.inference.forward import network_input
from nucseg.inference.source import ScaledSource, source_cache
from nucseg.inference.tiling import tile_starts
from nucseg.inference.tissue import TissueMap

if TYPE_CHECKING:
    from nucseg.models.registry import ModelSpec

#: side of a gate window (model pixels): the training patches' side, whose gates the network learned with
GATE_WINDOW = 256
#: most windows the gates are pooled over (16 windows of 256 px: the pixels of one batch of four 512-px tiles)
GATE_WINDOWS = 16
#: windows whose tissue share is at least this fraction of the best window's are candidates
MOST_TISSUE = 0.75

_lock = threading.Lock()


def gate_windows(full_shape: tuple[int, int], tissue: TissueMap | None,
                 size: int = GATE_WINDOW, most: int = GATE_WINDOWS) -> tuple[tuple[int, int], ...]:
    """Top-lefts (model pixels of the whole image) of the windows the gates are measured on.

    Args:
        full_shape: the whole image's (h, w) in model pixels.
        tissue: the whole image's tissue mask, or None (every window is a candidate, as when it finds none).
    """
    ys, xs = _starts(full_shape[0], size), _starts(full_shape[1], size)
    candidates = [(y, x) for y in ys for x in xs]
    if tissue is not None and not tissue.empty:
        shares = window_shares(tissue.moved((0, 0)), ys, xs, size).ravel()
        best = float(shares.max())
        if best > 0:
            candidates = [c for c, s in zip(candidates, shares) if s >= MOST_TISSUE * best]
    if len(candidates) > most:
        picks = np.round(np.linspace(0, len(candidates) - 1, most)).astype(int)
        candidates = [candidates[i] for i in picks]
    return tuple(candidates)


def image_gate_windows(source: ScaledSource) -> tuple[tuple[int, int], ...]:
    """`gate_windows` of the image `source` is a region of (its whole tissue mask; every window when it has none)."""
    mask = source.tissue_mask()
    return gate_windows(source.full_shape, None if mask.empty else mask)


def _starts(length: int, size: int) -> list[int]:
    return tile_starts(length, size, size) if length >= size else [0]


def window_shares(tissue: TissueMap, ys: list[int], xs: list[int], size: int) -> np.ndarray:
    """(len(ys), len(xs)) tissue share of each window (from a summed-area table of the mask)."""
    mask = tissue.mask
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    table[1:, 1:] = mask.cumsum(0).cumsum(1)

    def cuts(starts: list[int], n: int) -> tuple[np.ndarray, np.ndarray]:
        s = np.asarray(starts, float)
        lo = np.clip(np.floor(s / tissue.down).astype(int), 0, n)
        hi = np.clip(np.ceil((s + size) / tissue.down).astype(int), 0, n)
        return lo, hi

    y0, y1 = cuts(ys, mask.shape[0])
    x0, x1 = cuts(xs, mask.shape[1])
    sums = (table[y1][:, x1] - table[y0][:, x1] - table[y1][:, x0] + table[y0][:, x0]).astype(float)
    area = np.outer(np.maximum(y1 - y0, 1), np.maximum(x1 - x0, 1))
    return sums / area


def image_network(net: Any, source: ScaledSource, windows: tuple[tuple[int, int], ...], spec: ModelSpec,
                  device: Any) -> Any:
    """`net` with its squeeze-excitation gates fixed to those of the image of `source` (measured on `windows`,
    see `gate_windows`); `net` itself when it has no gates (MobileNet, ResNet, constant-gate models).

    Kept per image object and network: a second region of the same open slide reuses them.
    """
    from nucseg.models.squeeze_excitation import se_blocks, with_pooled_gates

    if not se_blocks(net):
        return net
    key = ("gates", source.factor, source.level, windows)
    cache = source_cache(source.image)
    with _lock:
        per_net = cache.setdefault(key, weakref.WeakKeyDictionary())
        try:
            if net in per_net:
                return per_net[net]
        except TypeError:  # a network that cannot be referenced weakly: measured every time
            per_net = {}
    pixels = np.stack([source.read_model(y, x, GATE_WINDOW, GATE_WINDOW) for y, x in windows])
    fixed = with_pooled_gates(net, network_input(net, pixels, spec, device))
    with _lock, contextlib.suppress(TypeError):
        per_net[net] = fixed
    return fixed


def network_for_image(net: Any, image: np.ndarray, spec: ModelSpec, device: Any,
                      mpp: float | None = None) -> Any:
    """`net` with the gates a run on the in-memory `image` gives it: for benchmarks and tools that call the
    network outside the engine."""
    source = ScaledSource(image, spec.mpp, mpp)
    return image_network(net, source, image_gate_windows(source), spec, device)
