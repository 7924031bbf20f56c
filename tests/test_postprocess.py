"""Marker-controlled watershed from foreground / contour / distance maps to separate nuclei."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from nucseg.config import PostprocessConfig
from nucseg.inference.postprocess import probabilities_to_instances, relabel_by_size


def flood_every_blob(prob: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """The textbook formulation: one watershed over the whole foreground, seedless blobs added after."""
    fg_p, contour_p, dist_p = prob

    def drop_small(mask, size):
        components, _ = ndi.label(mask)
        small = np.bincount(components.ravel()) < size
        small[0] = True
        return ~small[components]

    foreground = drop_small(fg_p > config.foreground_threshold, max(config.min_area // 2, 1))
    seeds = drop_small(((dist_p - contour_p) > config.marker_threshold) & foreground, max(config.min_marker_area, 1))
    markers, n = ndi.label(seeds)
    labels = watershed(-dist_p, markers, mask=foreground)
    orphans, _ = ndi.label(foreground & (labels == 0))
    labels = np.where(orphans > 0, orphans + n, labels)
    return relabel_by_size(labels, config.min_area)


def smooth_maps(seed: int, shape=(160, 210)) -> np.ndarray:
    """Random but nucleus-like maps: smooth blobs with continuous values (no ties for the watershed to break)."""
    rng = np.random.default_rng(seed)
    maps = []
    for sigma in (5, 2, 4):
        m = ndi.gaussian_filter(rng.random(shape), sigma)
        maps.append((m - m.min()) / (m.max() - m.min()))
    return np.stack(maps).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("config", [PostprocessConfig(0.5, 0.4, 40, 15), PostprocessConfig(0.4, 0.1, 0, 0),
                                    PostprocessConfig(0.6, -0.2, 10, 3)])
def test_equals_one_watershed_over_the_whole_foreground(seed, config):
    prob = smooth_maps(seed)
    expected = flood_every_blob(prob, config)
    assert expected.max() > 5  # the maps hold enough blobs (and blobs with several seeds) to mean something
    np.testing.assert_array_equal(probabilities_to_instances(prob, config), expected)


def disc_maps(centres, radius=10, shape=(60, 90)):
    """Foreground, contour and distance maps of discs (touching ones share their border pixels)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dist = np.zeros(shape, np.float32)
    for cy, cx in centres:
        d = 1 - np.hypot(yy - cy, xx - cx) / radius
        dist = np.maximum(dist, np.clip(d, 0, 1))
    foreground = (dist > 0).astype(np.float32)
    contour = ((dist > 0) & (dist < 0.2)).astype(np.float32)
    return np.stack([foreground, contour, dist])


def test_touching_nuclei_separate_and_seedless_blobs_are_kept():
    prob = disc_maps([(30, 20), (30, 38), (30, 70)])
    prob[2, :, 55:] = np.minimum(prob[2, :, 55:], 0.3)  # the third disc's distance never reaches a seed
    labels = probabilities_to_instances(prob, PostprocessConfig(0.5, 0.4, 20, 5))
    assert labels.dtype == np.uint32 and labels.max() == 3
    assert len({labels[30, 20], labels[30, 38], labels[30, 70]}) == 3
    assert labels[30, 29] in (labels[30, 20], labels[30, 38])  # the shared border goes to one of the pair


def test_small_objects_dropped_and_empty_maps_give_no_nuclei():
    prob = disc_maps([(30, 30)], radius=3)
    assert probabilities_to_instances(prob, PostprocessConfig(0.5, 0.4, 40, 5)).max() == 0
    assert probabilities_to_instances(np.zeros((3, 20, 20), np.float32)).max() == 0
    uint8 = (disc_maps([(30, 30)]) * 255).astype(np.uint8)
    assert probabilities_to_instances(uint8, PostprocessConfig(0.5, 0.4, 20, 5)).max() == 1
