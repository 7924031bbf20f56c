"""Saved classifiers: versioned folders ``$NUCSEG_HOME/classifiers/NAME/vNNN`` beside the model versions.

A version holds ``classifier.json`` (classes and colours, settings, feature names, the segmentation model it is
bound to by name and sha256, when and how it was made) and ``examples.csv`` (one labelled nucleus per row: image,
x, y, class, nucleus_id, then its features at full float precision). No pickle: loading reads both and retrains
(`nucseg.classify.learner.train`, deterministic). Saving under a name that exists makes the next version; a
version is never overwritten.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import functools
import json
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.classify.classes import NucleusClass
from nucseg.classify.learner import ClassifierData, ClassifierSettings, Example, TrainedClassifier, train
from nucseg.errors import InvalidInputError, StoreError
from nucseg.models.registry import sha256_of

__all__ = ["classifiers_dir", "save_classifier", "resolve_classifier", "load_classifier", "load_trained",
           "list_classifiers", "ClassifierInfo", "model_binding", "check_binding"]

FORMAT = "nucseg-classifier"
FORMAT_VERSION = 1
CONFIG = "classifier.json"
EXAMPLES = "examples.csv"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_VERSION = re.compile(r"v(\d{3,})")
_EXAMPLE_COLUMNS = ("image", "x", "y", "class", "nucleus_id")


def classifiers_dir() -> Path:
    """``$NUCSEG_HOME/classifiers`` (beside ``models``)."""
    from nucseg.home import nucseg_home

    return nucseg_home() / "classifiers"


def model_binding(spec: Any = None, labels_from: str | None = None) -> dict[str, Any]:
    """What a classifier's features were computed on: a segmentation model (name, sha256), or given labels."""
    if spec is None:
        return {"name": None, "sha256": None, "labels": labels_from or "given"}
    return {"name": spec.name, "sha256": spec.sha256}


def check_binding(data: ClassifierData, spec: Any, where: str) -> str | None:
    """None when `spec` (the model segmenting now) is the classifier's; a note when the classifier was trained on
    given labels; raises `InvalidInputError` when it was trained on another model's nuclei."""
    bound = data.model
    if bound.get("name") is None:
        return (f"{where} was trained on labels from {bound.get('labels', 'elsewhere')}, not on a model's nuclei; "
                f"applied to {spec.name}'s nuclei")
    both = bool(bound.get("sha256")) and bool(spec.sha256)
    same = bound["sha256"] == spec.sha256 if both else bound.get("name") == spec.name
    if not same:
        raise InvalidInputError(f"{where} was trained on the nuclei of model {bound.get('name')} "
                                f"(sha256 {str(bound.get('sha256'))[:12]}), not {spec.name} "
                                f"({str(spec.sha256)[:12]}); segment with --model {bound.get('name')} or train the "
                                "classifier again on this model's nuclei")
    return None


def _check(trained: TrainedClassifier) -> list[list[float]]:
    """Probabilities of the first examples: recorded at save, compared at load (same scikit-learn, same result)."""
    return np.round(trained.probabilities(trained.data.features[:5]), 6).tolist()


def _write_examples(path: Path, data: ClassifierData) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*_EXAMPLE_COLUMNS, *data.feature_names])
        for ex, row in zip(data.examples, data.features, strict=True):
            writer.writerow([ex.image, repr(float(ex.x)), repr(float(ex.y)), ex.klass, int(ex.nucleus_id),
                             *(repr(float(v)) for v in row)])


def _read_examples(path: Path, names: list[str]) -> tuple[list[Example], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if header != [*_EXAMPLE_COLUMNS, *names]:
            raise StoreError(f"{path}: columns do not match {CONFIG}'s features")
        examples, rows = [], []
        for row in reader:
            examples.append(Example(row[0], float(row[1]), float(row[2]), row[3], int(row[4])))
            rows.append([float(v) for v in row[5:]])
    return examples, np.array(rows, dtype=np.float64).reshape(len(examples), len(names))


def _next_version(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.glob("v*") if (m := _VERSION.fullmatch(p.name))]
    return max(numbers, default=0) + 1


def save_classifier(data: ClassifierData, name: str, *, description: str = "",
                    root: Path | None = None) -> Path:
    """Train once (to check and record it), then write a new version ``NAME/vNNN``; returns its folder."""
    if not _NAME.fullmatch(name):
        raise InvalidInputError(f"classifier name {name!r}: use letters, digits, '.', '_' or '-' (start with a "
                                "letter or digit)")
    trained = train(data)
    folder = (root or classifiers_dir()) / name
    tmp = folder / f".v.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.mkdir(parents=True)
        _write_examples(tmp / EXAMPLES, data)
        config = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "description": description,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "classes": [c.to_dict() for c in data.classes], "trained_classes": trained.classes,
            "settings": data.settings.to_dict(), "features": data.feature_names, "model": data.model,
            "examples": EXAMPLES, "examples_sha256": sha256_of(tmp / EXAMPLES), "n_examples": len(data.examples),
            "counts": data.counts(), "sklearn": _sklearn_version(), "check": _check(trained)}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        while True:  # never replace a version: the next free number (another process may take one meanwhile)
            target = folder / f"v{_next_version(folder):03d}"
            try:
                os.rename(tmp, target)  # fails when target exists (a non-empty folder) or races
                if (target / CONFIG).exists():
                    return target
            except OSError:
                if not target.exists():
                    raise
    except OSError as err:
        raise StoreError(f"cannot save classifier {name} in {folder}: {err}") from err
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def resolve_classifier(name_or_path: str | Path, root: Path | None = None) -> Path:
    """The folder of a classifier: a folder holding classifier.json, ``NAME/vNNN``, or NAME (its latest version)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if (path / CONFIG).is_file():
        return path
    base = root or classifiers_dir()
    candidate = base / text
    if (candidate / CONFIG).is_file():
        return candidate
    if candidate.is_dir():
        versions = sorted((p for p in candidate.iterdir() if _VERSION.fullmatch(p.name) and (p / CONFIG).is_file()),
                          key=lambda p: int(p.name[1:]))
        if versions:
            return versions[-1]
    known = ", ".join(sorted({i.name for i in list_classifiers(root)})) or "none yet"
    raise InvalidInputError(f"no classifier {text!r} (a name in {base}, NAME/vNNN, or a folder with {CONFIG}); "
                            f"known: {known}; make one with `nucseg classify train` or the Classify dock")


def load_classifier(name_or_path: str | Path, root: Path | None = None) -> ClassifierData:
    """Read a saved classifier's examples and settings (checked against the sha256 recorded at save)."""
    folder = resolve_classifier(name_or_path, root)
    try:
        config = json.loads((folder / CONFIG).read_text())
        if config.get("format") != FORMAT:
            raise StoreError(f"{folder / CONFIG} is not a nucseg classifier")
        if config.get("examples_sha256") != sha256_of(folder / EXAMPLES):
            raise StoreError(f"{folder / EXAMPLES} changed since it was saved (sha256 differs); save the edited "
                             "examples as a new classifier instead")
        settings = ClassifierSettings.from_dict(config["settings"])
        examples, features = _read_examples(folder / EXAMPLES, list(config["features"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StoreError(f"cannot read classifier {folder}: {err}") from err
    return ClassifierData([NucleusClass.from_dict(c) for c in config["classes"]], settings, dict(config["model"]),
                          examples, features)


@functools.lru_cache(maxsize=8)
def _trained(folder: str, stamp: float) -> TrainedClassifier:
    trained = train(load_classifier(folder))
    check = json.loads((Path(folder) / CONFIG).read_text()).get("check")
    if check is not None and _check(trained) != check:
        warnings.warn(f"classifier {folder} retrained on scikit-learn {_sklearn_version()} gives other "
                      "probabilities than when it was saved (a different version?)", stacklevel=2)
    return trained


def load_trained(name_or_path: str | Path, root: Path | None = None) -> tuple[TrainedClassifier, Path]:
    """A saved classifier retrained from its examples (cached per folder), and its folder."""
    folder = resolve_classifier(name_or_path, root)
    return _trained(str(folder), (folder / CONFIG).stat().st_mtime), folder


@dataclasses.dataclass(frozen=True)
class ClassifierInfo:
    """A saved classifier version as listed."""

    name: str
    version: str
    folder: Path
    created: str
    counts: dict[str, int]
    model: dict[str, Any]

    def summary(self) -> str:
        model = self.model.get("name") or f"none (labels from {self.model.get('labels', 'elsewhere')})"
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items() if v)
        return f"{self.name}/{self.version}  {self.created}  model {model}  examples: {counts}"


def list_classifiers(root: Path | None = None) -> list[ClassifierInfo]:
    """Every saved version, by name then version (unreadable ones are skipped)."""
    base = root or classifiers_dir()
    out = []
    for config in sorted(base.glob(f"*/v*/{CONFIG}"), key=lambda p: (p.parent.parent.name, p.parent.name)):
        if not _VERSION.fullmatch(config.parent.name):
            continue
        try:
            d = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        out.append(ClassifierInfo(config.parent.parent.name, config.parent.name, config.parent,
                                  str(d.get("created", "")), dict(d.get("counts") or {}), dict(d.get("model") or {})))
    return out
