"""Per-nucleus shape and stain measurements of one `LabelBlock` (the columns of the CSV and of QuPath's list).

Centroids are in full-resolution pixels with QuPath's convention (origin at the top-left CORNER of the image, so a
centroid is the mean pixel index + 0.5). ``*_px`` values are in label pixels; the micron columns exist only when
the pixel size is known (given by the file, the user or ``--mpp``), never from an assumed one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nucseg.io.label_blocks import LabelBlock

__all__ = ["SHAPE_COLUMNS", "MICRON_COLUMNS", "STAIN_COLUMNS", "measurement_columns", "measure_block",
           "stain_channels"]

SHAPE_COLUMNS = ("id", "centroid_x", "centroid_y", "area_px", "perimeter_px", "eccentricity", "solidity",
                 "major_axis_px", "minor_axis_px")
MICRON_COLUMNS = ("centroid_x_um", "centroid_y_um", "area_um2", "perimeter_um", "major_axis_um", "minor_axis_um")
STAIN_COLUMNS = ("mean_r", "mean_g", "mean_b", "mean_hematoxylin_od", "mean_eosin_od")


def measurement_columns(mpp_known: bool, image_known: bool) -> list[str]:
    """The measurement names, in order, for a pixel size known or not and an image at hand or not."""
    return [*SHAPE_COLUMNS, *(MICRON_COLUMNS if mpp_known else ()), *(STAIN_COLUMNS if image_known else ())]


class _Moments:
    """Per-object area, centroid and second-moment eigenvalues (as regionprops' inertia tensor), by bincount."""

    def __init__(self, flat: np.ndarray, width: int, n: int):
        self.flat, self.size = flat, n + 1
        self.area = np.bincount(flat, minlength=self.size)[1:]
        rr, cc = np.divmod(np.arange(flat.size, dtype=np.float64), width)
        self.my, self.mx = self.mean(rr), self.mean(cc)
        vyy, vxx = self.mean(rr * rr) - self.my**2, self.mean(cc * cc) - self.mx**2
        vxy = self.mean(rr * cc) - self.my * self.mx
        half, root = (vyy + vxx) / 2, np.sqrt(((vyy - vxx) / 2) ** 2 + vxy**2)
        self.l1, self.l2 = np.maximum(half + root, 0), np.maximum(half - root, 0)

    def mean(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.flat, values, minlength=self.size)[1:] / np.maximum(self.area, 1)


def stain_channels(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 5): R, G, B (0-255) and the hematoxylin and eosin optical densities of `skimage.color.rgb2hed`."""
    from skimage.color import rgb2hed

    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:  # floats in [0, 1] or other integer ranges to 0-255
        top = 1.0 if np.issubdtype(rgb.dtype, np.floating) and rgb.size and float(rgb.max()) <= 1.0 else 255.0
        rgb = np.clip(rgb.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
    return np.concatenate([rgb.astype(np.float64), rgb2hed(rgb)[..., :2]], axis=-1)


def measure_block(block: LabelBlock, image: np.ndarray | None = None, mpp: float | None = None, *,
                  offset: Sequence[float] = (0, 0), downsample: float = 1.0) -> dict[str, np.ndarray]:
    """Measurements of the nuclei of `block`, as columns (`measurement_columns`) in the order of ``block.ids``.

    Args:
        block: nuclei, whole, in a window of the label map.
        image: RGB pixels of the same window (h, w, 3), or None.
        mpp: microns per label pixel when known.
        offset: (y0, x0) of the label map in full-resolution pixels; downsample: full-resolution px per label px.
    """
    from skimage.measure import regionprops_table

    labels, n = block.labels, int(block.ids.size)
    table = regionprops_table(labels, properties=["label", "perimeter", "solidity"])
    order = np.argsort(table["label"])  # regionprops lists labels 1..n in order already; be explicit
    stats = _Moments(labels.ravel(), labels.shape[1], n)
    l1, l2 = stats.l1, stats.l2
    cy = offset[0] + (stats.my + block.origin[0] + 0.5) * downsample
    cx = offset[1] + (stats.mx + block.origin[1] + 0.5) * downsample
    perimeter, solidity = table["perimeter"][order], table["solidity"][order]
    cols: dict[str, np.ndarray] = {
        "id": block.ids, "centroid_x": cx, "centroid_y": cy, "area_px": stats.area, "perimeter_px": perimeter,
        "eccentricity": np.where(l1 > 0, np.sqrt(1 - l2 / np.where(l1 > 0, l1, 1)), 0.0), "solidity": solidity,
        "major_axis_px": 4 * np.sqrt(l1), "minor_axis_px": 4 * np.sqrt(l2)}
    if mpp:
        cols.update(centroid_x_um=cx * mpp / downsample, centroid_y_um=cy * mpp / downsample,
                    area_um2=stats.area * mpp * mpp, perimeter_um=perimeter * mpp,
                    major_axis_um=cols["major_axis_px"] * mpp, minor_axis_um=cols["minor_axis_px"] * mpp)
    if image is not None:
        stains = stain_channels(np.asarray(image))
        for k, name in enumerate(STAIN_COLUMNS):
            cols[name] = stats.mean(stains[..., k].ravel())
    return cols


def rows_of(cols: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Columns as one dict per nucleus with plain Python numbers (ids as int)."""
    names = list(cols)
    values = [np.asarray(cols[n]).tolist() for n in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: such values become None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
