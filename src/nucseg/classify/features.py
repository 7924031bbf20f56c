"""Per-nucleus features for the nucleus-type classifier, computed one `LabelBlock` at a time.

Groups (`FEATURE_GROUPS`), all from the label map and the RGB pixels, in microns where they are lengths:

- ``shape``: the CSV's morphology (`nucseg.io.measure.measure_block`: area, perimeter, eccentricity, solidity,
  axes) in µm, and circularity;
- ``stain``: haematoxylin and eosin optical density (`skimage.color.rgb2hed`) inside the nucleus: mean, spread,
  10th and 90th percentiles, and the mean brightness;
- ``texture``: the haematoxylin's gradient magnitude inside the nucleus and its coefficient of variation
  (chromatin coarse or fine);
- ``context``: the stain of a ring of `RING_UM` around the nucleus (eosin-rich cytoplasm or stroma, or not) and
  the nucleus's haematoxylin against that ring;
- ``neighbours``: the number of nucleus centres within 12.5 and 25 µm, the distance to the nearest one, and the
  mean area and haematoxylin of the 5 nearest (a lymphocyte among lymphocytes, a tumour cell in a sheet).

Lengths are in µm from the pixel size the caller gives: the image's when known, else the resolution the nuclei
were segmented at (the model's). These numbers stay inside the classifier; no output claims a unit from them.
Neighbours are the nuclei of the same block (2048 px with a margin), so a nucleus on a block's edge sees the
neighbours on its own side only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nucseg.io.label_blocks import LabelBlock
from nucseg.io.measure import measure_block, stain_channels

__all__ = ["FEATURE_GROUPS", "DEFAULT_GROUPS", "feature_names", "block_features"]

RING_UM = 2.0
NEIGHBOURS = 5
_NEAR_UM = (12.5, 25.0)

FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "shape": ("area_um2", "perimeter_um", "eccentricity", "solidity", "major_axis_um", "minor_axis_um",
              "circularity"),
    "stain": ("h_mean", "h_std", "h_p10", "h_p90", "e_mean", "e_std", "brightness"),
    "texture": ("h_gradient", "h_cv"),
    "context": ("ring_h_mean", "ring_e_mean", "h_contrast"),
    "neighbours": ("near_12um", "near_25um", "nearest_um", "nn_area_um2", "nn_h_mean"),
}
#: what the product uses (benchmarks/bench_classify.py measures each group's worth)
DEFAULT_GROUPS = tuple(FEATURE_GROUPS)


def feature_names(groups: Sequence[str] = DEFAULT_GROUPS) -> list[str]:
    """The feature names of `groups`, in a fixed order."""
    unknown = [g for g in groups if g not in FEATURE_GROUPS]
    if unknown:
        raise ValueError(f"unknown feature groups {unknown}; choose among {', '.join(FEATURE_GROUPS)}")
    return [name for g in FEATURE_GROUPS if g in groups for name in FEATURE_GROUPS[g]]


def _per_object(flat_labels: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of `values` per label 1..n (0 is ignored)."""
    count = np.maximum(np.bincount(flat_labels, minlength=n + 1)[1:], 1)
    mean = np.bincount(flat_labels, values, minlength=n + 1)[1:] / count
    sq = np.bincount(flat_labels, values * values, minlength=n + 1)[1:] / count
    return mean, np.sqrt(np.maximum(sq - mean * mean, 0))


def _percentiles(flat_labels: np.ndarray, values: np.ndarray, n: int, qs: Sequence[float]) -> list[np.ndarray]:
    """Per-label percentiles (nearest rank) of `values` for labels 1..n, by one sort."""
    inside = flat_labels > 0
    lab, val = flat_labels[inside], values[inside]
    order = np.lexsort((val, lab))
    lab, val = lab[order], val[order]
    counts = np.bincount(lab, minlength=n + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = []
    for q in qs:
        idx = starts + np.floor(q * np.maximum(counts - 1, 0)).astype(np.int64)
        out.append(np.where(counts > 0, val[np.minimum(idx, max(val.size - 1, 0))] if val.size else 0.0, 0.0))
    return out


def _neighbours(cy: np.ndarray, cx: np.ndarray, area: np.ndarray, h_mean: np.ndarray,
                um: float) -> dict[str, np.ndarray]:
    from scipy.spatial import cKDTree

    n = cy.size
    points = np.stack([cy, cx], axis=1) * um
    out = {name: np.zeros(n) for name in FEATURE_GROUPS["neighbours"]}
    if n < 2:
        out["nearest_um"][:] = 100.0  # alone in its block: "far", a finite number the learner can split on
        out["nn_area_um2"][:], out["nn_h_mean"][:] = area, h_mean
        return out
    tree = cKDTree(points)
    for name, radius in zip(("near_12um", "near_25um"), _NEAR_UM, strict=True):
        out[name] = np.array([len(v) - 1 for v in tree.query_ball_point(points, radius)], dtype=float)
    k = min(NEIGHBOURS, n - 1)
    dist, idx = tree.query(points, k=k + 1)
    dist, idx = dist[:, 1:], idx[:, 1:]
    out["nearest_um"] = np.minimum(dist[:, 0], 100.0)
    out["nn_area_um2"] = area[idx].mean(axis=1)
    out["nn_h_mean"] = h_mean[idx].mean(axis=1)
    return out


def block_features(block: LabelBlock, pixels: np.ndarray, um_per_px: float,
                   groups: Sequence[str] = DEFAULT_GROUPS, measured: dict[str, np.ndarray] | None = None,
                   select: Sequence[int] | None = None) -> np.ndarray:
    """Features (n, len(feature_names(groups))) of the nuclei of `block`, in the order of ``block.ids``.

    Args:
        block: nuclei, whole, in a window of the label map.
        pixels: RGB pixels of the same window (h, w, 3), at the labels' resolution.
        um_per_px: microns per label pixel (the image's, or the resolution the nuclei were segmented at).
        groups: feature groups (`FEATURE_GROUPS`).
        measured: `measure_block`'s columns of this block when the caller has them already (pixel units).
        select: increasing indices into ``block.ids``: the features of those nuclei only (the others still count as
            neighbours and context); the same numbers as their rows of the whole block, for less work.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    labels, n = block.labels, int(block.ids.size)
    names = feature_names(groups)
    if n == 0:
        return np.zeros((0, len(names)))
    um = float(um_per_px)
    sel = np.arange(n) if select is None else np.asarray(select, dtype=np.int64)
    stains = stain_channels(np.asarray(pixels))
    flat = labels.ravel()
    h, e = stains[..., 3], stains[..., 4]
    h_mean, h_std = _per_object(flat, h.ravel(), n)
    area = np.bincount(flat, minlength=n + 1)[1:] * um * um
    f: dict[str, np.ndarray] = {}
    if "shape" in groups:
        if measured is not None and "perimeter_px" in measured:
            cols = {k: np.asarray(v)[sel] for k, v in measured.items()}
        elif select is None:
            cols = measure_block(block, None, None)
        else:  # regionprops (perimeter, convex hull) of the selected nuclei only
            lut = np.zeros(n + 1, np.intp)
            lut[sel + 1] = np.arange(1, sel.size + 1)
            cols = measure_block(LabelBlock(lut[labels], block.ids[sel], block.origin), None, None)
        perimeter = np.zeros(n)
        perimeter[sel] = cols["perimeter_px"] * um
        shape = {"eccentricity": cols["eccentricity"], "solidity": cols["solidity"],
                 "major_axis_um": cols["major_axis_px"] * um, "minor_axis_um": cols["minor_axis_px"] * um}
        for name, values in shape.items():
            f[name] = np.zeros(n)
            f[name][sel] = values
        f.update(area_um2=area, perimeter_um=perimeter,
                 circularity=np.clip(4 * np.pi * area / np.maximum(perimeter, 1e-6) ** 2, 0, 2))
    if "stain" in groups:
        e_mean, e_std = _per_object(flat, e.ravel(), n)
        p10, p90 = _percentiles(flat, h.ravel(), n, (0.1, 0.9))
        brightness, _ = _per_object(flat, stains[..., :3].mean(axis=-1).ravel(), n)
        f.update(h_mean=h_mean, h_std=h_std, h_p10=p10, h_p90=p90, e_mean=e_mean, e_std=e_std,
                 brightness=brightness)
    if "texture" in groups:
        gradient = np.hypot(ndi.sobel(h, axis=0), ndi.sobel(h, axis=1))
        f["h_gradient"], _ = _per_object(flat, gradient.ravel(), n)
        f["h_cv"] = h_std / np.maximum(np.abs(h_mean), 1e-3)
    if "context" in groups:
        ring_px = max(1, int(round(RING_UM / um)))
        grown = expand_labels(labels, ring_px)
        ring = np.where(labels == 0, grown, 0).ravel()
        ring_h, _ = _per_object(ring, h.ravel(), n)
        ring_e, _ = _per_object(ring, e.ravel(), n)
        f.update(ring_h_mean=ring_h, ring_e_mean=ring_e, h_contrast=h_mean - ring_h)
    if "neighbours" in groups:
        rr, cc = np.divmod(np.arange(flat.size, dtype=np.float64), labels.shape[1])
        cy, _ = _per_object(flat, rr, n)
        cx, _ = _per_object(flat, cc, n)
        f.update(_neighbours(cy, cx, area, h_mean, um))
    return np.stack([np.asarray(f[name], dtype=np.float64)[sel] for name in names], axis=1)
