"""From the network's foreground, contour and distance maps to separate nuclei (marker-controlled watershed)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from nucseg.config import PostprocessConfig


def probabilities_to_instances(prob: np.ndarray, config: PostprocessConfig | None = None) -> np.ndarray:
    """Instance labels from a (3, H, W) map of foreground, contour and distance probabilities.

    Seeds are the cores of nuclei: pixels whose distance-to-border minus contour probability exceeds
    `marker_threshold`. Watershed floods from the seeds over the inverted distance map, inside the
    foreground, so touching nuclei separate along their shared border. Foreground blobs without any seed
    become nuclei of their own, so a faint nucleus is never silently dropped.

    Args:
        prob: float array (3, H, W) in [0, 1] (or uint8 scaled to 0..255).
        config: thresholds and minimum sizes.

    Returns:
        uint32 (H, W) labels, 0 = background, 1..N = nuclei (consecutive).
    """
    config = config or PostprocessConfig()
    prob = np.asarray(prob)
    if prob.dtype == np.uint8:
        prob = prob.astype(np.float32) / 255.0
    fg_p, contour_p, dist_p = prob[0], prob[1], prob[2]
    foreground = fg_p > config.foreground_threshold
    if config.min_area:
        foreground = drop_small_components(foreground, max(config.min_area // 2, 1))
    if not foreground.any():
        return np.zeros(fg_p.shape, dtype=np.uint32)
    seeds = ((dist_p - contour_p) > config.marker_threshold) & foreground
    if config.min_marker_area:
        seeds = drop_small_components(seeds, config.min_marker_area)
    markers, n = ndi.label(seeds)
    labels = watershed(-dist_p, markers, mask=foreground)
    orphans, n_orphans = ndi.label(foreground & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + n, labels)
    return relabel_by_size(labels, config.min_area)


def relabel_by_size(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Drop objects under `min_area` pixels and renumber the rest 1..N (uint32)."""
    counts = np.bincount(labels.ravel())
    keep = counts >= max(min_area, 1)
    keep[0] = False
    lut = np.zeros(len(counts), dtype=np.uint32)
    lut[keep] = np.arange(1, keep.sum() + 1, dtype=np.uint32)
    return lut[labels]


def drop_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """`mask` without its connected components of fewer than `min_size` pixels."""
    components, _ = ndi.label(mask)
    counts = np.bincount(components.ravel())
    small = counts < min_size
    small[0] = True
    return ~small[components]
