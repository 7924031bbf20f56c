"""The labels a person gives by clicking, kept on disk per image (``$NUCSEG_HOME/classify/labels/``) as the points
CSV the CLI trains from (image,x,y,class), written after every change, so nothing is lost when napari closes.
One label per nucleus: labelling a nucleus again replaces its class. Every change can be undone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from nucseg.classify.classes import check_class_name, classify_home
from nucseg.classify.examples import Point, read_points_csv, write_points_csv
from nucseg.errors import InvalidInputError

__all__ = ["ClickStore", "Click"]


@dataclasses.dataclass(frozen=True)
class Click:
    """A labelled nucleus: full-resolution x, y of the click, the class, and the nucleus's label id (0: unknown)."""

    x: float
    y: float
    klass: str
    nucleus_id: int = 0


class ClickStore:
    """The clicked labels of one image.

    Args:
        image: what the image is: its file path when it has one, else a name (the layer's).
        root: the folder of the CSVs (default ``$NUCSEG_HOME/classify/labels``).
    """

    def __init__(self, image: str, root: Path | None = None):
        self.image = str(image)
        root = root or classify_home() / "labels"
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(self.image).name)[:60] or "image"
        self.path = root / f"{slug}-{hashlib.sha1(self.image.encode()).hexdigest()[:10]}.csv"
        self.clicks: list[Click] = []
        self._undo: list[list[Click]] = []
        if self.path.exists():
            self.clicks = [Click(p.x, p.y, p.klass) for p in read_points_csv(self.path)]

    def __len__(self) -> int:
        return len(self.clicks)

    def add(self, x: float, y: float, klass: str, nucleus_id: int) -> Click:
        """Label nucleus `nucleus_id` (clicked at x, y) as `klass`, replacing an earlier label of it."""
        if nucleus_id <= 0:
            raise InvalidInputError("no nucleus under the click: click inside a segmented nucleus")
        click = Click(float(x), float(y), check_class_name(klass), int(nucleus_id))
        self._undo.append(list(self.clicks))
        self.clicks = [c for c in self.clicks if c.nucleus_id != nucleus_id] + [click]
        self._save()
        return click

    def remove(self, nucleus_id: int) -> bool:
        """Forget the label of a nucleus; True when it had one."""
        kept = [c for c in self.clicks if c.nucleus_id != nucleus_id]
        if len(kept) == len(self.clicks):
            return False
        self._undo.append(list(self.clicks))
        self.clicks = kept
        self._save()
        return True

    def undo(self) -> bool:
        """Undo the last change; False when there is none."""
        if not self._undo:
            return False
        self.clicks = self._undo.pop()
        self._save()
        return True

    def set_ids(self, ids: list[int]) -> None:
        """The nucleus under each click (in order), as found in the labels now shown (after a reload)."""
        self.clicks = [dataclasses.replace(c, nucleus_id=int(i)) for c, i in zip(self.clicks, ids, strict=True)]

    def points(self) -> list[Point]:
        return [Point(Path(self.image), c.x, c.y, c.klass) for c in self.clicks]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.clicks:
            out[c.klass] = out.get(c.klass, 0) + 1
        return out

    def _save(self) -> None:
        if self.clicks or self.path.exists():
            write_points_csv(self.path, self.points())
