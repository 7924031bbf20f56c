"""Apply a trained classifier to segmented nuclei, block by block: the exports' per-block hook (`ClassAnnotator`),
and `iter_classify` for the viewer (a generator of progress records that returns every nucleus's class).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from nucseg.classify.features import block_features
from nucseg.classify.learner import TrainedClassifier
from nucseg.errors import InvalidInputError
from nucseg.io.label_blocks import LabelBlock, iter_label_blocks

__all__ = ["ClassAnnotator", "ClassifiedNuclei", "ClassifyProgress", "iter_classify", "class_summary",
           "CLASS_COLUMNS"]

CLASS_COLUMNS = ("class", "class_probability")


class ClassAnnotator:
    """The per-block hook of `nucseg.io.export.iter_nuclei` / `write_nuclei_tables`: adds the ``class`` and
    ``class_probability`` columns, gives each class's QuPath classification, and counts the nuclei per class."""

    columns = CLASS_COLUMNS

    def __init__(self, trained: TrainedClassifier, um_per_px: float):
        self.trained, self.um_per_px = trained, float(um_per_px)
        self.counts: collections.Counter = collections.Counter()
        self.uncertain = 0

    def __call__(self, block: LabelBlock, pixels: np.ndarray, measured: dict[str, np.ndarray]
                 ) -> dict[str, np.ndarray]:
        features = block_features(block, pixels, self.um_per_px, self.trained.settings.groups, measured)
        names, probability, _ = self.trained.predict(features)
        self.counts.update(names.tolist())
        self.uncertain += int((probability < self.trained.settings.uncertain_below).sum())
        return {"class": names, "class_probability": probability}

    def classification(self, name: str) -> dict[str, Any]:
        """QuPath's ``classification`` of a class: {name, color: [r, g, b]}."""
        return {"name": name, "color": [int(c) for c in self.trained.colors.get(name, (128, 128, 128))]}

    def summary(self, area_mm2: float | None = None) -> dict[str, Any]:
        """Counts per class (every class of the classifier, zero included); per mm² of `area_mm2` when known."""
        return class_summary(dict(self.counts), self.trained.classes, area_mm2, self.uncertain)


def class_summary(counts: dict[str, int], classes: Sequence[str], area_mm2: float | None = None,
                  uncertain: int | None = None) -> dict[str, Any]:
    """{counts, per_mm2 (when the area is known), area_mm2, uncertain} with every class of `classes`."""
    counts = {c: int(counts.get(c, 0)) for c in classes}
    out: dict[str, Any] = {"counts": counts}
    if area_mm2:
        out["area_mm2"] = round(float(area_mm2), 6)
        out["per_mm2"] = {c: round(n / area_mm2, 2) for c, n in counts.items()}
    if uncertain is not None:
        out["uncertain"] = int(uncertain)
    return out


@dataclasses.dataclass
class ClassifyProgress:
    """Blocks of the label map done / total, and nuclei classified so far."""

    done: int
    total: int
    nuclei: int


@dataclasses.dataclass
class ClassifiedNuclei:
    """Every classified nucleus: label id, centre (full-resolution x, y; QuPath's convention), class and its
    probability, and all class probabilities (columns `classes`)."""

    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    names: np.ndarray
    probability: np.ndarray
    probabilities: np.ndarray
    classes: list[str]
    stopped: bool = False

    @classmethod
    def empty(cls, classes: list[str]) -> ClassifiedNuclei:
        z = np.zeros(0)
        return cls(np.zeros(0, np.int64), z, z, np.zeros(0, object), z, np.zeros((0, len(classes))), classes)

    def __len__(self) -> int:
        return int(self.ids.size)

    def counts(self, inside: np.ndarray | None = None) -> dict[str, int]:
        """Nuclei per class (every class, zero included), of all or of those where `inside` is True."""
        names = self.names if inside is None else self.names[inside]
        values, n = np.unique(names.astype(str), return_counts=True) if names.size else ([], [])
        found = dict(zip(list(values), [int(k) for k in n], strict=True))
        return {c: found.get(c, 0) for c in self.classes}

    def most_uncertain(self, exclude: Sequence[int] = (), k: int = 20) -> np.ndarray:
        """Indices of the `k` nuclei whose two likeliest classes are closest (smallest margin), skipping the ids in
        `exclude` (nuclei already labelled)."""
        if not len(self):
            return np.zeros(0, np.int64)
        top = np.sort(self.probabilities, axis=1)
        margin = top[:, -1] - (top[:, -2] if top.shape[1] > 1 else 0)
        margin = np.where(np.isin(self.ids, np.asarray(list(exclude), dtype=np.int64)), np.inf, margin)
        order = np.argsort(margin, kind="stable")
        return order[:k][np.isfinite(margin[order[:k]])]


def iter_classify(labels: Any, image: Any, trained: TrainedClassifier, um_per_px: float, *,
                  offset: Sequence[float] = (0, 0), chunk: int = 1024, stop: Any = None
                  ) -> Generator[ClassifyProgress, None, ClassifiedNuclei]:
    """Classify every nucleus of `labels`, block by block (`nucseg.io.label_blocks`).

    Args:
        labels: instance labels (H, W), numpy, zarr or dask.
        image: RGB pixels aligned with `labels` ((H, W, 3) array, lazy or not), or a `Slide` they lie on (see
            `nucseg.io.export.iter_nuclei`).
        trained: the classifier; um_per_px: microns per label pixel (the image's, else the model's resolution).
        offset: (y0, x0) of `labels` in full-resolution pixels (the centres are given in those).
        chunk: block side in pixels (a progress record per block).
        stop: a `threading.Event`; when set, the run ends after the current block, returning the blocks done
            (marked ``stopped``).

    Yields:
        `ClassifyProgress` after each block.

    Returns:
        `ClassifiedNuclei`.
    """
    from nucseg.io.export import _image_reader

    if image is None:
        raise InvalidInputError("classifying nuclei needs the image (H&E pixels) their labels were made from")
    read = _image_reader(image, labels, offset, 1.0)
    h, w = (int(s) for s in labels.shape)
    total = max(1, -(-h // chunk) * -(-w // chunk))
    parts: list[tuple] = []
    nuclei = done = 0
    for block in iter_label_blocks(labels, chunk=chunk, margin=min(256, chunk)):
        (wy, wx), (bh, bw) = block.origin, block.labels.shape
        features = block_features(block, read(wy, wy + bh, wx, wx + bw), um_per_px, trained.settings.groups)
        names, probability, proba = trained.predict(features)
        flat = block.labels.ravel()
        area = np.maximum(np.bincount(flat, minlength=block.ids.size + 1)[1:], 1)
        rr, cc = np.divmod(np.arange(flat.size, dtype=np.float64), bw)
        cy = np.bincount(flat, rr, minlength=block.ids.size + 1)[1:] / area + wy + 0.5 + offset[0]
        cx = np.bincount(flat, cc, minlength=block.ids.size + 1)[1:] / area + wx + 0.5 + offset[1]
        parts.append((block.ids, cx, cy, names, probability, proba))
        nuclei += int(block.ids.size)
        margin = min(256, chunk)
        home = (((wy + margin) // chunk if wy else 0) * -(-w // chunk) + ((wx + margin) // chunk if wx else 0))
        done = max(done, min(total, home + 1))
        yield ClassifyProgress(done, total, nuclei)
        if stop is not None and stop.is_set():
            break
    stopped = bool(stop is not None and stop.is_set())
    if not parts:
        return dataclasses.replace(ClassifiedNuclei.empty(list(trained.classes)), stopped=stopped)
    ids, x, y, names, probability, proba = (np.concatenate(p) for p in zip(*parts, strict=True))
    return ClassifiedNuclei(ids.astype(np.int64), x, y, names, probability, proba, list(trained.classes), stopped)
