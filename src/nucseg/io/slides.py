"""Open slides and tiles as lazy, multiscale RGB images that know their microns per pixel.

`open_slide` picks the reader by the file's content, not only its name:

- Aperio SVS, OME-TIFF, pyramidal and plain TIFF: tifffile (its Zarr store, one tile at a time);
- Hamamatsu NDPI / VMS, 3DHISTECH MRXS, Leica SCN, Ventana BIF, Philips TIFF, Sakura SVSLIDE, and a generic
  tiled TIFF that tifffile cannot serve: OpenSlide (whatever the file's suffix, when OpenSlide recognises it);
- DICOM WSI, given as the folder of its series or any one of its .dcm files: wsidicom;
- PNG and JPEG tiles: Pillow (decoded whole).

A slide never enters memory whole (DESIGN.md rule 6). Every level is seen as (H, W, 3) uint8 by the one RGB
rule of `nucseg.io.base.as_rgb_uint8`, with the file's ICC profile applied (`nucseg.io._color`).

Errors: a file no reader handles raises `UnsupportedFileError`; a file that should be readable but is not
(missing, empty, truncated, corrupt) raises `SlideReadError` at `open_slide`, with one line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import SlideReadError, UnsupportedFileError
from nucseg.io._color import icc_of, icc_transform, slide_modality
from nucseg.io._dicom import DICOM_SUFFIXES, folder_dicom_files, is_dicom_file
from nucseg.io.base import (
    FIX_DAMAGED,
    PLAUSIBLE_MPP,
    READ_ERRORS,
    Slide,
    access_failure,
    as_rgb_uint8,
    pixel_size,
    read_errors,
    read_failure,
)
from nucseg.io.limits import MAX_WHOLE_IMAGE_PIXELS  # `read_image` and the PNG / JPEG reader refuse more

__all__ = ["PLAUSIBLE_MPP", "READ_ERRORS", "SUPPORTED_SUFFIXES", "Slide", "as_rgb_uint8", "is_supported",
           "input_kind", "list_images", "open_slide", "read_image", "require_brightfield", "slide_modality", "suffix_of"]

TIFF_SUFFIXES = (".svs", ".tif", ".tiff")
PIL_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
#: formats only OpenSlide reads (by suffix; TIFF-based ones with another suffix are found by content)
OPENSLIDE_SUFFIXES = (".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".svslide")
#: vendors whose TIFF-like files go to OpenSlide even with a .tif / .tiff / .svs suffix
OPENSLIDE_VENDORS = ("hamamatsu", "mirax", "leica", "ventana", "philips", "sakura")
#: file name endings the readers handle (".ome.tif" files end in ".tif" too)
SUPPORTED_SUFFIXES = (".svs", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".png", ".jpg", ".jpeg",
                      *OPENSLIDE_SUFFIXES, *DICOM_SUFFIXES)
FLUORESCENCE_FIX = "--allow-fluorescence"


# ---------------------------------------------------------------------------------------------- helpers


def suffix_of(path: str | Path) -> str:
    """The handled suffix of `path` in lower case (".ome.tif" for OME-TIFF), or its last suffix."""
    name = Path(path).name.lower()
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def is_supported(path: str | Path) -> bool:
    """Whether a reader handles the path by its name (a folder: whether it holds DICOM files); nothing is decoded."""
    path = Path(path)
    if path.is_dir():
        return bool(folder_dicom_files(path))
    return suffix_of(path) in SUPPORTED_SUFFIXES


def is_dicom_folder(path: str | Path) -> bool:
    """Whether `path` is a folder holding DICOM files: one DICOM WSI, one input (not a folder of tiles)."""
    path = Path(path)
    return path.is_dir() and bool(folder_dicom_files(path))


def list_images(folder: str | Path) -> list[Path]:
    """The inputs in `folder`, sorted by name: files with a supported suffix (hidden files skipped), and DICOM WSI
    as one input each: the folder itself when it holds .dcm files (they are one series, not separate images),
    and each sub-folder that does. Other sub-folders are not searched.

    Raises:
        SlideReadError: `folder` is not a folder, or may not be read (permissions).
    """
    folder = Path(folder)
    if input_kind(folder) != "folder":
        raise SlideReadError(folder, "not a folder", "pass a folder of image tiles")
    try:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        found = [p for p in entries if p.is_file() and is_supported(p) and suffix_of(p) not in DICOM_SUFFIXES]
        dicom_here = is_dicom_folder(folder)
    except OSError as err:
        raise access_failure(folder, err) from err
    for p in entries:
        try:
            if is_dicom_folder(p):
                found.append(p)
        except OSError:  # a sub-folder we may not look into holds no input we could read
            continue
    if dicom_here:
        found.append(folder)
    return sorted(found)


def input_kind(path: str | Path) -> str | None:
    """"folder", "file" or None (no such path) for an input path.

    Raises:
        SlideReadError: the path may not be looked at (a folder above it is unreadable), in one line.
    """
    path = Path(path)
    try:
        if path.is_dir():
            return "folder"
        return "file" if path.exists() else None
    except OSError as err:
        raise access_failure(path, err) from err


def require_brightfield(slide: Slide, allow_fluorescence: bool = False) -> None:
    """Refuse a fluorescence slide, for which the default (brightfield H&E) model would find nonsense.

    Raises:
        InvalidInputError: the slide is fluorescence and `allow_fluorescence` is False.
    """
    from nucseg.errors import InvalidInputError

    kind, reason = slide_modality(slide)
    if kind == "fluorescence" and not allow_fluorescence:
        raise InvalidInputError(fluorescence_refusal(slide.path, reason, f"pass {FLUORESCENCE_FIX}"))


def fluorescence_refusal(what: Any, reason: str, fix: str) -> str:
    """The one message refusing a fluorescence image (the CLI's and the viewer's): `fix` says how to go on."""
    return (f"{what} looks like a fluorescence slide ({reason}); the default model segments nuclei in brightfield "
            f"H&E - {fix} to segment it anyway, or use a model fine-tuned on fluorescence")


# ------------------------------------------------------------------------------------------- PNG / JPEG


def _pil_array(path: Path, max_pixels: int | None = None) -> tuple[np.ndarray, dict[str, Any], float | None]:
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
    except UnidentifiedImageError as err:
        raise SlideReadError(path, f"not a {PIL_FORMATS[suffix_of(path)].upper()} image (Pillow cannot identify it)",
                             FIX_DAMAGED) from err
    with im:
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise SlideReadError(path, f"{im.width} x {im.height} px is too large to read whole",
                                 "open it with open_slide and read regions, or convert it to a pyramidal TIFF")
        im.load()
        meta: dict[str, Any] = {"mode": im.mode, "pil_format": im.format}
        dpi = im.info.get("dpi")
        mpp_x, mpp_y = (25400.0 / float(d) if d and float(d) > 0 else None for d in (tuple(dpi) if dpi else (0, 0)))
        icc_bytes = im.info.get("icc_profile")
        if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
            im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
        array = np.asarray(im)
    if im.mode == "LA":
        array = array[..., 0]
    rgb = as_rgb_uint8(array, str(path))
    colour, icc = icc_of(icc_transform(icc_bytes))
    if icc is not None:
        meta["icc"] = icc
    meta["mpp_xy"] = pixel_size(mpp_x, mpp_y)[1]
    return (colour.apply(rgb) if colour is not None else rgb), meta, pixel_size(mpp_x, mpp_y)[0]


def _open_pil(path: Path) -> Slide:
    array, meta, mpp = _pil_array(path, MAX_WHOLE_IMAGE_PIXELS)  # decoded whole: its declared size is checked first
    mpp_xy = meta.pop("mpp_xy", None)
    return Slide(path, PIL_FORMATS[suffix_of(path)], [array], [1.0], mpp, {}, meta, reader="pillow",
                 icc=meta.pop("icc", None), mpp_xy=mpp_xy)


# ------------------------------------------------------------------------------------------------ entry


def _check_path(path: Path) -> None:
    kind = input_kind(path)
    if kind is None:
        raise SlideReadError(path, "no such file", "check the path")
    try:
        if kind == "folder":
            if is_dicom_folder(path):
                return
            n = len(list_images(path))
            reason = f"is a folder of {n} image files, not one image" if n else "is a folder with no image files"
            raise SlideReadError(path, reason, "pass one image file (folders: nucseg.io.slides.list_images)")
        if path.stat().st_size == 0:
            raise SlideReadError(path, "the file is empty (0 bytes)", "the download or copy failed; copy it again")
        with open(path, "rb"):  # may we read it? (a permission error is not a damaged file)
            pass
    except OSError as err:
        raise access_failure(path, err) from err


def _unsupported(path: Path) -> UnsupportedFileError:
    return UnsupportedFileError(
        f"{path}: files ending in {suffix_of(path) or '(no suffix)'} are not supported and no reader recognises "
        f"its content; nucseg reads {', '.join(SUPPORTED_SUFFIXES)} and DICOM WSI folders (convert other formats "
        "to OME-TIFF, e.g. with QuPath or bfconvert)")


def _open_by_content(path: Path) -> Slide:
    from nucseg.io._openslide import detect_vendor, open_openslide

    if path.is_dir() or is_dicom_file(path):
        from nucseg.io._dicom import open_dicom

        return open_dicom(path)
    suffix = suffix_of(path)
    if suffix in PIL_FORMATS:
        return _open_pil(path)
    if suffix in OPENSLIDE_SUFFIXES:
        return open_openslide(path)
    vendor = detect_vendor(path)
    if suffix not in TIFF_SUFFIXES and suffix not in (".ome.tif", ".ome.tiff"):
        if vendor is None:
            raise _unsupported(path)
        return open_openslide(path)
    if vendor in OPENSLIDE_VENDORS:
        return open_openslide(path)
    from nucseg.io._tiff import open_tiff

    try:
        return open_tiff(path)
    except (SlideReadError, *read_errors()) as err:
        if vendor is None:  # OpenSlide does not know it either: tifffile's reason stands
            raise
        try:  # a tiled TIFF that tifffile cannot decode but OpenSlide recognises
            return open_openslide(path)
        except (SlideReadError, *read_errors()):
            raise err from None


def open_slide(path: str | Path) -> Slide:
    """Open a slide, tile or DICOM WSI folder lazily; one tile per level is decoded now so that broken files fail
    here. Close it (or use it as a context manager) to release the file.

    Raises:
        UnsupportedFileError: no reader handles the file, or the image is a stack.
        SlideReadError: the file is missing, empty, truncated or cannot be decoded, or memory ran out.
    """
    path = Path(path)
    _check_path(path)
    try:
        return _open_by_content(path)
    except (SlideReadError, UnsupportedFileError):
        raise
    except (*read_errors(), MemoryError) as err:
        raise read_failure(path, err) from err


def read_image(path: str | Path) -> np.ndarray:
    """Read a whole tile (PNG, JPEG, TIFF, or a small slide's level 0) as (H, W, 3) uint8.

    Raises:
        UnsupportedFileError: the suffix is not handled.
        SlideReadError: the file cannot be read, or has more than `MAX_WHOLE_IMAGE_PIXELS` pixels (use
            `open_slide` and `Slide.read_region` for slides).
    """
    path = Path(path)
    _check_path(path)
    if suffix_of(path) in PIL_FORMATS:
        try:
            return _pil_array(path, MAX_WHOLE_IMAGE_PIXELS)[0]
        except SlideReadError:
            raise
        except (*read_errors(), MemoryError) as err:
            raise read_failure(path, err) from err
    with open_slide(path) as slide:
        h, w = slide.shape
        if h * w > MAX_WHOLE_IMAGE_PIXELS:
            raise SlideReadError(path, f"level 0 is {w} x {h} px, too large to read whole",
                                 "open it with open_slide and read regions with Slide.read_region")
        return slide.read_region(0, 0, 0, h, w)
