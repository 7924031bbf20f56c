"""The corrections store: image / instance-label pairs a person corrected, kept with where they came from.

Layout under the store's root (default ``$NUCSEG_HOME/corrections``, NUCSEG_HOME defaulting to ``~/.nucseg``)::

    entries/<id>/image.png      RGB uint8 pixels
    entries/<id>/labels.tif     uint32 instance labels (0 = background), zlib-compressed TIFF
    entries/<id>/reviewed.png   the pixels whose labels the person checked (255) and the others (0), when marked
    entries/<id>/entry.json     provenance (source file, level, region, mpp, model, time, nuclei, sha256 of files)
                                and "reviewed": "mask" (reviewed.png), "all" (the whole region) or absent
    entries/<id>/review.json    written when an entry saved without a reviewed region is later marked as
                                reviewed as a whole by the person (entry.json itself is never rewritten)
    trash/<id>/...              removed entries (never deleted), restored by `CorrectionStore.undo`
    trash/removed.json          the order of removals, for undo

Every entry is written in a temporary folder and renamed into place in one step, so a crash never leaves a
half-written entry, and an id is never reused: nothing is ever overwritten.

Reviewed regions: fine-tuning learns only from labels a person checked: the regions the person marked as reviewed,
and the neighbourhood of what the person changed (`edit_neighbourhood`: the edited nuclei and the background
within `EDIT_MARGIN_PX` of them, never a nucleus nobody touched). An entry saved with a reviewed mask
trains inside the mask only; one saved as reviewed as a whole trains everywhere; an entry with neither (saved
before reviewed regions existed, or added through the API without saying) is *unreviewed*: `pairs` leaves it
out until the person marks it reviewed (`mark_reviewed`) — it is never taken as truth by default.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import SignalInstance

from nucseg.errors import InvalidInputError, StoreError
from nucseg.io.export import atomic_write_text
from nucseg.training.dataset import TrainingPair

IMAGE_FILE, LABELS_FILE, ENTRY_FILE = "image.png", "labels.tif", "entry.json"
REVIEWED_FILE, REVIEW_MARK_FILE = "reviewed.png", "review.json"
#: `CorrectionEntry.reviewed`: a mask of the checked pixels, or the whole region checked
REVIEWED_MASK, REVIEWED_ALL = "mask", "all"
#: the smallest and largest corrected regions accepted (sides in pixels, pixels in all)
MIN_SIDE, MAX_PIXELS = 16, 4096 * 4096
#: background within this many pixels of a person's edits counts as checked (`edit_neighbourhood`)
EDIT_MARGIN_PX = 16
#: a region saved around edits spans at least this many pixels a side (image context for the network)
EDIT_CONTEXT_PX = 128
_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")

#: emitted (with the store's root) after every add, remove or undo, so lists and counts can refresh
corrections_changed = SignalInstance((object,), name="corrections_changed")


def nucseg_home() -> Path:
    """``$NUCSEG_HOME``, else ``~/.nucseg``: where corrections, fine-tuned models and trash live."""
    return Path(os.environ.get("NUCSEG_HOME", Path.home() / ".nucseg"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_safe(value: Any) -> Any:
    """Provenance values as plain JSON (numpy numbers and arrays, paths, tuples)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


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
        if verify and self.sha256.get("reviewed") and _sha256(path) != self.sha256["reviewed"]:
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
            if verify and self.sha256.get(key) and _sha256(path) != self.sha256[key]:
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


def edit_neighbourhood(edited: np.ndarray, labels: np.ndarray, margin: int = EDIT_MARGIN_PX) -> np.ndarray:
    """The pixels a person's edits vouch for: the edited pixels (whole nuclei the person changed, see
    `nucseg.editing.history`) and the background within `margin` pixels of them; never the pixels of a
    nucleus nobody touched (the model's own labels, unchecked).

    Args:
        edited: (H, W) bool, the pixels the person edited.
        labels: (H, W) the labels now.
        margin: pixels of background around the edits that count as checked.
    """
    from scipy import ndimage as ndi

    edited = np.asarray(edited, bool)
    if not edited.any():
        return edited.copy()
    near = ndi.distance_transform_edt(~edited) <= margin
    return near & (edited | (np.asarray(labels) == 0))


def region_boxes(mask: np.ndarray, min_side: int = EDIT_CONTEXT_PX) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) boxes around the connected parts of `mask`, each grown to at least `min_side` a side
    (clipped to the array) and merged with any box it overlaps, so no pixel is stored twice."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    H, W = mask.shape
    boxes = []
    for sl in ndi.find_objects(ndi.label(mask)[0]):
        if sl is None:
            continue
        boxes.append(_grown(sl[0].start, sl[0].stop, H, min_side) + _grown(sl[1].start, sl[1].stop, W, min_side))
    return [(y0, x0, y1 - y0, x1 - x0) for y0, y1, x0, x1 in merge_boxes(boxes)]


def _grown(lo: int, hi: int, full: int, min_side: int) -> tuple[int, int]:
    extra = max(min_side - (hi - lo), 0)
    lo, hi = lo - extra // 2, hi + extra - extra // 2
    if lo < 0:
        lo, hi = 0, min(hi - lo, full)
    if hi > full:
        lo, hi = max(lo - (hi - full), 0), full
    return lo, hi


def merge_boxes(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) boxes with every overlapping pair replaced by their bounding box, until none overlap."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]:
                    boxes[i] = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(boxes)


class CorrectionStore:
    """Corrected image / label pairs on disk (see the module docstring for the layout).

    Args:
        root: the store's folder; default ``$NUCSEG_HOME/corrections``.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else nucseg_home() / "corrections"
        self.entries_dir = self.root / "entries"
        self.trash_dir = self.root / "trash"

    def __repr__(self) -> str:
        return f"CorrectionStore({str(self.root)!r})"

    def __len__(self) -> int:
        return len(self._folders())

    # -- reading -----------------------------------------------------------------------------------------
    def _folders(self) -> list[Path]:
        if not self.entries_dir.is_dir():
            return []
        return sorted(p for p in self.entries_dir.iterdir() if p.is_dir() and (p / ENTRY_FILE).is_file())

    def entries(self) -> list[CorrectionEntry]:
        """All stored entries, oldest first."""
        return sorted((CorrectionEntry.read(p) for p in self._folders()), key=lambda e: e.id)

    def get(self, entry_id: str) -> CorrectionEntry:
        """The entry with this id.

        Raises:
            StoreError: no such entry (it may have been removed: see `undo`).
        """
        folder = self.entries_dir / entry_id
        if not _ID.fullmatch(entry_id) or not (folder / ENTRY_FILE).is_file():
            raise StoreError(f"no correction {entry_id!r} in {self.root} (removed ones are in its trash: use undo)")
        return CorrectionEntry.read(folder)

    def unreviewed(self) -> list[CorrectionEntry]:
        """Entries nobody marked as reviewed (left out of training until `mark_reviewed`)."""
        return [e for e in self.entries() if e.reviewed is None]

    def pairs(self, ids: Sequence[str] | None = None, model_mpp: float | None = None) -> list[TrainingPair]:
        """Training pairs (with their reviewed masks) of the entries with these ids (default: every reviewed
        entry), read and sha256-checked; with `model_mpp`, each at that resolution (a model learns nuclei at
        the size it segments them).

        Raises:
            StoreError: an id names an unreviewed entry, or a file is missing or damaged.
        """
        chosen = [e for e in self.entries() if e.reviewed] if ids is None else [self.get(i) for i in ids]
        return [entry.to_pair(model_mpp) for entry in chosen]

    def mark_reviewed(self, entry_id: str) -> CorrectionEntry:
        """Record that the person reviewed the whole region of an entry saved without a reviewed region
        (in a new review.json beside it; entry.json is not rewritten).

        Raises:
            StoreError: no such entry, or it already says what was reviewed.
        """
        entry = self.get(entry_id)
        if entry.reviewed is not None:
            raise StoreError(f"correction {entry_id} already records its reviewed region ({entry.reviewed})")
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(entry.folder / REVIEW_MARK_FILE, json.dumps({"reviewed": REVIEWED_ALL, "marked": stamp}))
        corrections_changed.emit(self.root)
        return CorrectionEntry.read(entry.folder)

    # -- writing -----------------------------------------------------------------------------------------
    def _new_id(self) -> str:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")  # UTC: ids sort by time
        while True:
            entry_id = f"c{stamp}-{uuid.uuid4().hex[:4]}"
            if not (self.entries_dir / entry_id).exists() and not (self.trash_dir / entry_id).exists():
                return entry_id

    def add(self, image: np.ndarray, labels: np.ndarray, provenance: dict[str, Any] | None = None,
            reviewed: np.ndarray | bool | None = None) -> CorrectionEntry:
        """Save a corrected pair as a new entry (atomically; never overwriting).

        Args:
            image: (H, W, 3) RGB pixels (uint8; other dtypes are converted).
            labels: (H, W) instance labels, 0 = background.
            provenance: source file, level, region (y, x, h, w), mpp, model that made the first prediction...
            reviewed: an (H, W) mask of the pixels whose labels the person checked; True when all were; None
                (or False) when nobody said: the entry is then not trained on until `mark_reviewed`.

        Raises:
            InvalidInputError: shapes differ, the labels are empty, the region is too small or too large, or
                the reviewed mask has another shape or marks no pixel.
            StoreError: the store cannot be written.
        """
        import tifffile
        from PIL import Image

        image, labels = check_pair(image, labels)
        mask = check_reviewed(reviewed, labels.shape)
        entry_id = self._new_id()
        target = self.entries_dir / entry_id
        try:
            self.entries_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{entry_id}.", dir=self.root))
        except OSError as err:
            raise StoreError(f"cannot write to the corrections store {self.root}: {err}") from err
        try:
            Image.fromarray(image).save(tmp / IMAGE_FILE, format="PNG")
            tifffile.imwrite(tmp / LABELS_FILE, labels, compression="zlib", photometric="minisblack")
            hashes = {"image": _sha256(tmp / IMAGE_FILE), "labels": _sha256(tmp / LABELS_FILE)}
            review: dict[str, Any] = {}
            if isinstance(mask, np.ndarray):
                Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / REVIEWED_FILE, format="PNG")
                hashes["reviewed"] = _sha256(tmp / REVIEWED_FILE)
                review = {"reviewed": REVIEWED_MASK, "reviewed_fraction": round(float(mask.mean()), 6)}
            elif mask:
                review = {"reviewed": REVIEWED_ALL, "reviewed_fraction": 1.0}
            record = {
                "id": entry_id,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "shape": list(labels.shape),
                "n_nuclei": int(len(np.unique(labels)) - (1 if (labels == 0).any() else 0)),
                "provenance": _json_safe(dict(provenance or {})),
                "sha256": hashes,
                "files": {"image": IMAGE_FILE, "labels": LABELS_FILE,
                          **({"reviewed": REVIEWED_FILE} if "reviewed" in hashes else {})},
                **review,
                "format": 2 if review else 1,
            }
            (tmp / ENTRY_FILE).write_text(json.dumps(record, indent=1))
            if target.exists():  # never overwrite (ids are unique; this guards against the impossible)
                raise StoreError(f"correction {entry_id} already exists in {self.root}")
            os.rename(tmp, target)
        except OSError as err:
            raise StoreError(f"cannot write correction to {self.root}: {err}") from err
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        corrections_changed.emit(self.root)
        return CorrectionEntry.read(target)

    def _removed_log(self) -> list[str]:
        path = self.trash_dir / "removed.json"
        if not path.is_file():
            return []
        try:
            return list(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            raise StoreError(f"cannot read {path}: {err}") from err

    def remove(self, entry_id: str) -> CorrectionEntry:
        """Move an entry to the store's trash (nothing is deleted); `undo` brings it back."""
        entry = self.get(entry_id)
        self.trash_dir.mkdir(parents=True, exist_ok=True)
        target = self.trash_dir / entry_id
        if target.exists():
            raise StoreError(f"the trash already holds a correction {entry_id}; restore or move it by hand first")
        log = self._removed_log()
        try:
            os.rename(entry.folder, target)
        except OSError as err:
            raise StoreError(f"cannot move correction {entry_id} to {self.trash_dir}: {err}") from err
        atomic_write_text(self.trash_dir / "removed.json", json.dumps([*log, entry_id]))
        corrections_changed.emit(self.root)
        return CorrectionEntry.read(target)

    def undo(self) -> CorrectionEntry | None:
        """Restore the most recently removed entry; None when nothing was removed."""
        log = self._removed_log()
        while log:
            entry_id = log[-1]
            source = self.trash_dir / entry_id
            if source.is_dir():
                target = self.entries_dir / entry_id
                if target.exists():
                    raise StoreError(f"correction {entry_id} exists both in the store and in its trash; "
                                     "remove one by hand")
                self.entries_dir.mkdir(parents=True, exist_ok=True)
                os.rename(source, target)
                atomic_write_text(self.trash_dir / "removed.json", json.dumps(log[:-1]))
                corrections_changed.emit(self.root)
                return CorrectionEntry.read(target)
            log.pop()  # moved away by hand: skip it
        return None

    def export(self, dest: str | Path) -> Path:
        """Copy every reviewed entry to `dest` as ``images/<id>.png``, ``labels/<id>.tif``,
        ``reviewed/<id>.png`` (its reviewed mask; all white when the whole region was reviewed) and
        ``corrections.json`` (every entry's record; unreviewed ones are listed there, not copied).

        That layout is what ``nucseg finetune --images dest/images --labels dest/labels --reviewed
        dest/reviewed`` reads.

        Raises:
            StoreError: `dest` exists and is not empty (exports never overwrite), or the store is empty.
        """
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise StoreError(f"{dest} is not empty: exports never overwrite; choose a new folder")
        from PIL import Image

        entries = [e for e in self.entries() if e.reviewed]
        if not entries:
            raise StoreError(f"the corrections store {self.root} holds no reviewed correction: add corrected "
                             "images with their reviewed regions first")
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:6]}.tmp")
        for sub in ("images", "labels", "reviewed"):
            (tmp / sub).mkdir(parents=True)
        for entry in entries:
            entry.load()  # sha256 check: never export a damaged pair
            mask = entry.load_reviewed()
            shutil.copy2(entry.image_path, tmp / "images" / f"{entry.id}.png")
            shutil.copy2(entry.labels_path, tmp / "labels" / f"{entry.id}.tif")
            if mask is None:
                Image.new("L", (entry.shape[1], entry.shape[0]), 255).save(tmp / "reviewed" / f"{entry.id}.png")
            else:
                shutil.copy2(entry.reviewed_path, tmp / "reviewed" / f"{entry.id}.png")
        summary = [{**json.loads((e.folder / ENTRY_FILE).read_text()), "reviewed": e.reviewed}
                   for e in self.entries()]
        (tmp / "corrections.json").write_text(json.dumps(summary, indent=1))
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.rename(tmp, dest)
        return dest
