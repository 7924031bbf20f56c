"""Evaluate job: score predicted labels against ground truth, list the errors, pair label files by name.

Shared by `nucseg evaluate` (files and folders: `pair_label_files`, `evaluate_files`) and the napari Evaluate widget
(arrays and stacks: `evaluate_planes`, which also builds the TP / FP / FN overlays and the list of errors). Both
score with `nucseg.metrics.report`, so the two faces give the same numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError, SlideReadError
from nucseg.io.names import pair_stem
from nucseg.progress import Progress

LABEL_SUFFIXES = (".tif", ".tiff", ".png")
PROB_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
#: columns of `errors_to_csv`, in order
ERROR_COLUMNS = ("kind", "label", "plane", "centroid_y", "centroid_x", "y0", "x0", "y1", "x1", "area_px")


@dataclasses.dataclass(frozen=True)
class ErrorObject:
    """A false positive (predicted, unmatched) or false negative (missed truth) nucleus.

    Attributes:
        kind: "FP" or "FN".
        label: its id in the prediction (FP) or the truth (FN).
        plane: index of its plane in a stack, () for a single image.
        centroid: (y, x) in data pixels of its plane.
        box: (y0, x0, y1, x1) bounding box in pixels (end exclusive).
        area: pixels.
    """

    kind: str
    label: int
    plane: tuple[int, ...]
    centroid: tuple[float, float]
    box: tuple[int, int, int, int]
    area: int

    def text(self) -> str:
        where = f"image {self.plane[0]}: " if self.plane else ""
        side = "missed truth" if self.kind == "FN" else "extra prediction"
        return (f"{self.kind}  {where}{side} #{self.label}  at (y {self.centroid[0]:.0f}, x {self.centroid[1]:.0f}), "
                f"{self.area} px")

    def row(self) -> dict[str, Any]:
        """The error as one CSV row (see `ERROR_COLUMNS`)."""
        return {"kind": self.kind, "label": self.label, "plane": "/".join(map(str, self.plane)),
                "centroid_y": round(self.centroid[0], 2), "centroid_x": round(self.centroid[1], 2),
                "y0": self.box[0], "x0": self.box[1], "y1": self.box[2], "x1": self.box[3], "area_px": self.area}


@dataclasses.dataclass
class Evaluation:
    """Everything one evaluation shows: per-image metric rows, a summary, overlay maps and the error list."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any] | None
    object_map: np.ndarray
    pixel_map: np.ndarray
    errors: list[ErrorObject]
    iou_threshold: float


def error_objects(kind: str, labels: np.ndarray, ids: np.ndarray, plane: tuple[int, ...]) -> list[ErrorObject]:
    """The nuclei `ids` of `labels` as `ErrorObject`s (centroid, box, area), in id order."""
    from scipy import ndimage as ndi

    if not len(ids):
        return []
    ids = np.sort(np.asarray(ids))  # compact index k + 1 <-> ids[k], whatever the ids' range
    position = np.searchsorted(ids, labels)
    hit = (position < len(ids)) & (ids[np.minimum(position, len(ids) - 1)] == labels)
    compact = np.where(hit, position + 1, 0).astype(np.int32)
    boxes = ndi.find_objects(compact, max_label=len(ids))
    centres = ndi.center_of_mass(np.ones(labels.shape), compact, np.arange(1, len(ids) + 1))
    areas = np.bincount(compact.ravel(), minlength=len(ids) + 1)[1:]
    return [ErrorObject(kind, int(ids[k]), plane, (float(c[0]), float(c[1])),
                        (b[0].start, b[1].start, b[0].stop, b[1].stop), int(areas[k]))
            for k, (b, c) in enumerate(zip(boxes, centres)) if b is not None]


def probability_like(prob: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A foreground probability map in [0, 1], resampled to the labels' shape when it is at another resolution
    (the widget's probability layers are at the model's resolution; uint8 maps are scaled from 0..255)."""
    prob = prob.astype(np.float32) / 255.0 if prob.dtype == np.uint8 else prob.astype(np.float32)
    if prob.shape != shape:
        if prob.ndim != len(shape):
            raise InvalidInputError(f"probability map {prob.shape} does not match the labels {shape}")
        from skimage.transform import resize

        prob = resize(prob, shape, order=1, preserve_range=True, anti_aliasing=False).astype(np.float32)
    return prob


def evaluate_planes(truth: Any, pred: Any, prob: Any | None, iou_threshold: float
                    ) -> Generator[Progress, None, Evaluation]:
    """Score `pred` against `truth` (2-D, or stacks scored plane by plane); yields `Progress` (planes scored).

    Each row is `nucseg.metrics.report.evaluate_labels` of a plane (what ``nucseg evaluate`` prints for it), the
    summary the mean over planes as in `evaluate_many`; the overlays are `object_overlay` / `pixel_confusion_map`;
    the errors are the FN then FP nuclei of each plane.
    """
    from nucseg.metrics.matching import match_instances
    from nucseg.metrics.overlays import object_overlay, pixel_confusion_map
    from nucseg.metrics.report import evaluate_labels

    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise InvalidInputError(f"truth {truth.shape} and prediction {pred.shape} differ in shape; pick layers of the "
                                "same image (a region's prediction covers only that region)")
    prob = None if prob is None else probability_like(np.asarray(prob), truth.shape)
    planes = list(np.ndindex(truth.shape[:-2]))
    rows: list[dict[str, Any]] = []
    errors: list[ErrorObject] = []
    object_map, pixel_map = np.zeros(truth.shape, np.uint8), np.zeros(truth.shape, np.uint8)
    for k, plane in enumerate(planes):
        yield Progress(k, len(planes), f"scoring image {k + 1} of {len(planes)}")
        t, p = truth[plane], pred[plane]
        metrics = evaluate_labels(t, p, None if prob is None else prob[plane], iou_threshold)
        match = match_instances(t, p, iou_threshold)
        object_map[plane] = object_overlay(t, p, match)
        pixel_map[plane] = pixel_confusion_map(t, p)
        errors += error_objects("FN", t, match.fn_ids, plane) + error_objects("FP", p, match.fp_ids, plane)
        rows.append({"image": f"image {plane[0]}" if plane else "value", **metrics, "n_truth": match.n_truth,
                     "n_pred": match.n_pred})
    summary = {"image": "MEAN", **_summary(rows)} if len(rows) > 1 else None
    yield Progress(len(planes), len(planes), "done")
    return Evaluation(rows, summary, object_map, pixel_map, errors, iou_threshold)


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The MEAN over images of every ratio (NaN skipped) and the sums of the counts, as in `evaluate_many`."""
    from nucseg.metrics.report import COUNT_KEYS, RATIO_KEYS

    summary: dict[str, Any] = {}
    for key in RATIO_KEYS:
        if any(key in r for r in rows):
            values = [float(r[key]) for r in rows if key in r and not math.isnan(float(r[key]))]
            summary[key] = float(np.mean(values)) if values else float("nan")
    summary.update({key: int(sum(r[key] for r in rows)) for key in (*COUNT_KEYS, "n_truth", "n_pred")})
    return summary


def sort_errors(errors: list[ErrorObject], key: str, descending: bool = False) -> list[ErrorObject]:
    """`errors` sorted by one of `ERROR_COLUMNS` (ties keep their order)."""
    if key not in ERROR_COLUMNS:
        raise InvalidInputError(f"cannot sort errors by {key!r}; choose one of {', '.join(ERROR_COLUMNS)}")
    return sorted(errors, key=lambda e: e.row()[key], reverse=descending)


def errors_to_csv(errors: Iterable[ErrorObject], path: str | Path, overwrite: bool = False) -> Path:
    """Write the FP / FN list as CSV (columns `ERROR_COLUMNS`; pixels of the label images), atomically."""
    from nucseg.io.export import atomic_output

    path = Path(path)
    with atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ERROR_COLUMNS))
        writer.writeheader()
        for error in errors:
            writer.writerow(error.row())
    return path


# -- label files (nucseg evaluate) ------------------------------------------------------------------------

def _prob_array(path: Path, header_only: bool = False) -> Any:
    """A probability map file decoded whole (PNG / TIFF through `nucseg.io.masks.read_whole_array`, which checks
    the declared size first), or with `header_only` its full shape, read without decoding a pixel."""
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix not in (".tif", ".tiff", ".npy", ".png"):
        raise InvalidInputError(f"{path}: unsupported file type {suffix!r}; use PNG, TIFF or NPY probability maps")
    from nucseg.io.base import read_errors, read_failure
    from nucseg.io.limits import check_declared_size
    from nucseg.io.masks import read_whole_array

    try:
        if suffix == ".npy":
            header = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only: shape and dtype
            if header_only:
                return tuple(header.shape)
            h, w = _plane_shape(tuple(header.shape))
            check_declared_size(path, h, w, whole=True, what="the probability map")
            return np.load(path, allow_pickle=False)
        if not header_only:
            return read_whole_array(path, "the probability map")
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                bands = len(im.getbands())
                return (im.height, im.width, *((bands,) if bands > 1 else ()))
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise SlideReadError(path, "the TIFF holds no image", "export the probability map again")
            return tuple(tif.series[0].levels[0].shape)
    except (SlideReadError, InvalidInputError):
        raise
    except (*read_errors(), MemoryError) as err:
        raise read_failure(path, err) from err


def _plane_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(H, W) of the plane `read_prob_file` takes from an array of `shape` (its first channel)."""
    if len(shape) == 3:
        return tuple(shape[1:]) if shape[0] <= 4 else tuple(shape[:2])
    return tuple(shape)


def _is_label_zarr(path: Path) -> bool:
    """A zarr folder holding one label image (ours from `nucseg predict --format zarr`, or any OME-NGFF labels)."""
    from nucseg.io.label_files import is_label_zarr

    return path.is_dir() and is_label_zarr(path)


def read_label_file(path: Path) -> np.ndarray:
    """A label image as a 2-D integer array, via `nucseg.io.masks.read_labels`; a label zarr (its full resolution)
    via `nucseg.io.label_files.open_label_file`."""
    from nucseg.io.masks import as_label_image, read_labels

    if _is_label_zarr(path):
        from nucseg.io.base import read_errors, read_failure
        from nucseg.io.label_files import open_label_file

        try:
            level = open_label_file(path).levels[0]  # type: ignore[union-attr]
            return as_label_image(np.asarray(level[...]), str(path))
        except (*read_errors(), MemoryError) as err:
            raise read_failure(path, err) from err
    return np.asarray(read_labels(path))


def read_prob_file(path: Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A foreground probability map (H, W); (C, H, W) or (H, W, C) stacks give their first channel.

    Args:
        shape: the labels' (H, W), when known: a map declaring another size is refused before it is decoded.

    Raises:
        InvalidInputError: another shape than the labels', or not 2-D.
        SlideReadError: unreadable, or too large to read whole.
    """
    if shape is not None:
        declared = _plane_shape(_prob_array(path, header_only=True))
        if declared != tuple(shape):
            raise InvalidInputError(f"{path}: the probability map has shape {declared}, the labels {tuple(shape)}; "
                                    "give the map of the same image and region")
    arr = _prob_array(path)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] <= 4 else arr[..., 0]
    if arr.ndim != 2:
        raise InvalidInputError(f"{path}: a probability map must be (H, W) or (C, H, W), got shape {arr.shape}")
    return arr.astype(np.float32)


def _files(folder: Path, suffixes: tuple[str, ...], zarrs: bool = False) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if (path.is_file() and path.suffix.lower() in suffixes) or (zarrs and _is_label_zarr(path)):
            found.setdefault(pair_stem(path), path)
    return found


FilePair = tuple[str, Path, Path, "Path | None"]


def pair_label_files(truth: Path, pred: Path, prob: Path | None = None) -> tuple[list[FilePair], list[str]]:
    """(name, truth file, prediction file, probability file or None) for two files or two folders.

    Folders pair by `nucseg.io.names.pair_stem`. Returns the pairs and the names found on one side only.

    Raises:
        InvalidInputError: a path is missing, a file is paired with a folder, or nothing pairs.
    """
    for name, value in (("truth", truth), ("pred", pred), ("prob", prob)):
        if value is not None and not value.exists():
            raise InvalidInputError(f"--{name} {value} does not exist")
    folders = [value.is_dir() and not _is_label_zarr(value) for value in (truth, pred)]  # a label zarr is one image
    if folders[0] != folders[1]:
        raise InvalidInputError("--truth and --pred must both be label images (files, or label zarrs) or both be "
                                f"folders of them: {truth if folders[0] else pred} is a folder of files")
    if not folders[0]:
        if prob is not None and prob.is_dir():
            raise InvalidInputError("--prob must be a file when --truth and --pred are files")
        return [(pair_stem(pred), truth, pred, prob)], []
    if prob is not None and not prob.is_dir():
        raise InvalidInputError("--prob must be a folder when --truth and --pred are folders")
    truths, preds = _files(truth, LABEL_SUFFIXES, zarrs=True), _files(pred, LABEL_SUFFIXES, zarrs=True)
    probs = _files(prob, PROB_SUFFIXES) if prob is not None else {}
    common = sorted(set(truths) & set(preds))
    if not common:
        raise InvalidInputError(f"no file names in common between {truth} ({len(truths)} label images) and "
                                f"{pred} ({len(preds)}); pairs need the same name, e.g. a.png and a_labels.tif")
    if prob is not None and set(common) - set(probs):
        raise InvalidInputError(f"--prob {prob} has no probability map for {sorted(set(common) - set(probs))[:5]}")
    return [(name, truths[name], preds[name], probs.get(name)) for name in common], sorted(set(truths) ^ set(preds))


def evaluate_files(pairs: list[FilePair], iou_threshold: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`evaluate_many` over label files read one pair at a time (memory holds one pair)."""
    from nucseg.metrics.report import evaluate_many

    def load() -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]:
        for name, truth, pred, prob in pairs:
            labels = read_label_file(truth)
            yield name, labels, read_label_file(pred), read_prob_file(prob, labels.shape) if prob else None

    return evaluate_many(load(), iou_threshold=iou_threshold)
