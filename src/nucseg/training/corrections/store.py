"""The corrections store: corrected image / instance-label pairs on disk (`CorrectionStore`), and the
`corrections_changed` signal that lists and counts refresh on.

Layout under the store's root (default ``$NUCSEG_HOME/corrections``, `nucseg.home.nucseg_home`)::

    entries/<id>/...            one entry (`nucseg.training.corrections.entry` names its files)
    trash/<id>/...              removed entries (never deleted), restored by `CorrectionStore.undo`
    trash/removed.json          the order of removals, for undo

Every entry is written in a temporary folder and renamed into place in one step, so a crash never leaves a
half-written entry, and an id is never reused: nothing is ever overwritten.
"""

from __future__ import annotations

import datetime as _dt
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

from nucseg.errors import StoreError
from nucseg.home import nucseg_home
from nucseg.io.export import atomic_write_text
from nucseg.models.registry import sha256_of
from nucseg.training.corrections.entry import (
    ENTRY_FILE,
    IMAGE_FILE,
    LABELS_FILE,
    REVIEW_MARK_FILE,
    REVIEWED_ALL,
    REVIEWED_FILE,
    REVIEWED_MASK,
    CorrectionEntry,
    check_pair,
    check_reviewed,
)
from nucseg.training.dataset import TrainingPair

_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")

#: emitted (with the store's root) after every add, remove or undo, so lists and counts can refresh
corrections_changed = SignalInstance((object,), name="corrections_changed")


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
            hashes = {"image": sha256_of(tmp / IMAGE_FILE), "labels": sha256_of(tmp / LABELS_FILE)}
            review: dict[str, Any] = {}
            if isinstance(mask, np.ndarray):
                Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / REVIEWED_FILE, format="PNG")
                hashes["reviewed"] = sha256_of(tmp / REVIEWED_FILE)
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
