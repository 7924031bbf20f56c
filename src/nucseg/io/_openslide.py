"""Slides read with OpenSlide: Hamamatsu NDPI / VMS, 3DHISTECH MRXS, Leica SCN, Ventana BIF, Philips TIFF,
Sakura SVSLIDE, and generic tiled TIFF that tifffile cannot serve.

OpenSlide knows each vendor's layout (NDPI's JPEG restart-marker levels, MRXS's index and data files, BIF's tile
overlaps, Philips' XML...), so these files are read through it region by region. Regions OpenSlide returns as
transparent (no scanned data) are white, like glass; the slide's ICC profile is applied (`nucseg.io._color`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import SlideReadError
from nucseg.io._color import icc_of, icc_transform
from nucseg.io.base import (
    Slide,
    composite_on_white,
    decode_first_tiles,
    lazy_image,
    lazy_level,
    one_line,
    pixel_size,
    read_errors,
)
from nucseg.io.limits import check_declared_size

#: OpenSlide vendors that this reader serves (aperio and plain generic TIFF go to tifffile first)
VENDOR_FORMATS = {"hamamatsu": "Hamamatsu NDPI / VMS", "mirax": "3DHISTECH MRXS", "leica": "Leica SCN",
                  "ventana": "Ventana BIF", "philips": "Philips TIFF", "sakura": "Sakura SVSLIDE",
                  "generic-tiff": "generic tiled TIFF", "aperio": "Aperio SVS"}


def format_name(vendor: str, path: Path) -> str:
    """`Slide.format` for a file OpenSlide reads: the format's common name ("ndpi", "mrxs", "scn", ...)."""
    if vendor == "hamamatsu":
        return "vms" if path.suffix.lower() in (".vms", ".vmu") else "ndpi"
    return {"mirax": "mrxs", "leica": "scn", "ventana": "bif", "philips": "philips-tiff", "sakura": "svslide",
            "aperio": "aperio-svs", "generic-tiff": "tiff-openslide"}.get(vendor, vendor)


def detect_vendor(path: Path) -> str | None:
    """OpenSlide's name for the file's format ("hamamatsu", "mirax", ...), or None when it is not a slide it reads."""
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError):
        return None


def _reader(osr: Any, level: int, downsample: float, colour: Any) -> Any:
    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        # read_region takes the top-left corner in level-0 pixels and the size in this level's pixels
        region = osr.read_region((round(x0 * downsample), round(y0 * downsample)), level, (x1 - x0, y1 - y0))
        rgb = composite_on_white(np.asarray(region))
        return colour.apply(rgb) if colour is not None else rgb

    return read


def _associated(osr: Any, name: str, colour: Any) -> Any:
    def load() -> np.ndarray:
        rgb = composite_on_white(np.asarray(osr.associated_images[name].convert("RGBA")))
        return colour.apply(rgb) if colour is not None else rgb

    return load


def _mpp(props: Any) -> tuple[float | None, tuple[float, float] | None]:
    """(square microns per pixel or None, (x, y) or None) from OpenSlide's mpp-x / mpp-y (`pixel_size`)."""
    try:
        x, y = float(props["openslide.mpp-x"]), float(props.get("openslide.mpp-y", props["openslide.mpp-x"]))
    except (KeyError, ValueError):
        return None, None
    return pixel_size(x, y)


def open_openslide(path: Path) -> Slide:
    """Open a slide with OpenSlide as a `Slide` (the handle is kept until `Slide.close`).

    Raises:
        SlideReadError: OpenSlide cannot open the file, or the first tile of a level cannot be decoded.
    """
    import openslide

    try:
        osr = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as err:
        raise SlideReadError(path, "OpenSlide does not recognise this file as a slide",
                             "check that it is a complete slide: an MRXS needs the folder of the same name beside "
                             "it, a VMS its image files") from err
    except read_errors() as err:
        raise SlideReadError(path, f"OpenSlide cannot open it: {one_line(err)}",
                             "the file is damaged or incomplete; export or copy it again") from err
    try:
        props = osr.properties
        vendor = props.get("openslide.vendor") or detect_vendor(path) or "openslide"
        profile = osr.color_profile
        colour, icc = icc_of(icc_transform(profile.tobytes() if profile is not None else None))
        tag = f"nucseg-openslide-{id(osr):x}-{path.name}"
        levels, readers, downsamples = [], [], []
        for i, (w, h) in enumerate(osr.level_dimensions):
            check_declared_size(path, h, w, what=f"level {i}")
            down = float(osr.level_downsamples[i])
            tile = (int(props.get(f"openslide.level[{i}].tile-height", 256)),
                    int(props.get(f"openslide.level[{i}].tile-width", 256)))
            read = _reader(osr, i, down, colour)
            readers.append(read)
            levels.append(lazy_level(read, (h, w), tile, f"{tag}-{i}"))
            downsamples.append(round(down, 6) if i else 1.0)
        associated = {}
        for name in osr.associated_images:
            try:
                shape = (int(props[f"openslide.associated.{name}.height"]), int(props[f"openslide.associated.{name}.width"]))
            except (KeyError, ValueError):
                continue
            associated[name] = lazy_image(_associated(osr, name, colour), shape, f"{tag}-{name}")
        tile0 = [int(props.get(f"openslide.level[0].tile-{s}", 0)) or None for s in ("width", "height")]
        meta: dict[str, Any] = {"vendor": vendor, "levels": len(levels), "tile": tile0 if all(tile0) else None}
        if props.get("openslide.objective-power"):
            with contextlib.suppress(ValueError):
                power = float(props["openslide.objective-power"])
                meta["objective_power"] = int(power) if power.is_integer() else power
        for key in ("openslide.comment", "tiff.Software", "tiff.Model"):
            if props.get(key):
                meta[key.split(".", 1)[1].lower()] = " ".join(str(props[key]).split())[:200]
        mpp, mpp_xy = _mpp(props)
        slide = Slide(path, format_name(vendor, path), levels, downsamples, mpp, associated, meta, readers, [osr],
                      reader="openslide", icc=icc, mpp_xy=mpp_xy)
        decode_first_tiles(path, readers)
        return slide
    except BaseException:
        osr.close()
        raise
