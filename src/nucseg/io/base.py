"""What every slide reader shares: the `Slide` interface, the errors a reader may meet, and the one RGB rule.

The readers (`_tiff` for tifffile, `_openslide`, `_dicom` for wsidicom, and Pillow tiles in `slides`) import
this module and never each other; `nucseg.io.slides.open_slide` picks the reader by the file's content.

RGB rule (`as_rgb_uint8`): every image the models see is (H, W, 3) uint8. Grey is repeated into three
channels, an alpha channel is dropped; integer data wider than 8 bits is scaled by its full-scale value: the
file's significant bits where the file says them (TIFF BitsPerSample, OME SignificantBits, DICOM BitsStored),
else the smallest of 8, 10, 12, 14, 16 or 32 bits that holds the data's maximum (so 12-bit data in 16-bit
samples spans 0..255 and does not come out nearly black); floats in [0, 1] are multiplied by 255, other floats
are taken as 0..255.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError, SlideReadError

#: microns per pixel outside this range come from a screen / print resolution, not a microscope: ignored in a
#: file's metadata (`plausible_mpp`), refused where a person or a model config gives them (`check_mpp`)
PLAUSIBLE_MPP = (0.05, 20.0)
#: errors that mean "these bytes cannot be parsed or decoded", whichever library met them (tifffile, zarr and
#: Pillow raise ValueError for an unknown compression or a corrupt header; `read_errors` adds the libraries' own
#: classes). TypeError, KeyError, IndexError and MemoryError are not here: they are bugs or a lack of memory,
#: never proof of a corrupt file (MemoryError gets its own message from `read_failure`).
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, struct.error, zlib.error)
FIX_DAMAGED = "the file is damaged or not what its name says; export or copy it again"
FIX_MEMORY = "close other programs, read a smaller region or a coarser level, or use a machine with more memory"
FIX_ACCESS = "check that you may read it: its permissions and those of the folders above it"


@functools.cache
def read_errors() -> tuple[type[BaseException], ...]:
    """`READ_ERRORS` plus the parse / decode errors of the imaging libraries (imported on first use)."""
    errors: list[type[BaseException]] = list(READ_ERRORS)
    try:
        from PIL import Image

        errors.append(Image.DecompressionBombError)
    except ImportError:  # pragma: no cover - Pillow is a dependency
        pass
    try:
        import tifffile

        errors.append(tifffile.TiffFileError)
    except ImportError:  # pragma: no cover
        pass
    try:  # each codec's error (Jpeg8Error, ZlibError, ...): a tile whose compressed bytes cannot be decoded
        import imagecodecs
    except ImportError:  # pragma: no cover
        imagecodecs = None
    for name in dir(imagecodecs) if imagecodecs is not None else ():
        if name.endswith("Error"):  # imagecodecs loads its codecs (and their errors) lazily: getattr loads them
            with contextlib.suppress(ImportError, AttributeError):
                value = getattr(imagecodecs, name)
                if isinstance(value, type) and issubclass(value, RuntimeError):
                    errors.append(value)
    for module, name in (("openslide", "OpenSlideError"), ("pydicom.errors", "InvalidDicomError"),
                         ("wsidicom.errors", "WsiDicomError"), ("wsidicom.errors", "WsiDicomNotFoundError"),
                         ("wsidicom.errors", "WsiDicomFileError"), ("zarr.errors", "BaseZarrError")):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(getattr(__import__(module, fromlist=[name]), name))
    return tuple(dict.fromkeys(errors))


def one_line(err: BaseException) -> str:
    """An exception's message on one line of at most 200 characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) < 200 else text[:197] + "..."


def decode_first_tiles(path: Any, readers: list[Any], fix: str = "the file is damaged; export or copy it again") -> None:
    """Decode one pixel of each level now (`readers[i](y0, y1, x0, x1)`), so that a damaged file fails when it is
    opened, with one clear line, rather than half-way through a run.

    Raises:
        SlideReadError: a level's first tile cannot be decoded.
    """
    for i, read in enumerate(readers):
        try:
            read(0, 1, 0, 1)
        except read_errors() as err:
            raise SlideReadError(path, f"the first tile of level {i} cannot be decoded ({one_line(err)})", fix) from err


def access_failure(path: Any, err: OSError) -> SlideReadError:
    """The `SlideReadError` for a file or folder this process may not read (or look into): permissions, not damage."""
    reason = "permission denied" if isinstance(err, PermissionError) else (err.strerror or one_line(err))
    return SlideReadError(path, reason, FIX_ACCESS)


def compute_here(array: Any) -> np.ndarray:
    """The pixels of a lazy (dask) array or an array-like, computed in this thread.

    Inside a Dask distributed task, dask's default scheduler is the worker's client: ``np.asarray(lazy)`` would
    send the graph, which holds the slide's open file handle, to the scheduler ("Could not serialize object of
    type _HLGExprSequence"). A slide's pixels are always read where the slide is open.
    """
    compute = getattr(array, "compute", None)
    return np.asarray(compute(scheduler="synchronous") if compute is not None else array)


def read_failure(path: Path, err: BaseException, where: str = "") -> SlideReadError:
    """The `SlideReadError` for an error met while reading `path` (`where`: e.g. "pixels at level 0, y=0 x=0"):
    lack of memory and lack of permission say so; anything else is a damaged file."""
    if isinstance(err, PermissionError):
        return access_failure(getattr(err, "filename", None) or path, err)
    if isinstance(err, MemoryError):
        return SlideReadError(path, f"not enough memory to decode {where or 'the image'}", FIX_MEMORY)
    reason = f"{where} cannot be decoded: {one_line(err)}" if where else one_line(err)
    return SlideReadError(path, reason, FIX_DAMAGED)


def plausible_mpp(mpp: float | None) -> float | None:
    """`mpp` rounded to 6 decimals, or None when missing or outside `PLAUSIBLE_MPP`."""
    if mpp is None or not np.isfinite(mpp) or not PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        return None
    return round(float(mpp), 6)


#: X and Y pixel sizes within this relative difference are one square size (scanners round them differently)
SQUARE_TOLERANCE = 0.02


def pixel_size(x: float | None, y: float | None) -> tuple[float | None, tuple[float, float] | None]:
    """A file's X and Y microns per pixel as (the square pixel size or None, (x, y) or None).

    Both are kept only when plausible (`plausible_mpp`); a missing Y is taken as X (most formats state one size).
    Pixels whose sizes differ by more than `SQUARE_TOLERANCE` are not square: no single size is claimed for them
    (None), and segmenting them is refused (`require_square_pixels`), so no area is computed from one side alone.
    """
    x, y = plausible_mpp(x), plausible_mpp(y if y is not None else x)
    if x is None or y is None:
        return None, None
    if abs(x - y) > SQUARE_TOLERANCE * min(x, y):
        return None, (x, y)
    return (x if x == y else round((x + y) / 2, 6)), (x, y)


def require_square_pixels(source: Any, name: Any = None) -> None:
    """Refuse to segment (or measure) a source whose pixels are not square (its ``mpp_xy``, when it has one).

    nucseg's model, tiles and measurements take pixels as square. Refusing is the chosen rule (resampling a slide
    to square pixels is one command away, and done once rather than at every run): see docs/FORMATS.md.

    Raises:
        InvalidInputError: one line with both sizes and the command that makes the pixels square.
    """
    xy = getattr(source, "mpp_xy", None)
    if not xy or pixel_size(*xy)[0] is not None:
        return
    x, y = xy
    fine = min(x, y)
    where = name if name is not None else getattr(source, "path", "the image")
    raise InvalidInputError(
        f"{where}: its pixels are not square ({x:g} µm wide, {y:g} µm high); nucseg segments and measures square "
        f"pixels - resample it to {fine:g} µm square pixels first, e.g. `vips resize IN OUT {x / fine:g} --vscale "
        f"{y / fine:g}`")


def check_mpp(mpp: Any, what: str = "--mpp") -> float:
    """A pixel size a person or a model config gives, as a float: refused unless it lies in `PLAUSIBLE_MPP`
    (the one range for metadata, options and model configs; 1e9, inf, 1e-9 or a negative size never reach the
    engine, where they would run out of memory or divide by zero).

    Args:
        mpp: the value given.
        what: what to call it in the message ("--mpp", "the model's mpp in ...").

    Raises:
        InvalidInputError: not a number, or outside `PLAUSIBLE_MPP`.
    """
    lo, hi = PLAUSIBLE_MPP
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(mpp, bool) or not np.isfinite(value) or not lo <= value <= hi:
        raise InvalidInputError(f"{what} {mpp!r}: microns per pixel must lie between {lo:g} and {hi:g} (40x is about "
                                "0.25, 20x about 0.5)")
    return value


# ---------------------------------------------------------------------------------------------- RGB rule


#: a pyramid level whose pixels are at most this much coarser than wanted still counts as fine enough
LEVEL_SLACK = 1.05


def best_level(downsamples: Sequence[float], mpp: float | None, target_mpp: float) -> int:
    """The coarsest pyramid level whose pixels are at least as fine as `target_mpp`, with `LEVEL_SLACK`: the one
    level rule for every pyramid (slides, napari layers, the engine's reads).

    A level qualifies when its mpp is at most ``target_mpp * 1.05``, so a model trained at 0.5 µm/px reads a
    0.52 µm/px level rather than one four times finer. Level 0 when no level qualifies (the image is coarser than
    the target) or when its mpp is unknown.

    Args:
        downsamples: level-0 pixels per pixel of each level, finest (1.0) first.
        mpp: microns per pixel of level 0, or None.
        target_mpp: the resolution wanted.
    """
    if not mpp or target_mpp <= 0:
        return 0
    fine = [i for i, d in enumerate(downsamples) if mpp * d <= target_mpp * LEVEL_SLACK]
    return max(fine, key=lambda i: downsamples[i]) if fine else 0


def full_scale(dtype: np.dtype, sample: np.ndarray | None = None, bits: int | None = None) -> float:
    """The value that maps to 255 for data of `dtype` (see the module docstring).

    Args:
        dtype: the data's dtype.
        sample: data (e.g. a coarse level) whose maximum picks the bit depth when `bits` is not known; None or
            empty means "not sampled": the dtype's whole range (floats: [0, 1]).
        bits: significant bits per sample as the file states them, when it does.
    """
    dtype = np.dtype(dtype)
    if dtype in (np.dtype(np.uint8), np.dtype(bool)):
        return 255.0
    if np.issubdtype(dtype, np.floating):
        if sample is None or not sample.size:
            return 1.0
        return 1.0 if float(np.nanmax(sample)) <= 1.0 else 255.0
    if bits and 0 < bits <= 8 * dtype.itemsize:
        return float(2**bits - 1)
    if sample is None or not sample.size:
        return float(2 ** (8 * dtype.itemsize) - 1)
    vmax = float(np.max(sample))
    found = next((b for b in (8, 10, 12, 14, 16, 32) if vmax < 2**b), 64)
    return float(2**found - 1)


def as_rgb_uint8(image: Any, name: str = "image", max_value: float | None = None) -> np.ndarray:
    """Check and convert an image to (H, W, 3) uint8, with an error a person can act on.

    Args:
        image: (H, W), (H, W, 1), (H, W, 2) grey + alpha, (H, W, 3) RGB or (H, W, 4) RGBA, of any numeric dtype.
        name: what to call the image in error messages.
        max_value: the value that maps to 255 (`full_scale`); None infers it from this image's own data. Pass it
            when converting a slide block by block, so that every block is scaled alike.

    Raises:
        InvalidInputError: another shape, or a dtype that is not numeric.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise InvalidInputError(f"{name} has shape {image.shape}; expected an RGB image (height, width, 3) - "
                                "for a stack or a multichannel image, pick one RGB plane first")
    if image.dtype == bool:  # a 1-bit (bilevel) image: black and white
        image = image.astype(np.uint8) * np.uint8(255)
    if not np.issubdtype(image.dtype, np.number):
        raise InvalidInputError(f"{name} has dtype {image.dtype}; expected 8- or 16-bit RGB, or floats in [0, 1]")
    image = image[..., :3] if image.shape[2] >= 3 else image[..., :1]
    if image.dtype != np.uint8:
        top = max_value if max_value else full_scale(image.dtype, image)
        scaled = np.nan_to_num(image.astype(np.float32)) * np.float32(255.0 / top) + np.float32(0.5)
        image = np.clip(scaled, 0, 255).astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


def rgb_converter(dtype: np.dtype, sample: np.ndarray | None = None, bits: int | None = None,
                  colour: Any = None) -> Any:
    """``convert(block) -> (h, w, 3) uint8`` with one scale for the whole slide, then the ICC transform if any.

    Args:
        dtype, sample, bits: as in `full_scale`.
        colour: an `nucseg.io._color.IccTransform` (or None) applied after the conversion.
    """
    top = full_scale(dtype, sample, bits)

    def convert(block: np.ndarray) -> np.ndarray:
        rgb = as_rgb_uint8(block, max_value=top)
        return colour.apply(rgb) if colour is not None else rgb

    return convert


# ----------------------------------------------------------------------------------------------- Slide


@dataclasses.dataclass
class Slide:
    """A slide or tile: lazy pyramid levels seen as (H, W, 3) uint8, with microns per pixel when known.

    Attributes:
        path: the file (or, for DICOM WSI, the folder of the series).
        format: "aperio-svs", "ome-tiff", "tiff-pyramid", "tiff", "png", "jpeg", "dicom", or the OpenSlide
            vendor for files OpenSlide reads ("hamamatsu", "mirax", "leica", "philips", "ventana", ...).
        levels: lazy (dask) arrays of shape (H, W, 3) uint8, level 0 at full resolution (numpy for PNG / JPEG).
        downsamples: level-0 pixels per pixel of each level (1.0 for level 0).
        mpp: microns per pixel at level 0, or None when the file does not say (plausibly).
        associated: images that are not pyramid levels ("thumbnail", "label", "macro"; other OME images),
            lazy (H, W, 3) uint8; read one whole with `read_associated`.
        metadata: JSON-able facts from the file (scanner magnification, compression, tile size, ...).
        reader: the library that reads the pixels: "tifffile", "openslide", "wsidicom" or "pillow".
        icc: the colour profile the file carries: ``{"description", "applied"}`` (applied is False when the
            profile is sRGB already, so the transform would change nothing), or None when it carries none.
        modality: "brightfield" or "fluorescence" when the file's metadata says so, else None
            (see `nucseg.io._color.slide_modality`, which also looks at the pixels).
        mpp_xy: (X, Y) microns per pixel at level 0 as the file states them, or None; `mpp` is None when they
            differ (pixels that are not square: `pixel_size`, `require_square_pixels`).
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
    reader: str = "tifffile"
    icc: dict[str, Any] | None = None
    modality: str | None = None
    modality_reason: str = ""
    mpp_xy: tuple[float, float] | None = None

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
        """The coarsest level whose pixels are at least as fine as `target_mpp` (`best_level`)."""
        return best_level(self.downsamples, self.mpp, target_mpp)

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels of `level` in rows y..y+h and columns x..x+w (level coordinates), as (h, w, 3) uint8.

        Parts outside the image are white (255), like glass.

        Raises:
            InvalidInputError: a level that does not exist or an empty region.
            SlideReadError: the file's pixels there cannot be decoded (a corrupt tile), or memory ran out.
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
                    pixels = compute_here(self.levels[level][y0:y1, x0:x1])
            except (*read_errors(), MemoryError) as err:
                raise read_failure(self.path, err, f"pixels at level {level}, y={y0} x={x0}") from err
            out[y0 - y : y1 - y, x0 - x : x1 - x] = pixels
        return out

    def read_associated(self, name: str) -> np.ndarray:
        """One associated image ("label", "macro", "thumbnail", ...) whole, as (H, W, 3) uint8.

        Raises:
            InvalidInputError: the slide has no associated image of that name.
            SlideReadError: its pixels cannot be decoded.
        """
        if name not in self.associated:
            have = ", ".join(self.associated) or "none"
            raise InvalidInputError(f"{self.path.name} has no associated image {name!r} (it has: {have})")
        try:
            return as_rgb_uint8(compute_here(self.associated[name]), f"{self.path.name} {name}")
        except (*read_errors(), MemoryError) as err:
            raise read_failure(self.path, err, f"the associated image {name!r}") from err

    def close(self) -> None:
        """Release the file handles; the lazy levels cannot be read afterwards. Closing twice is fine."""
        while self._handles:
            self._handles.pop().close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_level(self, level: int) -> int:
        if not 0 <= int(level) < len(self.levels):
            raise InvalidInputError(f"level {level} does not exist; {self.path.name} has levels 0..{len(self.levels) - 1}")
        return int(level)


# ------------------------------------------------------------------------------------ lazy levels from a reader

#: dask chunks of levels that a library reads region by region are whole tiles, grouped up to about this size
DASK_CHUNK = 1024


class RegionArray:
    """An (H, W, 3) uint8 array-like whose slices call ``read(y0, y1, x0, x1)``: what `lazy_level` wraps."""

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, read: Any, shape: tuple[int, int]):
        self.read = read
        self.shape = (int(shape[0]), int(shape[1]), 3)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        ys, xs = (list(key) + [slice(None)] * 2)[:2]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            block = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)
        else:
            block = self.read(y0, y1, x0, x1)
        return block[(slice(None), slice(None), *key[2:3])]


def lazy_level(read: Any, shape: tuple[int, int], tile: tuple[int, int] | None, name: str) -> Any:
    """A dask (H, W, 3) uint8 array over ``read(y0, y1, x0, x1)``, chunked on whole tiles of `tile` (h, w)."""
    import dask.array as da

    th, tw = tile or (256, 256)
    chunks = tuple(max(1, min(n, t * max(1, round(DASK_CHUNK / t)))) for t, n in zip((th, tw), shape))
    return da.from_array(RegionArray(read, shape), chunks=(*chunks, 3), name=name, lock=False, asarray=True,
                         fancy=False)


def lazy_image(load: Any, shape: tuple[int, int], name: str) -> Any:
    """A dask (H, W, 3) uint8 array that calls ``load() -> array`` once, when first computed."""
    import dask
    import dask.array as da

    return da.from_delayed(dask.delayed(load, pure=True, name=name)(), (int(shape[0]), int(shape[1]), 3), np.uint8)


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) RGBA uint8 (not premultiplied) -> (h, w, 3) RGB over white, so regions without data are glass."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.float32) / 255.0
    return (rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)
