"""Open H&E slides and tiles as lazy, multiscale RGB images that know their microns per pixel.

Formats: Aperio SVS, OME-TIFF (SubIFD pyramids), generic pyramidal TIFF (SubIFDs or pages that shrink),
plain TIFF, PNG and JPEG. TIFF-based files are read through tifffile's Zarr store, one tile at a time, so a
slide never enters memory whole (DESIGN.md rule 6); PNG and JPEG tiles are decoded whole.

Every level, whatever the file holds (grey, RGBA, 16-bit...), is seen as (H, W, 3) uint8: grey is repeated
into three channels, an alpha channel is dropped, and other dtypes are scaled to 0..255 (16-bit data by the
smallest of 8, 10, 12, 14 or 16 bits that holds the coarsest level's maximum, floats in [0, 1] by 255).

Errors: a file whose suffix is not handled raises `UnsupportedFileError`; a file that should be readable but is
not (missing, empty, truncated, corrupt) raises `SlideReadError` at `open_slide`, with one line naming the file.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError, SlideReadError, UnsupportedFileError

#: file name endings the readers handle (".ome.tif" files end in ".tif" too)
SUPPORTED_SUFFIXES = (".svs", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".svs", ".tif", ".tiff")
PIL_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
#: `read_image` refuses images with more pixels than this (use `open_slide` and `read_region` instead)
MAX_WHOLE_IMAGE_PIXELS = 12000 * 12000
#: microns per pixel outside this range come from a screen / print resolution, not a microscope: ignored
PLAUSIBLE_MPP = (0.05, 20.0)
#: what tifffile, imagecodecs, Pillow and zarr raise on files they cannot parse or decode
READ_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError, KeyError, IndexError, TypeError,
                                                EOFError, struct.error, zlib.error, MemoryError)


def _read_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    return (*READ_ERRORS, Image.DecompressionBombError)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) < 200 else text[:197] + "..."


@dataclasses.dataclass
class Slide:
    """A slide or tile: lazy pyramid levels seen as (H, W, 3) uint8, with microns per pixel when known.

    Attributes:
        path: the file.
        format: "aperio-svs", "ome-tiff", "tiff-pyramid", "tiff", "png" or "jpeg".
        levels: lazy (dask) arrays of shape (H, W, 3) uint8, level 0 at full resolution (numpy for PNG / JPEG).
        downsamples: level-0 pixels per pixel of each level (1.0 for level 0).
        mpp: microns per pixel at level 0, or None when the file does not say (plausibly).
        associated: images that are not pyramid levels (SVS "thumbnail", "label", "macro"; other OME images),
            lazy (H, W, 3) uint8.
        metadata: JSON-able facts from the file (scanner magnification, compression, tile size, ...).
    """

    path: Path
    format: str
    levels: list[Any]
    downsamples: list[float]
    mpp: float | None = None
    associated: dict[str, Any] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    _readers: list[Any] = dataclasses.field(default_factory=list, repr=False, compare=False)
    _handles: list[Any] = dataclasses.field(default_factory=list, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 (height, width)."""
        return self.level_shape(0)

    @property
    def is_pyramid(self) -> bool:
        """Whether the file holds more than one resolution level."""
        return len(self.levels) > 1

    def level_shape(self, level: int) -> tuple[int, int]:
        """(height, width) of `level`."""
        shape = self.levels[self._check_level(level)].shape
        return int(shape[0]), int(shape[1])

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel of `level`, or None when the slide's mpp is unknown."""
        return None if self.mpp is None else self.mpp * self.downsamples[self._check_level(level)]

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """The coarsest level whose pixels are at least as fine as `target_mpp`, with 5% slack.

        A level qualifies when its mpp is at most ``target_mpp * 1.05``, so a model trained at 0.5 µm/px reads
        a 0.52 µm/px level rather than one four times finer. Level 0 when no level qualifies (the slide is
        coarser than the target) or when the slide's mpp is unknown.
        """
        if not self.mpp or target_mpp <= 0:
            return 0
        fine = [i for i, d in enumerate(self.downsamples) if self.mpp * d <= target_mpp * 1.05]
        return max(fine, key=lambda i: self.downsamples[i]) if fine else 0

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels of `level` in rows y..y+h and columns x..x+w (level coordinates), as (h, w, 3) uint8.

        Parts outside the image are white (255), like glass.

        Raises:
            InvalidInputError: a level that does not exist or an empty region.
            SlideReadError: the file's pixels there cannot be decoded (a corrupt tile).
        """
        level = self._check_level(level)
        if h <= 0 or w <= 0:
            raise InvalidInputError(f"region height and width must be positive, got {h} x {w}")
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        H, W = self.level_shape(level)
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
        if y1 > y0 and x1 > x0:
            try:
                if self._readers:
                    pixels = self._readers[level](y0, y1, x0, x1)
                else:
                    pixels = np.asarray(self.levels[level][y0:y1, x0:x1])
            except READ_ERRORS as err:
                raise SlideReadError(self.path, f"pixels at level {level}, y={y0} x={x0} cannot be decoded: "
                                     f"{_one_line(err)}", "the file is corrupt; export it again") from err
            out[y0 - y : y1 - y, x0 - x : x1 - x] = pixels
        return out

    def close(self) -> None:
        """Close the file; the lazy levels cannot be read afterwards."""
        for handle in self._handles:
            handle.close()
        self._handles.clear()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_level(self, level: int) -> int:
        if not 0 <= int(level) < len(self.levels):
            raise InvalidInputError(f"level {level} does not exist; {self.path.name} has levels 0..{len(self.levels) - 1}")
        return int(level)


# ---------------------------------------------------------------------------------------------- helpers


def suffix_of(path: str | Path) -> str:
    """The handled suffix of `path` in lower case (".ome.tif" for OME-TIFF), or its last suffix."""
    name = Path(path).name.lower()
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def is_supported(path: str | Path) -> bool:
    """Whether the file name ends in a suffix the readers handle (the file itself is not opened)."""
    return suffix_of(path) in SUPPORTED_SUFFIXES


def list_images(folder: str | Path) -> list[Path]:
    """Files in `folder` (not its sub-folders) with a supported suffix, sorted by name; hidden files are skipped.

    Raises:
        SlideReadError: `folder` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SlideReadError(folder, "not a folder", "pass a folder of image tiles")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_supported(p))


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not np.isfinite(mpp) or not PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        return None
    return round(float(mpp), 6)


def _output_scale(dtype: np.dtype, sample: np.ndarray) -> float:
    """Factor that maps this dtype's values into 0..255 (see the module docstring)."""
    if dtype == np.uint8:
        return 1.0
    if not sample.size:  # not sampled (too large): assume the dtype's full range, floats in [0, 1]
        return 255.0 if np.issubdtype(dtype, np.floating) else 255.0 / (2 ** (8 * dtype.itemsize) - 1)
    vmax = float(np.nanmax(sample))
    if np.issubdtype(dtype, np.floating) and vmax <= 1.0:
        return 255.0
    bits = next((b for b in (8, 10, 12, 14, 16, 32) if vmax < 2**b), 64)
    return 255.0 / (2**bits - 1)


def _to_rgb_uint8(block: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(h, w) or (h, w, c) of any dtype -> (h, w, 3) uint8 (grey repeated, alpha and extra channels dropped)."""
    if block.ndim == 2:
        block = block[..., None]
    block = block[..., :3] if block.shape[2] >= 3 else block[..., :1]
    if block.dtype != np.uint8:
        block = np.clip(np.nan_to_num(block.astype(np.float32)) * scale + 0.5, 0, 255).astype(np.uint8)
    if block.shape[2] == 1:
        block = np.repeat(block, 3, axis=2)
    return block


def _converter(dtype: np.dtype, sample: np.ndarray) -> Any:
    return functools.partial(_to_rgb_uint8, scale=_output_scale(dtype, sample))


def _open_tiff(path: Path) -> Slide:
    from nucseg.io._tiff import open_tiff

    slide = open_tiff(path, Slide, _converter)
    slide.mpp = _plausible(slide.mpp)
    return slide


# ------------------------------------------------------------------------------------------- PNG / JPEG


def _pil_array(path: Path, max_pixels: int | None = None) -> tuple[np.ndarray, dict[str, Any], float | None]:
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
    except UnidentifiedImageError as err:
        raise SlideReadError(path, f"not a {PIL_FORMATS[suffix_of(path)].upper()} image (Pillow cannot identify it)",
                             "the file is damaged or not what its name says; export or copy it again") from err
    with im:
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise SlideReadError(path, f"{im.width} x {im.height} px is too large to read whole",
                                 "open it with open_slide and read regions, or convert it to a pyramidal TIFF")
        im.load()
        meta = {"mode": im.mode, "pil_format": im.format}
        dpi = im.info.get("dpi")
        mpp = 25400.0 / float(dpi[0]) if dpi and float(dpi[0]) > 0 else None
        if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
            im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
        array = np.asarray(im)
    if im.mode == "LA":
        array = array[..., 0]
    scale = _output_scale(array.dtype, array)
    return _to_rgb_uint8(array, scale), meta, _plausible(mpp)


def _open_pil(path: Path) -> Slide:
    array, meta, mpp = _pil_array(path)
    return Slide(path, PIL_FORMATS[suffix_of(path)], [array], [1.0], mpp, {}, meta)


# ------------------------------------------------------------------------------------------------ entry


def _check_path(path: Path) -> None:
    if not path.exists():
        raise SlideReadError(path, "no such file", "check the path")
    if path.is_dir():
        n = len(list_images(path))
        reason = f"is a folder of {n} image files, not one image" if n else "is a folder with no image files"
        raise SlideReadError(path, reason, "pass one image file (folders: nucseg.io.slides.list_images)")
    if not is_supported(path):
        raise UnsupportedFileError(
            f"{path}: files ending in {suffix_of(path) or '(no suffix)'} are not supported; nucseg reads "
            f"{', '.join(SUPPORTED_SUFFIXES)} (convert other formats to OME-TIFF, e.g. with QuPath or bfconvert)")
    if path.stat().st_size == 0:
        raise SlideReadError(path, "the file is empty (0 bytes)", "the download or copy failed; copy it again")


def open_slide(path: str | Path) -> Slide:
    """Open a slide or tile lazily; one tile per level is decoded now so that broken files fail here.

    Raises:
        UnsupportedFileError: the suffix is not one of `SUPPORTED_SUFFIXES`, or the image is a stack.
        SlideReadError: the file is missing, empty, truncated or cannot be decoded.
    """
    path = Path(path)
    _check_path(path)
    fix = "the file is damaged or not what its name says; export or copy it again"
    try:
        return _open_pil(path) if suffix_of(path) in PIL_FORMATS else _open_tiff(path)
    except (SlideReadError, UnsupportedFileError):
        raise
    except _read_errors() as err:
        raise SlideReadError(path, _one_line(err), fix) from err


def read_image(path: str | Path) -> np.ndarray:
    """Read a whole tile (PNG, JPEG or TIFF) as (H, W, 3) uint8; level 0 for pyramids.

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
        except _read_errors() as err:
            raise SlideReadError(path, _one_line(err), "the file is damaged; export or copy it again") from err
    with open_slide(path) as slide:
        h, w = slide.shape
        if h * w > MAX_WHOLE_IMAGE_PIXELS:
            raise SlideReadError(path, f"level 0 is {w} x {h} px, too large to read whole",
                                 "open it with open_slide and read regions with Slide.read_region")
        return slide.read_region(0, 0, 0, h, w)
