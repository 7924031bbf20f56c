"""Labelled examples from points: a CSV of ``image,x,y,class`` (the CLI's, and what the Classify dock keeps), or
points on a label map in memory. The nucleus under each point is the example; a point on background is skipped
and reported.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.classify.features import block_features, feature_names
from nucseg.classify.learner import Example
from nucseg.errors import InvalidInputError
from nucseg.io.label_blocks import iter_label_blocks

__all__ = ["POINT_COLUMNS", "Point", "read_points_csv", "write_points_csv", "examples_from_labels",
           "um_per_pixel", "SkippedPoint", "points_region", "iter_examples_from_points", "examples_in_windows"]

POINT_COLUMNS = ("image", "x", "y", "class")
#: pixels around an image's points that are segmented and measured with them (their neighbours count)
CONTEXT_PX = 384


@dataclasses.dataclass(frozen=True)
class Point:
    """A labelled point: image file, full-resolution x, y (pixels, QuPath's convention), class name."""

    image: Path
    x: float
    y: float
    klass: str


@dataclasses.dataclass(frozen=True)
class SkippedPoint:
    point: Point
    reason: str


def um_per_pixel(mpp: float | None, model_mpp: float) -> float:
    """The scale of the classifier's features: the image's microns per pixel when known, else the resolution the
    nuclei were segmented at (the model's: what the segmentation assumed too)."""
    return float(mpp) if mpp else float(model_mpp)


def read_points_csv(path: str | Path) -> list[Point]:
    """Points of a CSV with columns image, x, y, class (image absolute or relative to the CSV's folder).

    Raises:
        InvalidInputError: a missing column, a bad number, an empty class, or no point at all (naming the line).
    """
    from nucseg.classify.classes import check_class_name

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in POINT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InvalidInputError(f"{path}: missing column(s) {', '.join(missing)}; the points CSV needs "
                                        "image,x,y,class (x, y in full-resolution pixels)")
            points = []
            for line, row in enumerate(reader, start=2):
                try:
                    x, y = float(row["x"]), float(row["y"])
                    if not (np.isfinite(x) and np.isfinite(y)):
                        raise ValueError
                    klass = check_class_name(row["class"] or "")
                except (ValueError, TypeError, InvalidInputError):
                    raise InvalidInputError(f"{path} line {line}: give x, y as numbers (full-resolution pixels) "
                                            "and a class name without commas or quotes") from None
                if not (row["image"] or "").strip():
                    raise InvalidInputError(f"{path} line {line}: the image column is empty")
                image = Path(row["image"] or "").expanduser()
                points.append(Point(image if image.is_absolute() else (path.parent / image), x, y, klass))
    except OSError as err:
        raise InvalidInputError(f"cannot read {path}: {err.strerror or err}") from err
    if not points:
        raise InvalidInputError(f"{path} has no points; add rows image,x,y,class")
    return points


def write_points_csv(path: str | Path, points: Sequence[Point], relative_to: Path | None = None) -> Path:
    """Write points as image,x,y,class (atomically); images relative to `relative_to` when given."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(POINT_COLUMNS)
        for p in points:
            image = os.path.relpath(p.image, relative_to) if relative_to else str(p.image)
            writer.writerow([image, repr(float(p.x)), repr(float(p.y)), p.klass])
    os.replace(tmp, path)
    return path


def points_region(points: Sequence[Point], shape: tuple[int, int], context: int = CONTEXT_PX
                  ) -> tuple[int, int, int, int]:
    """(y, x, h, w) around `points` with `context` pixels each side, within an image of `shape`."""
    ys, xs = [p.y for p in points], [p.x for p in points]
    y0, x0 = max(0, int(min(ys)) - context), max(0, int(min(xs)) - context)
    y1, x1 = min(shape[0], int(max(ys)) + context + 1), min(shape[1], int(max(xs)) + context + 1)
    return y0, x0, max(1, y1 - y0), max(1, x1 - x0)


def examples_from_labels(labels: np.ndarray, read_pixels: Callable[[int, int, int, int], np.ndarray],
                         points: Sequence[Point], um_per_px: float, groups: Sequence[str], *,
                         offset: Sequence[int] = (0, 0), image_name: str | None = None
                         ) -> tuple[list[Example], np.ndarray, list[SkippedPoint]]:
    """The examples of `points` on a label map: the nucleus under each point, its features (with its neighbours
    in the map as context).

    Args:
        labels: instance labels (h, w) of a window whose top-left is `offset` (y, x) in full-resolution pixels.
        read_pixels: (y0, y1, x0, x1) in the window -> RGB pixels.
        points: full-resolution points; um_per_px: `um_per_pixel`; groups: feature groups.
        image_name: what the examples record as their image (default: each point's path).

    Returns:
        (examples, features (n, f), skipped points: on background or outside the window).
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    wanted: dict[int, list[Point]] = {}
    skipped: list[SkippedPoint] = []
    for p in points:
        r, c = int(np.floor(p.y)) - int(offset[0]), int(np.floor(p.x)) - int(offset[1])
        if not (0 <= r < h and 0 <= c < w):
            skipped.append(SkippedPoint(p, "outside the image"))
        elif labels[r, c] == 0:
            skipped.append(SkippedPoint(p, "on background (no nucleus under the point)"))
        else:
            wanted.setdefault(int(labels[r, c]), []).append(p)
    examples: list[Example] = []
    rows: list[np.ndarray] = []
    if wanted:
        ids = np.array(sorted(wanted), dtype=np.int64)
        for block in iter_label_blocks(labels):
            mine = np.intersect1d(block.ids, ids)
            if not mine.size:
                continue
            (wy, wx), (bh, bw) = block.origin, block.labels.shape
            rows_of_mine = np.searchsorted(block.ids, mine)
            features = block_features(block, read_pixels(wy, wy + bh, wx, wx + bw), um_per_px, groups,
                                      select=rows_of_mine)
            for k, row in zip(mine, features, strict=True):
                for p in wanted[int(k)]:
                    examples.append(Example(image_name or str(p.image), p.x, p.y, p.klass, int(k)))
                    rows.append(row)
    return examples, np.array(rows, dtype=np.float64).reshape(len(rows), len(feature_names(groups))), skipped


def examples_in_windows(labels: Any, read_pixels: Callable[[int, int, int, int], np.ndarray],
                        points: Sequence[Point], um_per_px: float, groups: Sequence[str], *, image_name: str,
                        cell: int = 256, context_um: float = 40.0
                        ) -> tuple[list[Example], np.ndarray, list[SkippedPoint]]:
    """`examples_from_labels` over a large (lazy) label map: the points are grouped by `cell` x `cell` squares and
    each group is measured in its square plus `context_um` around (its nuclei's neighbours: the features look 25 µm
    around a nucleus), so a few clicks over a slide cost a few small windows, not the slide.

    Args:
        labels: instance labels (H, W) aligned with full-resolution pixels (numpy, zarr or dask).
        read_pixels: (y0, y1, x0, x1) in those pixels -> RGB.
    """
    h, w = (int(s) for s in labels.shape)
    context = int(np.ceil(context_um / um_per_px))
    groups_of: dict[tuple[int, int], list[Point]] = {}
    for p in points:
        groups_of.setdefault((int(p.y) // cell, int(p.x) // cell), []).append(p)
    examples: list[Example] = []
    rows, skipped = [], []
    for (gy, gx), pts in sorted(groups_of.items()):
        y0, x0 = max(0, gy * cell - context), max(0, gx * cell - context)
        y1, x1 = min(h, (gy + 1) * cell + context), min(w, (gx + 1) * cell + context)
        if y1 <= y0 or x1 <= x0:
            skipped += [SkippedPoint(p, "outside the image") for p in pts]
            continue
        window = np.asarray(labels[y0:y1, x0:x1])
        pixels = read_pixels(y0, y1, x0, x1)
        got, feats, skip = examples_from_labels(window, lambda a, b, c, d, px=pixels: px[a:b, c:d], pts, um_per_px,
                                                groups, offset=(y0, x0), image_name=image_name)
        examples += got
        rows.append(feats)
        skipped += skip
    features = np.concatenate(rows) if rows else np.zeros((0, len(feature_names(groups))))
    return examples, features, skipped


@dataclasses.dataclass
class ImageProgress:
    """Images done / total, and the one being worked on."""

    done: int
    total: int
    image: str


def _labels_for(image: Path, labels_dir: Path | None) -> Path | None:
    if labels_dir is None:
        return None
    from nucseg.io.names import plain_stem

    path = labels_dir / f"{plain_stem(image)}_labels.tif"
    if not path.is_file():
        raise InvalidInputError(f"no labels for {image}: expected {path} (named <stem>_labels.tif, as `nucseg "
                                "predict` writes them)")
    return path


def iter_examples_from_points(points: Sequence[Point], groups: Sequence[str], *, labels_dir: Path | None = None,
                              mpp: float | None = None, config: Any = None, image_name: Callable[[Path], str]
                              | None = None) -> Generator[ImageProgress, None, tuple[list, np.ndarray, list]]:
    """Examples of points over their images: each image's nuclei from ``labels_dir/<stem>_labels.tif`` or
    segmented with `config` (default model) in a window around its points.

    Args:
        mpp: microns per pixel of images whose file does not say (``--mpp``).
        image_name: how the examples record an image (default: its absolute path).

    Returns:
        (examples, features, skipped points).
    """
    from nucseg.config import InferenceConfig
    from nucseg.inference.predict import iter_predict
    from nucseg.io.label_files import open_label_file
    from nucseg.io.slides import open_slide
    from nucseg.models.registry import resolve_model

    config = config or InferenceConfig()
    model_mpp = resolve_model(config.model).mpp
    by_image: dict[Path, list[Point]] = {}
    for p in points:
        by_image.setdefault(Path(p.image).resolve(), []).append(p)
    examples: list[Example] = []
    rows: list[np.ndarray] = []
    skipped: list[SkippedPoint] = []
    for i, (image, pts) in enumerate(by_image.items()):
        yield ImageProgress(i, len(by_image), str(image))
        if not image.exists():
            raise InvalidInputError(f"{image}: no such image (named in the points CSV; paths are absolute or "
                                    "relative to the CSV)")
        labels_path = _labels_for(image, labels_dir)
        with open_slide(image) as slide:
            image_mpp = slide.mpp or mpp
            if labels_path is not None:
                found = open_label_file(labels_path)
                if found is None:
                    raise InvalidInputError(f"{labels_path} holds no instance labels")
                if tuple(found.levels[0].shape[:2]) != tuple(slide.shape):
                    raise InvalidInputError(f"{labels_path} is {tuple(found.levels[0].shape[:2])} px but {image} is "
                                            f"{tuple(slide.shape)}; give the labels of this image")
                y, x, h, w = points_region(pts, slide.shape)
                labels = np.asarray(found.levels[0][y:y + h, x:x + w])
            else:
                y, x, h, w = points_region(pts, slide.shape)
                result = yield from iter_predict(slide, config, mpp=image_mpp, region=(y, x, h, w))
                labels = np.asarray(result.labels)
            pixels = slide.read_region(0, y, x, h, w)
        got, feats, skip = examples_from_labels(
            labels, lambda y0, y1, x0, x1, px=pixels: px[y0:y1, x0:x1], pts, um_per_pixel(image_mpp, model_mpp),
            groups, offset=(y, x), image_name=image_name(image) if image_name else str(image))
        examples += got
        rows.append(feats)
        skipped += skip
    features = np.concatenate(rows) if rows else np.zeros((0, len(feature_names(groups))))
    return examples, features, skipped
