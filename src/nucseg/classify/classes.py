"""Nucleus classes: a name and a colour each. The defaults, and the user's edited list (``$NUCSEG_HOME/classify``)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nucseg.errors import InvalidInputError, StoreError

__all__ = ["NucleusClass", "DEFAULT_CLASSES", "classify_home", "load_class_list", "save_class_list", "color_for",
           "check_class_name"]

_NAME = re.compile(r"[^\s,\"][^,\"\n]{0,63}")


@dataclasses.dataclass(frozen=True)
class NucleusClass:
    """A class of nuclei: its name (the CSV's ``class`` and QuPath's classification) and colour (r, g, b)."""

    name: str
    color: tuple[int, int, int]
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "color": list(self.color), "description": self.description}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NucleusClass:
        color = d.get("color") or color_for(str(d["name"]))
        return cls(check_class_name(str(d["name"])), tuple(int(c) for c in color[:3]), str(d.get("description", "")))


DEFAULT_CLASSES = (
    NucleusClass("tumour", (200, 30, 30), "tumour / epithelial"),
    NucleusClass("lymphocyte", (40, 90, 230), "lymphocyte / inflammatory"),
    NucleusClass("stroma", (40, 170, 60), "stromal / fibroblast"),
    NucleusClass("other", (230, 170, 20), "other"),
)

#: colours for classes the defaults do not name, in turn
_PALETTE = ((160, 60, 200), (0, 180, 180), (240, 110, 170), (120, 80, 40), (110, 110, 110), (180, 200, 40))


def check_class_name(name: str) -> str:
    """A class name as given, stripped; refuses empty ones and ones with commas, quotes or line breaks."""
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise InvalidInputError(f"class name {name!r}: use 1-64 characters without commas, quotes or line breaks")
    return name


def color_for(name: str, taken: Sequence[tuple[int, int, int]] = ()) -> tuple[int, int, int]:
    """The default colour of a class name: the defaults' own, else the first palette colour not `taken`."""
    for c in DEFAULT_CLASSES:
        if c.name == name:
            return c.color
    for color in _PALETTE:
        if tuple(color) not in {tuple(t) for t in taken}:
            return color
    return _PALETTE[sum(map(ord, name)) % len(_PALETTE)]


def classify_home() -> Path:
    """``$NUCSEG_HOME/classify``: the dock's class list and the labels clicked per image."""
    from nucseg.home import nucseg_home

    return nucseg_home() / "classify"


def _class_list_path() -> Path:
    return classify_home() / "classes.json"


def load_class_list() -> list[NucleusClass]:
    """The user's class list (as last saved), else the defaults."""
    path = _class_list_path()
    if not path.exists():
        return list(DEFAULT_CLASSES)
    try:
        return [NucleusClass.from_dict(d) for d in json.loads(path.read_text())["classes"]] or list(DEFAULT_CLASSES)
    except (OSError, ValueError, KeyError, TypeError, InvalidInputError) as err:
        raise StoreError(f"cannot read the class list {path}: {err}; fix or remove the file") from err


def save_class_list(classes: Sequence[NucleusClass]) -> Path:
    """Save the class list (atomically)."""
    path = _class_list_path()
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"class names must differ: {names}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"classes": [c.to_dict() for c in classes]}, indent=2))
    os.replace(tmp, path)
    return path
