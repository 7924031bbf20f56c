"""One stored correction: `CorrectionEntry` (its files, provenance and reviewed region, read from its folder),
and the checks a corrected pair passes before it is stored (`check_pair`, `check_reviewed`).

An entry's folder (``entries/<id>/`` of a `nucseg.training.corrections.store.CorrectionStore`)::

    image.png      RGB uint8 pixels
    labels.tif     uint32 instance labels (0 = background), zlib-compressed TIFF
    reviewed.png   the pixels whose labels the person checked (255) and the others (0), when marked
    entry.json     provenance (source file, level, region, mpp, model, time, nuclei, sha256 of files)
                   and "reviewed": "mask" (reviewed.png), "all" (the whole region) or absent
    review.json    written when an entry saved without a reviewed region is later marked as reviewed as a
                   whole by the person (entry.json itself is never rewritten)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError, StoreError
from nucseg.models.registry import sha256_of
from nucseg.training.dataset import TrainingPair

IMAGE_FILE, LABELS_FILE, ENTRY_FILE = "image.png", "labels.tif", "entry.json"
REVIEWED_FILE, REVIEW_MARK_FILE = "reviewed.png", "review.json"
#: `CorrectionEntry.reviewed`: a mask of the checked pixels, or the whole region checked
REVIEWED_MASK, REVIEWED_ALL = "mask", "all"
#: the smallest and largest corrected regions accepted (sides in pixels, pixels in all)
MIN_SIDE, MAX_PIXELS = 16, 4096 * 4096


@dataclasses.dataclass(frozen=True)
class CorrectionEntry:
    """One stored pair, as described by its entry.json.

    Attributes:
        id: unique id that sorts by time (also the folder name and the pair's name in training manifests).
        folder: the entry's folder.
        created: ISO time of saving (UTC).
        shape: (height, width) of image and labels.
        n_nuclei: number of distinct nuclei in the labels.
        provenance: source, level, region (y, x, h, w), mpp, model... as given to `CorrectionStore.add`.
        sha256: hashes of the image and labels files (and of the reviewed mask).
        reviewed: REVIEWED_MASK, REVIEWED_ALL, or None when nobody said what was checked (not trained on).
        reviewed_fraction: share of the region marked as reviewed (None when unknown).
    """

    id: str
    folder: Path
    created: str
    shape: tuple[int, int]
    n_nuclei: int
    provenance: dict[str, Any]
    sha256: dict[str, str]
    reviewed: str | None = None
    reviewed_fraction: float | None = None

    @property
    def image_path(self) -> Path:
        return self.folder / IMAGE_FILE

    @property
    def labels_path(self) -> Path:
        return self.folder / LABELS_FILE

    @property
    def reviewed_path(self) -> Path:
        return self.folder / REVIEWED_FILE

    def load_reviewed(self, verify: bool = True) -> np.ndarray | None:
        """The (H, W) bool mask of reviewed pixels; None when the whole region was reviewed.

        Raises:
            StoreError: the entry is unreviewed, or its mask is missing or damaged.
        """
        from PIL import Image

        if self.reviewed is None:
            raise StoreError(f"correction {self.id} has no reviewed region: mark it reviewed (Corrections widget: "
                             "Mark fully reviewed) or add the region again with its reviewed part marked")
        if self.reviewed == REVIEWED_ALL:
            return None
        path = self.reviewed_path
        if not path.is_file():
            raise StoreError(f"correction {self.id}: {path.name} is missing; remove the entry and add it again")
        if verify and self.sha256.get("reviewed") and sha256_of(path) != self.sha256["reviewed"]:
            raise StoreError(f"correction {self.id}: {path.name} was changed or damaged since it was saved "
                             "(sha256 differs); remove the entry and add it again")
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 127

    @property
    def source(self) -> str:
        return str(self.provenance.get("source") or "")

    def load(self, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8, labels (H, W) uint32); with `verify`, files must match their sha256.

        Raises:
            StoreError: a file is missing, damaged or was changed since it was saved.
        """
        import tifffile
        from PIL import Image

        for key, path in (("image", self.image_path), ("labels", self.labels_path)):
            if not path.is_file():
                raise StoreError(f"correction {self.id}: {path.name} is missing; remove the entry and add it again")
            if verify and self.sha256.get(key) and sha256_of(path) != self.sha256[key]:
                raise StoreError(f"correction {self.id}: {path.name} was changed or damaged since it was saved "
                                 "(sha256 differs); remove the entry and add it again")
        with Image.open(self.image_path) as im:
            image = np.asarray(im.convert("RGB"))
        labels = np.asarray(tifffile.imread(self.labels_path)).astype(np.uint32, copy=False)
        return image, labels

    @property
    def mpp(self) -> float | None:
        """Microns per pixel of the saved pixels (level 0 of the source), None when the source did not say."""
        mpp = self.provenance.get("mpp")
        return float(mpp) if mpp else None

    def to_pair(self, model_mpp: float | None = None) -> TrainingPair:
        """The entry as a `TrainingPair` named by its id; resampled to `model_mpp` when given and its own mpp is
        known (see `nucseg.training.dataset.at_model_resolution`)."""
        from nucseg.training.dataset import at_model_resolution

        reviewed = self.load_reviewed()
        image, labels = self.load()
        pair = TrainingPair(image, labels, self.id, self.source, reviewed)
        return at_model_resolution(pair, self.mpp, model_mpp) if model_mpp else pair

    @classmethod
    def read(cls, folder: Path) -> CorrectionEntry:
        try:
            data = json.loads((folder / ENTRY_FILE).read_text())
            reviewed, fraction = data.get("reviewed"), data.get("reviewed_fraction")
            if reviewed is None and (folder / REVIEW_MARK_FILE).is_file():
                reviewed, fraction = json.loads((folder / REVIEW_MARK_FILE).read_text())["reviewed"], 1.0
            if reviewed not in (None, REVIEWED_MASK, REVIEWED_ALL):
                raise ValueError(f"reviewed is {reviewed!r}")
            return cls(id=data["id"], folder=folder, created=data["created"], shape=tuple(data["shape"]),
                       n_nuclei=int(data["n_nuclei"]), provenance=dict(data.get("provenance", {})),
                       sha256=dict(data.get("sha256", {})), reviewed=reviewed,
                       reviewed_fraction=None if fraction is None else float(fraction))
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise StoreError(f"cannot read correction {folder}: {err}") from err


def check_pair(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a corrected pair to ((H, W, 3) uint8, (H, W) uint32).

    Raises:
        InvalidInputError: wrong shapes or dtypes, a region too small or too large, or no nucleus at all.
    """
    from nucseg.io.base import as_rgb_uint8
    from nucseg.io.masks import as_label_image

    image = as_rgb_uint8(np.asarray(image), name="the corrected image")
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InvalidInputError(f"labels have shape {labels.shape}; expected one 2-D label image (height, width)")
    if labels.shape != image.shape[:2]:
        raise InvalidInputError(
            f"labels {labels.shape} and image {image.shape[:2]} differ in size: the labels must be drawn on the same "
            "pixels as the image (crop both to the same region)")
    if min(labels.shape) < MIN_SIDE:
        raise InvalidInputError(f"the region {labels.shape} is too small: choose at least {MIN_SIDE} x {MIN_SIDE} px")
    if labels.size > MAX_PIXELS:
        raise InvalidInputError(
            f"the region {labels.shape} is too large for one correction (over {MAX_PIXELS:,} px): draw a smaller "
            "rectangle around the nuclei you corrected")
    if not labels.any():
        raise InvalidInputError("the labels hold no nucleus: paint or correct the nuclei in the Labels layer first "
                                "(a region without any nucleus teaches nothing)")
    return image, as_label_image(labels, name="the corrected labels")


def check_reviewed(reviewed: np.ndarray | bool | None, shape: tuple[int, ...]) -> np.ndarray | bool:
    """A reviewed mask as (H, W) bool (or True: all reviewed, False: not said), checked against `shape`.

    Raises:
        InvalidInputError: another shape, or no pixel marked.
    """
    if reviewed is None or isinstance(reviewed, (bool, np.bool_)):
        return bool(reviewed)
    mask = np.asarray(reviewed).astype(bool)
    if mask.shape != tuple(shape):
        raise InvalidInputError(f"the reviewed mask {mask.shape} and the labels {tuple(shape)} differ in size")
    if not mask.any():
        raise InvalidInputError("no part of this region is marked as reviewed: mark what you checked (draw it in "
                                "the 'reviewed regions' layer, or press 'Mark current view as reviewed')")
    return True if mask.all() else mask
