"""TIFF-based slides read with tifffile (Aperio SVS, OME-TIFF, pyramidal and plain TIFF) for `nucseg.io.slides`.

Levels come from tifffile's series (SVS pyramids, OME SubIFDs, generic page pyramids) and are read through its
Zarr store one tile at a time. Microns per pixel: SVS ``MPP = ...`` in the ImageDescription, OME
``PhysicalSizeX`` (+ unit), else the TIFF resolution tags when their unit is inch or cm (or ImageJ's micron).
Colour: the page's InterColorProfile (ICC) tag is applied; 16-bit data is scaled by its BitsPerSample or OME
SignificantBits when the file gives fewer bits than the samples hold (`nucseg.io.base.as_rgb_uint8`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import SlideReadError, UnsupportedFileError
from nucseg.io._color import icc_of, icc_transform
from nucseg.io.base import Slide, decode_first_tiles, pixel_size, rgb_converter
from nucseg.io.limits import check_tiff_series

_UNIT_TO_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "μm": 1.0, "micron": 1.0, "nm": 1e-3,
               "Å": 1e-4, "pm": 1e-6}
#: dask chunks of the levels are whole file tiles, grouped up to about this many pixels per side
DASK_CHUNK = 1024


def svs_metadata(description: str) -> tuple[float | None, dict[str, Any]]:
    """Microns per pixel and the ``key = value`` items of an Aperio ImageDescription."""
    meta: dict[str, Any] = {}
    for item in description.split("|")[1:]:
        key, sep, value = item.partition("=")
        if not sep:
            continue
        value = value.strip()
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        meta[key.strip()] = value
    match = re.search(r"\bMPP\s*=\s*([0-9.eE+-]+)", description)
    try:
        mpp = float(match.group(1)) if match else None
    except ValueError:
        mpp = None
    return mpp, meta


def ome_mpp(xml: str, axis: str = "X") -> float | None:
    """PhysicalSizeX (or `axis` "Y": PhysicalSizeY) of the first OME Pixels element in microns, or None."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or pixels.get(f"PhysicalSize{axis}") is None:
        return None
    try:
        return float(pixels.get(f"PhysicalSize{axis}", "")) * _UNIT_TO_UM[pixels.get(f"PhysicalSize{axis}Unit", "µm")]
    except (ValueError, KeyError):
        return None


def resolution_mpp(tif: Any, page: Any, axis: str = "X") -> float | None:
    """From XResolution (or `axis` "Y": YResolution) / ResolutionUnit (inch or cm; ImageJ files with unit micron),
    else None."""
    tag = page.tags.get(f"{axis}Resolution")
    if tag is None:
        return None
    num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
    if not num or not den:
        return None
    pixels_per_unit = num / den
    unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2
    if unit == 2:
        return 25400.0 / pixels_per_unit
    if unit == 3:
        return 10000.0 / pixels_per_unit
    ij_unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
    factor = _UNIT_TO_UM.get(str(ij_unit).replace("\\u00B5", "µ")) if ij_unit else None
    return factor / pixels_per_unit if factor else None


def plane_index(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[tuple[Any, ...], bool]:
    """Index that keeps Y, X and one channel axis, and whether channels come before Y (planar)."""
    if "Y" not in axes or "X" not in axes:
        raise UnsupportedFileError(f"{path}: axes {axes} hold no 2-D image; nucseg reads 2-D RGB or grey images")
    index: list[Any] = []
    channel = None
    for ax, n in zip(axes, shape):
        if ax in "YX":
            index.append(slice(None))
        elif ax in "SC" and channel is None and n <= 4:
            channel = ax
            index.append(slice(None))
        elif n == 1:
            index.append(0)
        else:
            raise UnsupportedFileError(
                f"{path}: image of shape {shape} (axes {axes}) is a stack or multichannel image; nucseg reads one "
                "2-D RGB or grey plane - save that plane as its own file")
    planar = channel is not None and axes.index(channel) < axes.index("Y")
    return tuple(index), planar


def lazy_level(z: Any, index: tuple[Any, ...], planar: bool, convert: Any, name: str) -> Any:
    """A dask (H, W, 3) uint8 view of a Zarr array, converted block by block with ``convert(block)``."""
    import dask.array as da

    chunks = tuple(max(1, min(n, c * max(1, round(DASK_CHUNK / c)))) for c, n in zip(z.chunks, z.shape))
    arr = da.from_array(z, chunks=chunks, name=name, lock=False, asarray=True, fancy=False)[index]
    if planar:
        arr = da.moveaxis(arr, 0, -1)
    if arr.ndim == 3:
        arr = arr.rechunk({2: -1})  # planar files chunk one sample at a time
    return arr.map_blocks(convert, dtype=np.uint8, chunks=(*arr.chunks[:2], (3,)),
                          new_axis=2 if arr.ndim == 2 else None)


def region_reader(z: Any, index: tuple[Any, ...], planar: bool, convert: Any) -> Any:
    """``read(y0, y1, x0, x1) -> (h, w, 3) uint8`` straight from the Zarr array (no dask overhead)."""
    yx = [i for i, s in enumerate(index) if isinstance(s, slice)]
    ys, xs = (yx[1], yx[2]) if planar else (yx[0], yx[1])

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        sub = list(index)
        sub[ys], sub[xs] = slice(y0, y1), slice(x0, x1)
        block = np.asarray(z[tuple(sub)])
        return convert(np.moveaxis(block, 0, -1) if planar else block)

    return read


def check_not_truncated(path: Path, pages: list[Any]) -> None:
    """Raise when a page's tiles or strips point past the end of the file."""
    size = path.stat().st_size
    for page in pages:
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if o and c]
        if ends and max(ends) > size:
            raise SlideReadError(path, f"the file is truncated: image data reaches byte {max(ends)} but the file "
                                 f"has {size} bytes", "the download or copy is incomplete; copy it again")


def ome_significant_bits(xml: str) -> int | None:
    """SignificantBits of the first OME Pixels element, or None."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    try:
        return int(pixels.get("SignificantBits", "")) if pixels is not None else None
    except ValueError:
        return None


def ome_modality(xml: str) -> str | None:
    """"fluorescence" / "brightfield" from the first OME Channel's IlluminationType or ContrastMethod, or None."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    channel = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Channel"), None)
    if channel is None:
        return None
    said = f"{channel.get('IlluminationType', '')} {channel.get('ContrastMethod', '')}".lower()
    if "fluorescence" in said:
        return "fluorescence"
    if "brightfield" in said or "transmitted" in said:
        return "brightfield"
    return None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@contextlib.contextmanager
def tifffile_messages() -> Iterator[list[str]]:
    """Collect what tifffile logs (a broken page chain, a bad tag) instead of letting it reach stderr: it goes into
    one clear error, or nowhere."""
    log = logging.getLogger("tifffile")
    handler, propagate = _Collect(), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def check_page_chain(path: Path, messages: list[str], has_image: bool) -> None:
    """Raise the error tifffile's parse `messages` stand for: a chain of image directories pointing past the end of
    the file is a truncated file (even when the first image survived: later levels or images are lost); no image at
    all is a damaged file, with tifffile's reason."""
    size = path.stat().st_size
    for message in messages:
        offsets = [int(n) for n in re.findall(r"\d+", message) if int(n) >= size]
        if ("offset" in message or "tag list" in message) and (offsets or "requires a buffer" in message):
            where = f": an image directory lies at byte {offsets[0]}" if offsets else ""
            raise SlideReadError(path, f"the file is truncated{where} but the file has {size} bytes"
                                 if offsets else "the file is truncated in the middle of an image directory",
                                 "the download or copy is incomplete; copy it again")
    if not has_image:
        said = f" (tifffile: {messages[0][:160]})" if messages else ""
        raise SlideReadError(path, f"the TIFF holds no readable image{said}", "export or copy the image again")


def open_tiff(path: Path) -> Slide:
    """Open a TIFF-based file with tifffile as a `Slide` (the file handle is kept until `Slide.close`)."""
    import tifffile
    import zarr

    with tifffile_messages() as messages:
        tif = tifffile.TiffFile(path)
        try:
            series = tif.series
            for level in series[0].levels if series else []:
                _ = level.keyframe  # every page of the main image is parsed now, with its messages
        except BaseException:
            tif.close()
            raise
    try:
        check_page_chain(path, messages, bool(series))
        main = series[0]
        check_tiff_series(path, main, what="level 0")  # declared sizes and strip sizes, before any decoding
        key = main.levels[0].keyframe
        meta: dict[str, Any] = {"dtype": str(main.dtype), "axes": main.axes}
        mpp, mpp_y, bits, modality = None, None, None, None
        if tif.is_svs:
            fmt = "aperio-svs"
            mpp, svs_meta = svs_metadata(key.description)  # Aperio states one (square) size
            meta.update(svs_meta)
            if "AppMag" in svs_meta:
                meta["objective_power"] = svs_meta["AppMag"]
        elif tif.is_ome:
            fmt = "ome-tiff"
            mpp, mpp_y = ome_mpp(tif.ome_metadata or ""), ome_mpp(tif.ome_metadata or "", "Y")
            bits = ome_significant_bits(tif.ome_metadata or "")
            modality = ome_modality(tif.ome_metadata or "")
        else:
            fmt = "tiff-pyramid" if len(main.levels) > 1 else "tiff"
        if mpp is None:
            mpp, mpp_y = resolution_mpp(tif, key), resolution_mpp(tif, key, "Y")
        if bits is None and key.bitspersample < 8 * np.dtype(key.dtype).itemsize:
            bits = int(key.bitspersample)  # e.g. 12-bit samples unpacked into uint16
        meta.update(compression=getattr(key.compression, "name", str(key.compression)),
                    tile=list(key.tile) if key.is_tiled else None, photometric=getattr(key.photometric, "name", None))
        check_not_truncated(path, [lvl.keyframe for lvl in main.levels])
        index, planar = plane_index(path, main.levels[0].axes, main.levels[0].shape)
        sample = np.zeros(0)
        if key.dtype != np.uint8 and bits is None:  # the coarsest level's range decides how to scale to 8 bits
            coarsest = zarr.open_array(main.aszarr(level=len(main.levels) - 1), mode="r")
            if coarsest.size <= 2**24:
                sample = np.asarray(coarsest[index])
        icc_tag = key.tags.get("InterColorProfile")
        colour, icc = icc_of(icc_transform(icc_tag.value if icc_tag is not None else None))
        convert = rgb_converter(np.dtype(key.dtype), sample, bits, colour)
        fill = 255 if key.dtype == np.uint8 else 0  # missing tiles of 8-bit slides show as glass
        tag = f"nucseg-{id(tif):x}-{path.name}"
        levels, readers = [], []
        for i, level in enumerate(main.levels):
            z = zarr.open_array(main.aszarr(level=i, fillvalue=fill), mode="r")
            lindex, lplanar = plane_index(path, level.axes, level.shape)
            levels.append(lazy_level(z, lindex, lplanar, convert, f"{tag}-{i}"))
            readers.append(region_reader(z, lindex, lplanar, convert))
        associated = {}
        for j, other in enumerate(series[1:], start=1):
            name = (other.name or "").strip().lower() or f"image{j}"
            try:
                oindex, oplanar = plane_index(path, other.axes, other.shape)
                check_tiff_series(path, other, whole=True, what=f"the associated image {name!r}")
            except UnsupportedFileError:
                continue
            except SlideReadError as err:  # an associated image too large to decode: not offered, the slide is
                meta.setdefault("skipped_associated", {})[name] = err.reason
                continue
            z = zarr.open_array(other.aszarr(level=0), mode="r")
            oconvert = rgb_converter(np.dtype(other.dtype), None, None, colour)
            associated[name] = lazy_level(z, oindex, oplanar, oconvert, f"{tag}-{name}")
        h0, w0 = levels[0].shape[:2]
        downsamples = [1.0] + [round((h0 / lvl.shape[0] + w0 / lvl.shape[1]) / 2, 6) for lvl in levels[1:]]
        meta["levels"] = len(levels)
        square, xy = pixel_size(mpp, mpp_y)
        slide = Slide(path, fmt, levels, downsamples, square, associated, meta, readers, [tif],
                      reader="tifffile", icc=icc, modality=modality,
                      modality_reason="the OME metadata says so" if modality else "", mpp_xy=xy)
        decode_first_tiles(path, readers)
        return slide
    except BaseException:
        tif.close()
        raise
