"""Pyramidal OME-TIFF test slides built by tiling real H&E (MoNuSeg) tiles, cached in benchmarks/results/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from _common import RESULTS, he_mosaic


def write_pyramid(path: Path, image: np.ndarray, mpp: float = 0.25, levels: int = 4) -> Path:
    """Write `image` as a tiled, JPEG-compressed OME-TIFF pyramid with SubIFDs and PhysicalSize."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tif")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        opts = dict(tile=(512, 512), compression="jpeg", photometric="rgb")
        tif.write(image, subifds=levels - 1, metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                                                        "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}, **opts)
        level = image
        for _ in range(levels - 1):
            level = level[::2, ::2]
            tif.write(level, subfiletype=1, **opts)
    tmp.replace(path)
    return path


def slide_with_tissue(size: int, fraction: float = 1.0, seed: int = 0) -> Path:
    """A size x size slide at 0.25 um/px whose tissue covers about `fraction` of it (a centred square)."""
    path = RESULTS / "slides" / f"he_{size}_{int(fraction * 100)}.ome.tif"
    if path.exists():
        return path
    image = he_mosaic(size, seed)
    if fraction < 1.0:
        side = int(size * fraction**0.5)
        keep = np.zeros((size, size), bool)
        o = (size - side) // 2
        keep[o : o + side, o : o + side] = True
        image[~keep] = 242  # glass
    return write_pyramid(path, image)
