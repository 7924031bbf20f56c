"""Synthetic H&E-like nuclei of two kinds for the classifier tests: small dark round 'lymphocytes' and large paler
elongated 'tumour' nuclei, with their instance labels and each nucleus's true kind."""

from __future__ import annotations

import numpy as np


def two_kinds(shape=(320, 360), n=40, seed=0) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(RGB image, labels, {id: "lymphocyte" | "tumour"}); nuclei at least 5 px apart."""
    rng = np.random.default_rng(seed)
    img = np.full((*shape, 3), (235, 200, 215), np.uint8)  # pink background, like eosin
    labels = np.zeros(shape, np.uint32)
    kinds: dict[int, str] = {}
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    k = 0
    for _ in range(n * 20):
        lymph = rng.random() < 0.5
        ry, rx = (rng.uniform(4, 5.5),) * 2 if lymph else (rng.uniform(7, 9), rng.uniform(10, 13))
        cy, cx = rng.uniform(rx + 1, shape[0] - rx - 1), rng.uniform(rx + 1, shape[1] - rx - 1)
        disc = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        if labels[((yy - cy) / (ry + 5)) ** 2 + ((xx - cx) / (rx + 5)) ** 2 <= 1].any():
            continue
        k += 1
        labels[disc] = k
        kinds[k] = "lymphocyte" if lymph else "tumour"
        colour = (50, 30, 110) if lymph else (140, 100, 170)
        noise = rng.normal(0, 6, (int(disc.sum()), 3))
        img[disc] = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
        if k == n:
            break
    return img, labels, kinds


def centres(labels: np.ndarray) -> dict[int, tuple[float, float]]:
    """{id: (x, y)} full-resolution centres (QuPath's convention: + 0.5), on the nucleus for convex shapes."""
    from scipy import ndimage as ndi

    ids = np.unique(labels)[1:]
    com = ndi.center_of_mass(np.ones_like(labels), labels, ids)
    return {int(i): (c[1] + 0.5, c[0] + 0.5) for i, c in zip(ids, com, strict=True)}
