"""Image and labels of a chosen region, read from napari layers, with where they came from.

Regions are ``(y, x, h, w)`` in level-0 pixels of the image (see `layers`); the labels may cover only part of
the image (a Segment result of a region is placed over it with a translate), so crops are clipped to both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels

from nucseg.errors import InvalidInputError

from .layers import Region, layer_mpp


def _level0(layer: Any) -> Any:
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def labels_offset(image: Image, labels: Labels) -> tuple[int, int]:
    """Where pixel (0, 0) of `labels` lies in level-0 pixels of `image` (the two must share a pixel grid).

    Raises:
        InvalidInputError: different pixel sizes, or a shift by a fraction of a pixel.
    """
    i_scale, l_scale = np.asarray(image.scale[-2:], float), np.asarray(labels.scale[-2:], float)
    if not np.allclose(i_scale, l_scale, rtol=1e-3):
        raise InvalidInputError(
            f"labels {labels.name!r} (pixel size {tuple(l_scale)}) and image {image.name!r} ({tuple(i_scale)}) are "
            "not on the same pixel grid: correct the labels produced for this image by the Segment widget")
    offset = (np.asarray(labels.translate[-2:], float) - np.asarray(image.translate[-2:], float)) / i_scale
    if not np.allclose(offset, np.round(offset), atol=1e-3):
        raise InvalidInputError(f"labels {labels.name!r} are shifted from image {image.name!r} by a fraction of a pixel")
    return int(round(offset[0])), int(round(offset[1]))


def crop_pair(image: Image, labels: Labels, region: Region | None) -> tuple[np.ndarray, np.ndarray, Region]:
    """Image pixels and labels of `region` (level-0 image pixels; None = all), clipped to the labelled area.

    Returns:
        (image (h, w, 3|4) or (h, w), labels (h, w), the region actually cropped).

    Raises:
        InvalidInputError: the layers do not share a pixel grid or the region does not overlap the labels.
    """
    img0, lab0 = _level0(image), _level0(labels)
    if lab0.ndim != 2:
        raise InvalidInputError(f"labels {labels.name!r} have shape {tuple(lab0.shape)}; one 2-D label image is needed")
    H, W = int(img0.shape[0]), int(img0.shape[1])
    oy, ox = labels_offset(image, labels)
    y, x, h, w = region if region is not None else (0, 0, H, W)
    y0, x0 = max(y, oy, 0), max(x, ox, 0)
    y1, x1 = min(y + h, oy + int(lab0.shape[0]), H), min(x + w, ox + int(lab0.shape[1]), W)
    if y1 <= y0 or x1 <= x0:
        raise InvalidInputError(f"the chosen region does not overlap the labels {labels.name!r}: move the view or "
                                "draw the rectangle over the corrected nuclei")
    pixels = np.asarray(img0[y0:y1, x0:x1])
    return pixels, np.asarray(lab0[y0 - oy : y1 - oy, x0 - ox : x1 - ox]), (y0, x0, y1 - y0, x1 - x0)


def provenance_of(image: Image, labels: Labels, region: Region, how: str) -> dict[str, Any]:
    """Where a correction came from: source file, level, region, mpp and the model of the first prediction."""
    config = labels.metadata.get("nucseg_config") or {}
    model_info = labels.metadata.get("nucseg_model")
    return {
        "source": image.metadata.get("nucseg_path") or image.name,
        "image_layer": image.name,
        "labels_layer": labels.name,
        "level": 0,
        "region": list(region),
        "region_from": how,
        "mpp": layer_mpp(image),
        "model": config.get("model") if isinstance(config, dict) else None,
        "model_info": model_info if isinstance(model_info, (dict, str)) else None,
    }
