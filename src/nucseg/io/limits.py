"""What a reader refuses before it decodes a pixel: images too large to read whole, strips or tiles too large to
decode, levels that declare more pixels than any slide. tifffile, Pillow, OpenSlide and wsidicom state these sizes
(ImageWidth / ImageLength, RowsPerStrip / TileWidth, level dimensions) without decoding anything, so a decompression
bomb (a 1.8 MB TIFF holding one 25000² strip, a 30 MB TIFF declaring 10⁶ x 10⁶ px) ends in one line, in bounded
memory, instead of filling it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import SlideReadError
from nucseg.io.base import FIX_DAMAGED

#: images read whole (a tile, a label image, a probability map) may have at most this many pixels; slides are read
#: region by region (`nucseg.io.slides.open_slide`)
MAX_WHOLE_IMAGE_PIXELS = 12000 * 12000
#: a strip or tile is decoded whole: at most this many bytes once decoded (a 12000² RGBA strip). A 1.8 MB TIFF can
#: hold one 25000² strip, 1.9 GB decoded to read any pixel of it: such a file is refused before decoding
MAX_CHUNK_BYTES = MAX_WHOLE_IMAGE_PIXELS * 4
#: a level may declare at most this many pixels (the largest slides hold about 2e10); a 30 MB file declaring
#: 10⁶ x 10⁶ px is damaged or crafted, and its lazy levels alone would fill the memory
MAX_LEVEL_PIXELS = 1 << 35
FIX_TILED = ("save it as a tiled TIFF, e.g. `vips tiffsave IN OUT --tile --pyramid` or QuPath's OME-TIFF export, "
             "or convert it with bfconvert")


def _yx(shape: tuple[int, ...], axes: str) -> tuple[int, int]:
    sizes = dict(zip(axes, shape))
    return int(sizes.get("Y", shape[-2] if len(shape) > 1 else 1)), int(sizes.get("X", shape[-1]))


def check_declared_size(path: Path, height: int, width: int, *, whole: bool = False, what: str = "the image") -> None:
    """Refuse, before anything is decoded, an image that declares more pixels than can be read.

    Args:
        height, width: the declared size.
        whole: the image is to be read whole (a label image, a probability map, a tile): at most
            `MAX_WHOLE_IMAGE_PIXELS`; else (a slide read region by region) at most `MAX_LEVEL_PIXELS`.
        what: what to call it ("level 0", "the probability map").

    Raises:
        SlideReadError: one line naming the file, the size and what to do.
    """
    pixels = int(height) * int(width)
    if not whole and pixels > MAX_LEVEL_PIXELS:
        raise SlideReadError(path, f"{what} declares {width} x {height} px ({pixels:.2g} px), more than any slide "
                             f"(at most {MAX_LEVEL_PIXELS:.2g})", FIX_DAMAGED)
    if whole and pixels > MAX_WHOLE_IMAGE_PIXELS:
        raise SlideReadError(path, f"{what} is {width} x {height} px, too large to read whole (at most "
                             f"{MAX_WHOLE_IMAGE_PIXELS:.3g} px)", "crop it, or split it into tiles")


def check_tiff_series(path: Path, series: Any, *, whole: bool = False, what: str = "the image") -> None:
    """`check_declared_size` for each level of a tifffile series, and refuse strips or tiles larger than
    `MAX_CHUNK_BYTES` decoded: tifffile states both (ImageWidth / ImageLength, RowsPerStrip / TileWidth) without
    decoding a pixel.

    Raises:
        SlideReadError: one line naming the file, the size and what to do.
    """
    for i, level in enumerate(getattr(series, "levels", None) or [series]):
        name = what if i == 0 else f"level {i}"
        height, width = _yx(tuple(level.shape), str(level.axes))
        check_declared_size(path, height, width, whole=whole and i == 0, what=name)
        page = level.keyframe
        chunk = int(np.prod(page.chunks)) * np.dtype(page.dtype).itemsize if page.dtype is not None else 0
        if chunk > MAX_CHUNK_BYTES:
            kind = "tiles" if page.is_tiled else "strips"
            rows = page.tilelength if page.is_tiled else min(page.rowsperstrip, page.imagelength)
            cols = page.tilewidth if page.is_tiled else page.imagewidth
            raise SlideReadError(path, f"{name} is stored in {kind} of {cols} x {rows} px, {chunk / 1e9:.2g} GB each "
                                 f"once decoded (nucseg decodes at most {MAX_CHUNK_BYTES / 1e6:.0f} MB at a time)",
                                 FIX_TILED)
