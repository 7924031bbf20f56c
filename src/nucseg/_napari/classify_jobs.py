"""The Classify dock's jobs, run in workers: generators over a captured `NucleiSource` (no Qt, no layer access)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.classify.apply import ClassAnnotator, ClassifiedNuclei, iter_classify
from nucseg.classify.classes import NucleusClass
from nucseg.classify.examples import Point, examples_in_windows, um_per_pixel
from nucseg.classify.learner import ClassifierData, ClassifierSettings, TrainedClassifier, train

from .classify_view import NucleiSource, pixel_reader


def load_image(source: NucleiSource) -> Any:
    """The image's pixels (array) or slide; call it in the worker."""
    from .layer_source import image_input

    return image_input(source.image_layer).load()


def _scale(source: NucleiSource) -> float:
    return um_per_pixel(source.mpp, source.model_mpp)


def train_job(source: NucleiSource, points: Sequence[Point], classes: list[NucleusClass],
              settings: ClassifierSettings) -> Generator[None, None, tuple[TrainedClassifier, list]]:
    """Features of the clicked nuclei (in small windows around them), then the classifier."""
    oy, ox = source.offset
    image = load_image(source)
    local = [dataclasses.replace(p, x=p.x - ox, y=p.y - oy) for p in points]  # label-map pixels
    examples, features, skipped = examples_in_windows(source.labels, pixel_reader(source, image), local,
                                                      _scale(source), settings.groups, image_name=source.key)
    examples = [dataclasses.replace(e, x=e.x + ox, y=e.y + oy) for e in examples]
    yield None
    return train(ClassifierData(classes, settings, dict(source.model), examples, features)), skipped


def window(source: NucleiSource, box: tuple[int, int, int, int]) -> tuple[int, int, int, int, bool]:
    """(y0, x0, y1, x1) of a full-resolution box in the label map, clipped; and whether it is the whole map."""
    oy, ox = source.offset
    h, w = (int(s) for s in source.labels.shape[-2:])
    y0, x0 = max(box[0] - oy, 0), max(box[1] - ox, 0)
    y1, x1 = min(box[0] + box[2] - oy, h), min(box[1] + box[3] - ox, w)
    return y0, x0, y1, x1, (y0, x0, y1, x1) == (0, 0, h, w)


def _aligned(image: Any, offset: tuple[int, int], shape: Sequence[int]) -> Any:
    """A slide as it is; an array cut to the label window at `offset` (full-resolution pixels)."""
    if hasattr(image, "read_region"):
        return image
    return image[offset[0]:offset[0] + shape[0], offset[1]:offset[1] + shape[1]]


def apply_job(source: NucleiSource, trained: TrainedClassifier, box: tuple[int, int, int, int], stop: Any
              ) -> Generator[Any, None, ClassifiedNuclei]:
    """Classify the nuclei of `box` (full-resolution y, x, h, w) block by block (`iter_classify`)."""
    y0, x0, y1, x1, whole = window(source, box)
    labels = source.labels if whole else np.asarray(source.labels[y0:y1, x0:x1])
    offset = (source.offset[0] + y0, source.offset[1] + x0)
    image = _aligned(load_image(source), offset, labels.shape)
    return (yield from iter_classify(labels, image, trained, _scale(source), offset=offset, stop=stop))


def merge(old: ClassifiedNuclei | None, new: ClassifiedNuclei) -> ClassifiedNuclei:
    """`new`'s nuclei, plus those of `old` it did not classify again (same classes)."""
    if old is None or not len(old) or list(old.classes) != list(new.classes):
        return new
    keep = ~np.isin(old.ids, new.ids)
    fields = ("ids", "x", "y", "names", "probability", "probabilities")
    merged = [np.concatenate([getattr(old, f)[keep], getattr(new, f)]) for f in fields]
    return ClassifiedNuclei(*merged, classes=list(new.classes), stopped=new.stopped)


def export_job(source: NucleiSource, trained: TrainedClassifier, folder: Path, stem: str
               ) -> Generator[None, None, dict[str, Path]]:
    """<stem>_nuclei.csv and .geojson with each nucleus's class, and <stem>_classes.json (counts, per mm²)."""
    from nucseg.io.export import write_nuclei_tables

    image = _aligned(load_image(source), source.offset, source.labels.shape[-2:])
    yield None
    annotate = ClassAnnotator(trained, _scale(source))
    paths = write_nuclei_tables(source.labels, csv_path=folder / f"{stem}_nuclei.csv",
                                geojson_path=folder / f"{stem}_nuclei.geojson", image=image, mpp=source.mpp,
                                offset=source.offset, annotate=annotate)
    h, w = source.labels.shape[-2:]
    area = h * w * source.mpp**2 / 1e6 if source.mpp else None
    summary = {"image": source.key, "model": source.model, **annotate.summary(area)}
    (folder / f"{stem}_classes.json").write_text(json.dumps(summary, indent=2))
    return paths
