"""The classifier as data: labelled examples (features + class + where each came from) and settings. Training is
a deterministic function of them (a seeded scikit-learn forest on one thread), so a saved classifier is retrained
on load, never unpickled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from nucseg.classify.classes import NucleusClass, color_for
from nucseg.classify.features import DEFAULT_GROUPS, feature_names
from nucseg.errors import InvalidInputError

__all__ = ["Example", "ClassifierSettings", "ClassifierData", "TrainedClassifier", "train", "UNCERTAIN_BELOW"]

#: a nucleus whose most likely class has a lower probability than this is flagged uncertain
UNCERTAIN_BELOW = 0.6
LEARNERS = ("random_forest", "gradient_boosting")


@dataclasses.dataclass(frozen=True)
class Example:
    """Where a labelled nucleus came from: the image, the point clicked (full-resolution x, y) and its class."""

    image: str
    x: float
    y: float
    klass: str
    nucleus_id: int = 0


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
    """How a classifier is trained: the feature groups and the learner (all seeded: training is deterministic)."""

    groups: tuple[str, ...] = DEFAULT_GROUPS
    learner: str = "random_forest"
    n_estimators: int = 200
    random_state: int = 0
    uncertain_below: float = UNCERTAIN_BELOW

    def __post_init__(self) -> None:
        feature_names(self.groups)  # raises on unknown groups
        if self.learner not in LEARNERS:
            raise InvalidInputError(f"learner {self.learner!r}: choose among {', '.join(LEARNERS)}")
        if self.n_estimators < 1 or not 0 < self.uncertain_below <= 1:
            raise InvalidInputError("n_estimators must be >= 1 and uncertain_below in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "groups": list(self.groups)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierSettings:
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in fields}
        if "groups" in d:
            d["groups"] = tuple(d["groups"])
        return cls(**d)


@dataclasses.dataclass
class ClassifierData:
    """Everything a classifier is: its classes, settings, the segmentation model whose nuclei gave the features,
    the examples and their features (one row per example, columns `feature_names(settings.groups)`)."""

    classes: list[NucleusClass]
    settings: ClassifierSettings
    model: dict[str, Any]
    examples: list[Example]
    features: np.ndarray

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float64).reshape(len(self.examples), -1)
        names = [c.name for c in self.classes]
        for ex in self.examples:
            if ex.klass not in names:  # a class seen only in the examples gets its default colour
                self.classes.append(NucleusClass(ex.klass, color_for(ex.klass, [c.color for c in self.classes])))
                names.append(ex.klass)

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.settings.groups)

    def counts(self) -> dict[str, int]:
        """Examples per class, in the order of `classes`."""
        labels = [e.klass for e in self.examples]
        return {c.name: labels.count(c.name) for c in self.classes}


class TrainedClassifier:
    """A fitted learner with its classes; `predict` gives each nucleus's class and probabilities."""

    def __init__(self, data: ClassifierData, learner: Any, classes: list[str]):
        self.data, self.learner, self.classes = data, learner, classes
        self.colors = {c.name: c.color for c in data.classes}

    @property
    def settings(self) -> ClassifierSettings:
        return self.data.settings

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(n, len(classes)) class probabilities."""
        features = np.asarray(features, dtype=np.float64)
        if not len(features):
            return np.zeros((0, len(self.classes)))
        return self.learner.predict_proba(np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0))

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class names (object array), probability of that class, all probabilities) for each row."""
        proba = self.probabilities(features)
        best = proba.argmax(axis=1) if len(proba) else np.zeros(0, np.int64)
        names = np.array(self.classes, dtype=object)[best] if len(proba) else np.zeros(0, dtype=object)
        return names, proba[np.arange(len(best)), best] if len(proba) else np.zeros(0), proba


def _learner(settings: ClassifierSettings):
    if settings.learner == "gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=settings.n_estimators, learning_rate=0.1,
                                              class_weight="balanced", random_state=settings.random_state)
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=settings.n_estimators, class_weight="balanced",
                                  random_state=settings.random_state, n_jobs=1)


def train(data: ClassifierData) -> TrainedClassifier:
    """Fit the learner on the examples (deterministic: the same data and settings give the same classifier).

    Raises:
        InvalidInputError: fewer than two classes have examples.
    """
    labels = [e.klass for e in data.examples]
    present = [c.name for c in data.classes if c.name in labels]
    if len(present) < 2:
        have = ", ".join(f"{k} {v}" for k, v in data.counts().items() if v) or "none"
        raise InvalidInputError(f"a classifier needs examples of at least two classes (have: {have}); label "
                                "nuclei of another class")
    y = np.array([present.index(label) for label in labels])
    learner = _learner(data.settings)
    learner.fit(np.nan_to_num(data.features, nan=0.0, posinf=0.0, neginf=0.0), y)
    return TrainedClassifier(data, learner, present)


def class_counts(names: Sequence[str], classes: Sequence[str]) -> dict[str, int]:
    """How many of `names` fall in each of `classes` (in that order)."""
    values, counts = np.unique(np.asarray(list(names), dtype=object).astype(str), return_counts=True) \
        if len(names) else (np.zeros(0), np.zeros(0))
    found = dict(zip(values.tolist(), counts.tolist(), strict=True))
    return {c: int(found.get(c, 0)) for c in classes}
