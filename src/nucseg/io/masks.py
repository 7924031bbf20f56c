"""Read instance label images (ground truth or earlier results) as 2-D uint32 arrays.

An instance label image holds 0 for background and one positive integer per nucleus (ids need not be
consecutive; they are kept as they are, so metrics and tables can refer to them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nucseg.errors import InvalidInputError, SlideReadError, UnsupportedFileError
from nucseg.io.base import read_errors, read_failure
from nucseg.io.limits import check_declared_size, check_tiff_series
from nucseg.io.slides import suffix_of

LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".ome.tif", ".ome.tiff")
_FIX_RGB = ("save the labels as a single-channel 16- or 32-bit integer image (0 = background, 1..N = nuclei), "
            "not as colours")


def read_whole_array(path: Path, what: str = "the label image") -> np.ndarray:
    """A PNG or TIFF (level 0) decoded whole, as stored, once its declared size and strip sizes are checked
    (`nucseg.io.limits.check_declared_size`, `check_tiff_series`): a decompression bomb is refused, not decoded.

    Raises:
        SlideReadError: too large to read whole, strips too large, or no image in the TIFF.
    """
    if suffix_of(path) == ".png":
        from PIL import Image

        with Image.open(path) as im:
            check_declared_size(path, im.height, im.width, whole=True, what=what)
            im.load()
            return np.asarray(im)  # palette ("P") images give their indices
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise SlideReadError(path, "the TIFF holds no image", "export the image again")
        level = tif.series[0].levels[0]
        check_tiff_series(path, level, whole=True, what=what)
        return np.asarray(level.asarray())


def read_labels(path: str | Path) -> np.ndarray:
    """Read an instance label image (PNG or TIFF, level 0 of a pyramid) as a 2-D uint32 array.

    A binary mask (boolean, or a single foreground value of 1 or 255, e.g. a 0 / 255 PNG) cannot tell touching
    nuclei apart; it is split into connected components (4-connectivity) numbered 1..N. An RGB(A) file whose
    channels are all equal is read as its first channel; a colour-coded RGB label image is refused.

    Raises:
        UnsupportedFileError: the suffix is not PNG or TIFF.
        SlideReadError: the file is missing, empty or cannot be decoded.
        InvalidInputError: the image is colour, not 2-D, negative or fractional.
    """
    path = Path(path)
    if not path.exists():
        raise SlideReadError(path, "no such file", "check the path")
    if path.is_dir():
        raise SlideReadError(path, "is a folder, not a label image", "pass one PNG or TIFF file")
    if suffix_of(path) not in LABEL_SUFFIXES:
        raise UnsupportedFileError(f"{path}: label images must be PNG or TIFF ({', '.join(LABEL_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise SlideReadError(path, "the file is empty (0 bytes)", "the download or copy failed; copy it again")
    try:
        labels = read_whole_array(path)
    except SlideReadError:
        raise
    except (*read_errors(), MemoryError) as err:
        raise read_failure(path, err) from err
    return as_label_image(labels, name=str(path))


def as_label_image(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Check and convert an array to 2-D uint32 instance labels (see `read_labels` for the rules).

    Raises:
        InvalidInputError: the array is colour, not 2-D, negative or fractional.
    """
    labels = np.asarray(labels)
    if labels.ndim > 2:
        labels = np.squeeze(labels, axis=tuple(i for i in range(labels.ndim - 2) if labels.shape[i] == 1))
    if labels.ndim == 3 and labels.shape[2] in (3, 4):
        if not (np.array_equal(labels[..., 0], labels[..., 1]) and np.array_equal(labels[..., 0], labels[..., 2])):
            raise InvalidInputError(f"{name} is an RGB image {labels.shape}, not an instance label image; {_FIX_RGB}")
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise InvalidInputError(f"{name} has shape {labels.shape}; a label image must be 2-D (height, width)")
    if labels.dtype == bool:
        return _components(labels)
    if not np.issubdtype(labels.dtype, np.number):
        raise InvalidInputError(f"{name} has dtype {labels.dtype}; labels must be integers")
    floating = np.issubdtype(labels.dtype, np.floating)
    if floating and (not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels))):
        raise InvalidInputError(f"{name} holds fractional values (a probability map?); labels must be integers")
    if labels.size and labels.min() < 0:
        raise InvalidInputError(f"{name} holds negative values; labels must be 0 (background) or positive ids")
    if labels.size and labels.max() > np.iinfo(np.uint32).max:
        raise InvalidInputError(f"{name} holds ids above 2**32 - 1; renumber the labels")
    values = np.unique(labels)
    foreground = values[values > 0]
    if len(foreground) == 1 and foreground[0] in (1, 255):
        return _components(labels > 0)
    return labels.astype(np.uint32)


def _components(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    labelled, _ = ndi.label(mask)
    return labelled.astype(np.uint32)
