"""DICOM whole-slide images (VL Whole Slide Microscopy, as PACS archive them) read with wsidicom.

A DICOM WSI is a series of files: one per pyramid level (or several, for concatenations and focal planes) plus
LABEL, OVERVIEW and THUMBNAIL images. It can be given as the folder that holds the series or as any one of its
files; the other files of the same series (SeriesInstanceUID) are found beside it. Levels are read region by
region; the label, the overview (called "macro", as in SVS and OpenSlide) and the thumbnail are associated
images. Microns per pixel come from PixelSpacing; the ICC profile and the illumination (brightfield or
fluorescence) from the OpticalPathSequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import SlideReadError
from nucseg.io._color import icc_of, icc_transform
from nucseg.io.base import (
    Slide,
    as_rgb_uint8,
    decode_first_tiles,
    lazy_image,
    lazy_level,
    one_line,
    pixel_size,
    read_errors,
)
from nucseg.io.limits import check_declared_size

DICOM_SUFFIXES = (".dcm", ".dicom")
#: the SOP class of VL Whole Slide Microscopy images
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


#: files with these suffixes are never sniffed for the DICOM preamble (a folder of tiles stays cheap to list)
_OTHER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms",
                   ".txt", ".json", ".csv", ".geojson", ".xml", ".ini", ".dat", ".zip")


def is_dicom_file(path: Path) -> bool:
    """A .dcm / .dicom file, or another file with the DICOM preamble ("DICM" at byte 128; PACS exports often
    have no suffix)."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in _OTHER_SUFFIXES:
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def folder_dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in `folder` (hidden files skipped), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_dicom_file(p))


def _series_uid(path: Path) -> str:
    import pydicom

    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SOPClassUID"])
    return str(header.get("SeriesInstanceUID", ""))


def series_files(path: Path) -> list[Path]:
    """The files of the one DICOM WSI series that `path` (a folder, or one file of the series) stands for.

    Raises:
        SlideReadError: no DICOM files, or a folder holding several series.
    """
    folder = path if path.is_dir() else path.parent
    files = folder_dicom_files(folder)
    if not files:
        raise SlideReadError(path, "holds no DICOM (.dcm) files", "pass the folder of a DICOM WSI series")
    try:
        uids = {f: _series_uid(f) for f in files}
    except read_errors() as err:
        raise SlideReadError(path, f"a DICOM header cannot be read: {one_line(err)}",
                             "the file is damaged; export or copy the series again") from err
    if path.is_dir():
        series = sorted(set(uids.values()))
        if len(series) > 1:
            raise SlideReadError(path, f"holds {len(series)} DICOM series, not one slide",
                                 "pass one .dcm file of the series you want, or put each series in its own folder")
        return files
    return [f for f in files if uids[f] == uids[path]]


def _illumination(wsi: Any) -> tuple[str | None, str]:
    try:
        paths = wsi.metadata.pyramid.optical_paths or []
    except AttributeError:
        return None, ""
    said = " ".join(code.meaning for p in paths for code in (p.illumination_types or []) if code.meaning)
    if "fluorescence" in said.lower():
        return "fluorescence", f"DICOM illumination: {said}"
    if "brightfield" in said.lower() or "transmission" in said.lower():
        return "brightfield", f"DICOM illumination: {said}"
    return None, ""


def _icc(wsi: Any) -> bytes | None:
    try:
        paths = wsi.metadata.pyramid.optical_paths or []
    except AttributeError:
        return None
    return next((p.icc_profile for p in paths if p.icc_profile), None)


def _reader(wsi: Any, level: int, colour: Any) -> Any:
    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        rgb = as_rgb_uint8(wsi.read_region((x0, y0), level, (x1 - x0, y1 - y0), as_array=True))
        return colour.apply(rgb) if colour is not None else rgb

    return read


def _associated(wsi: Any, name: str, size: tuple[int, int], colour: Any) -> Any:
    def load() -> np.ndarray:
        if name == "label":
            array = wsi.read_label(as_array=True)
        elif name == "macro":
            array = wsi.read_overview(as_array=True)
        else:  # the series' THUMBNAIL instance (wsidicom uses it when one is present at this size)
            array = wsi.read_thumbnail(size, as_array=True)
        rgb = as_rgb_uint8(array)
        return colour.apply(rgb) if colour is not None else rgb

    return load


def open_dicom(path: Path) -> Slide:
    """Open a DICOM WSI series (folder or one of its files) with wsidicom as a `Slide`.

    Raises:
        SlideReadError: no series, several series, or files wsidicom cannot read as a WSI.
    """
    import wsidicom

    files = series_files(path)
    slide_path = path if path.is_dir() else path.parent
    try:
        wsi = wsidicom.WsiDicom.open(files)
    except read_errors() as err:
        raise SlideReadError(path, f"not a readable DICOM whole-slide image: {one_line(err)}",
                             "pass the complete folder of a DICOM WSI series (VL Whole Slide Microscopy)") from err
    try:
        colour, icc = icc_of(icc_transform(_icc(wsi)))
        tag = f"nucseg-dicom-{id(wsi):x}-{slide_path.name}"
        base = wsi.levels[0] if hasattr(wsi.levels, "__getitem__") else next(iter(wsi.levels))
        w0, h0 = int(base.size.width), int(base.size.height)
        check_declared_size(slide_path, h0, w0, what="level 0")
        levels, readers, downsamples = [], [], []
        for lv in sorted(wsi.levels, key=lambda lv: -int(lv.size.width)):
            w, h = int(lv.size.width), int(lv.size.height)
            read = _reader(wsi, int(lv.level), colour)
            readers.append(read)
            tile = (int(lv.tile_size.height), int(lv.tile_size.width))
            levels.append(lazy_level(read, (h, w), tile, f"{tag}-{lv.level}"))
            downsamples.append(round((w0 / w + h0 / h) / 2, 6) if levels[1:] else 1.0)
        associated = {}
        groups = (("label", getattr(wsi, "labels", None)), ("macro", getattr(wsi, "overviews", None)),
                  ("thumbnail", getattr(wsi.pyramid, "thumbnails", None)))
        for name, group in groups:
            if group:
                w, h = int(group[0].size.width), int(group[0].size.height)
                associated[name] = lazy_image(_associated(wsi, name, (w, h), colour), (h, w), f"{tag}-{name}")
        mpp, mpp_xy = pixel_size(wsi.mpp.width, wsi.mpp.height) if wsi.mpp is not None else (None, None)
        modality, reason = _illumination(wsi)
        meta = {"levels": len(levels), "files": len(files), "tile": [int(base.tile_size.width),
                                                                     int(base.tile_size.height)]}
        slide = Slide(slide_path, "dicom", levels, downsamples, mpp, associated, meta, readers, [wsi], mpp_xy=mpp_xy,
                      reader="wsidicom", icc=icc, modality=modality, modality_reason=reason)
        decode_first_tiles(slide_path, readers, "the file is damaged; export or copy the series again")
        return slide
    except BaseException:
        wsi.close()
        raise
