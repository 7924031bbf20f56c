"""Export instance labels: QuPath GeoJSON, per-nucleus measurement CSV, OME-TIFF (pyramidal) and zarr.

Coordinates follow QuPath: origin at the top-left CORNER of the full-resolution image, x right, y down; pixel (row r,
column c) covers [c, c+1) x [r, r+1). So a centroid is the mean pixel index + 0.5, and a `find_contours` polygon
(which runs on the grid of pixel centres) is shifted by +0.5: its edges lie on pixel borders along straight runs and
cut the corners of boundary pixels diagonally. ``offset`` = (y0, x0) is the label map's origin and ``downsample``
the size of one label pixel, both in full-resolution pixels.

Writers refuse to replace an existing file unless ``overwrite=True`` (`StoreError`) and write to a temporary name in
the same folder, renamed into place when complete. Labels may be numpy (the main path) or lazy zarr / dask arrays,
read in windows of `CHUNK` pixels (`iter_label_chunks`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import InvalidInputError, StoreError

__all__ = ["CHUNK", "LabelChunk", "atomic_output", "iter_label_chunks", "labels_to_geojson", "measure_nuclei",
           "write_geojson", "write_labels_ome_tiff", "write_labels_zarr", "write_measurements_csv"]

CHUNK = 2048
#: nuclei are assumed smaller than this (pixels) when lazy labels are read in windows
MARGIN = 256
NUCLEUS_COLOR = (220, 50, 50)


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed. Raises
    `StoreError` when `path` exists and `overwrite` is False, or when the folder cannot be written."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise StoreError(f"{path} already exists; remove it, choose another name, or pass overwrite=True "
                         "(--overwrite on the command line)")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if path.is_dir() and not path.is_symlink():  # overwrite a folder (zarr): move it aside first
            trash = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as err:
        raise StoreError(f"cannot write {path}: {err.strerror or err}; check the folder exists and is writable") from err
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _check_labels(labels: Any) -> Any:
    labels = labels if hasattr(labels, "shape") and hasattr(labels, "dtype") else np.asarray(labels)
    if len(labels.shape) != 2:
        raise InvalidInputError(f"labels must be 2-D (height, width), got shape {tuple(labels.shape)}")
    if np.dtype(labels.dtype).kind not in "uib":
        raise InvalidInputError(f"labels have dtype {labels.dtype}; expected integer nucleus ids (0 = background)")
    if isinstance(labels, np.ndarray) and labels.size and np.dtype(labels.dtype).itemsize > 4 and (
            labels.max() > np.iinfo(np.uint32).max or labels.min() < 0):
        raise InvalidInputError("labels hold ids outside 0..4294967295; relabel them (skimage.segmentation."
                                "relabel_sequential) before export")
    return labels


@dataclasses.dataclass(frozen=True)
class LabelChunk:
    """A numpy `window` of labels whose top-left is at `origin` (y, x) in the label map, read for the chunk
    `core` (y0, x0, y1, x1). The chunk owns the objects whose bounding-box top-left lies in its core, so every
    object belongs to exactly one chunk."""

    window: np.ndarray
    origin: tuple[int, int]
    core: tuple[int, int, int, int]

    def owned(self, top: np.ndarray, left: np.ndarray) -> np.ndarray:
        """Which objects (bounding-box top/left in window coordinates) this chunk owns."""
        y, x = top + self.origin[0], left + self.origin[1]
        y0, x0, y1, x1 = self.core
        return (y >= y0) & (y < y1) & (x >= x0) & (x < x1)


def iter_label_chunks(labels: Any, chunk: int = CHUNK, margin: int = MARGIN) -> Iterator[LabelChunk]:
    """Windows over a label map, each reaching `margin` pixels around a `chunk` x `chunk` core.

    An in-memory numpy array, or any array no larger than one chunk, comes whole in one window. Objects larger
    than `margin` may be cut at window edges of lazy arrays.
    """
    h, w = (int(s) for s in labels.shape)
    if isinstance(labels, np.ndarray) or (h <= chunk and w <= chunk):
        yield LabelChunk(np.asarray(labels), (0, 0), (0, 0, h, w))
        return
    for y in range(0, h, chunk):
        for x in range(0, w, chunk):
            wy, wx = max(0, y - margin), max(0, x - margin)
            window = np.asarray(labels[wy:min(h, y + chunk + margin), wx:min(w, x + chunk + margin)])
            yield LabelChunk(window, (wy, wx), (y, x, min(h, y + chunk), min(w, x + chunk)))


def _compact(window: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels safe for `find_objects` / `regionprops` (small ids), and the original id of each new id if remapped."""
    top = int(window.max()) if window.size else 0
    if top <= 4 * window.size + 1024:
        return window.astype(np.intp, copy=False), None
    uniq, inverse = np.unique(window, return_inverse=True)
    if uniq[0] != 0:
        uniq, inverse = np.r_[0, uniq], inverse + 1
    return inverse.reshape(window.shape).astype(np.intp), uniq.astype(np.int64)


def _simplify(rings: list[np.ndarray], tol: float = 0.5) -> list[np.ndarray]:
    """Douglas-Peucker (tolerance `tol` px, distance to the segment) on closed rings, all rings and all segments
    split in the same vectorised rounds: what `skimage.measure.approximate_polygon` does, without its ~4 ms of Python
    per nucleus. Rings that would drop below a triangle are kept whole."""
    if not rings:
        return []
    lengths, pts = np.array([len(r) for r in rings]), np.concatenate(rings)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    ring_of = np.repeat(np.arange(len(rings)), lengths)
    far = ((pts - pts[starts][ring_of]) ** 2).sum(1)
    order = np.lexsort((-far, ring_of))
    keep = np.zeros(len(pts), bool)
    keep[np.r_[starts, ends - 1, order[np.r_[True, ring_of[order][1:] != ring_of[order][:-1]]]]] = True
    while True:
        idx = np.flatnonzero(keep)
        seg = np.clip(np.searchsorted(idx, np.arange(len(pts)), side="right") - 1, 0, idx.size - 2)
        a, ab = pts[idx[seg]], pts[idx[seg + 1]] - pts[idx[seg]]
        ap, length2 = pts - a, (ab**2).sum(1)
        t = np.clip((ap * ab).sum(1) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
        dist = np.hypot(*(ap - t[:, None] * ab).T)
        dist[keep] = 0.0
        order = np.lexsort((-dist, seg))
        first = order[np.r_[True, seg[order][1:] != seg[order][:-1]]]  # farthest point of each segment
        split = first[dist[first] > tol]
        if not split.size:
            break
        keep[split] = True
    out = [pts[s:e][keep[s:e]] for s, e in zip(starts, ends, strict=True)]
    return [o if len(o) >= 4 else r for o, r in zip(out, rings, strict=True)]


def _exterior_ring(mask: np.ndarray) -> np.ndarray | None:
    """(N, 2) closed (row, col) exterior ring of a boolean crop, centre convention; the largest part if several."""
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    filled = ndi.binary_fill_holes(np.pad(mask, 1)).astype(np.float32)  # exterior only
    rings = find_contours(filled, 0.5)
    return max(rings, key=lambda r: abs(_signed_area(r))) - 1.0 if rings else None  # - 1: undo the pad


def _signed_area(ring: np.ndarray) -> float:
    y, x = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _extra_measurements(measurements: Any) -> dict[int, dict[str, Any]]:
    """{id: {name: JSON-safe value}} from `measure_nuclei` rows (with "id") or a {id: {name: value}} mapping."""
    items = measurements.items() if isinstance(measurements, Mapping) else [(r["id"], r) for r in measurements or ()]
    out = {}
    for key, row in items:
        values = {n: v.item() if isinstance(v, np.generic) else v for n, v in row.items() if n != "id"}
        out[int(key)] = {n: None if isinstance(v, float) and not math.isfinite(v) else v for n, v in values.items()}
    return out


def labels_to_geojson(labels: Any, *, offset: Sequence[float] = (0, 0), downsample: float = 1.0,
                      measurements: Any = None, classification: str = "Nucleus",
                      color: Sequence[int] = NUCLEUS_COLOR) -> dict[str, Any]:
    """A QuPath-compatible GeoJSON FeatureCollection with one Polygon detection per nucleus.

    Args:
        labels: instance labels (H, W), 0 = background; numpy, or lazy zarr / dask for slides.
        offset: (y0, x0) of the label map's top-left in full-resolution pixels.
        downsample: full-resolution pixels per label pixel.
        measurements: optional per-nucleus numbers: `measure_nuclei` rows (with "id") or {id: {name: value}}.
        classification: QuPath class name; color: its colour (r, g, b).

    Returns:
        ``{"type": "FeatureCollection", "features": [...]}``; each feature has a random uuid ``id``, a closed exterior
        ring of >= 4 [x, y] points in full-resolution pixels (orientation: positive signed area in x/y, i.e.
        RFC 7946 counter-clockwise in a y-up frame), and properties objectType "detection", classification
        {name, color}, nucseg_id and measurements (always with "Label" = the id).
    """
    from scipy import ndimage as ndi

    labels = _check_labels(labels)
    y0, x0 = float(offset[0]), float(offset[1])
    extra = _extra_measurements(measurements)
    klass = {"name": classification, "color": [int(c) for c in color]}
    found: list[tuple[int, np.ndarray]] = []
    for part in iter_label_chunks(labels):
        compact, original = _compact(part.window)
        for index, box in enumerate(ndi.find_objects(compact), start=1):
            if box is None or not part.owned(np.array(box[0].start), np.array(box[1].start)):
                continue
            ring = _exterior_ring(compact[box] == index)
            if ring is not None:
                origin = (box[0].start + part.origin[0] + 0.5, box[1].start + part.origin[1] + 0.5)
                found.append((int(original[index]) if original is not None else index, ring + origin))
    features = []
    for (label, _), ring in zip(found, _simplify([r for _, r in found]), strict=True):
        xy = np.round(np.stack([x0 + ring[:, 1] * downsample, y0 + ring[:, 0] * downsample], axis=1), 3)
        if _signed_area(xy[:, ::-1]) < 0:
            xy = xy[::-1]
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": {"type": "Polygon", "coordinates": [xy.tolist()]},
            "properties": {"objectType": "detection", "classification": dict(klass), "nucseg_id": label,
                           "measurements": {"Label": label, **extra.get(label, {})}},
        })
    return {"type": "FeatureCollection", "features": features}


def write_geojson(labels: Any, path: str | Path, *, overwrite: bool = False, **kwargs: Any) -> Path:
    """Write `labels_to_geojson(labels, **kwargs)` to `path` (atomically; refuses to overwrite by default)."""
    collection = labels_to_geojson(labels, **kwargs)
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(json.dumps(collection, separators=(",", ":")))
    return Path(path)


class _Moments:
    """Per-object area, centroid and second-moment eigenvalues (as regionprops' inertia tensor), by bincount."""

    def __init__(self, flat: np.ndarray, width: int, index: np.ndarray):
        self.flat, self.index = flat, index
        self.size = int(index.max(initial=0)) + 1
        self.area = np.bincount(flat, minlength=self.size)[index]
        rr, cc = np.divmod(np.arange(flat.size, dtype=np.float64), width)
        self.my, self.mx = self.mean(rr), self.mean(cc)
        vyy, vxx = self.mean(rr * rr) - self.my**2, self.mean(cc * cc) - self.mx**2
        vxy = self.mean(rr * cc) - self.my * self.mx
        half, root = (vyy + vxx) / 2, np.sqrt(((vyy - vxx) / 2) ** 2 + vxy**2)
        self.l1, self.l2 = np.maximum(half + root, 0), np.maximum(half - root, 0)

    def mean(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.flat, values, minlength=self.size)[self.index] / np.maximum(self.area, 1)


def measure_nuclei(labels: Any, image: Any = None, mpp: float | None = None, *, offset: Sequence[float] = (0, 0),
                   downsample: float = 1.0) -> list[dict[str, Any]]:
    """Shape and stain measurements of each nucleus.

    Args:
        labels: instance labels (H, W).
        image: optional RGB image (H, W, 3) aligned with `labels`, for mean R, G, B (0-255) and the mean hematoxylin
            and eosin optical densities (`skimage.color.rgb2hed`).
        mpp: microns per pixel of `labels`; adds the ``*_um`` / ``*_um2`` columns.
        offset: (y0, x0) of the label map in full-resolution pixels.
        downsample: full-resolution pixels per label pixel.

    Returns:
        One dict per nucleus, sorted by id: id, centroid_x, centroid_y (full-resolution px, QuPath convention),
        area_px, perimeter_px, eccentricity, solidity, major_axis_px, minor_axis_px (``_px``: label pixels; axes
        from second moments as regionprops), with `mpp` centroid_x_um, centroid_y_um, area_um2, perimeter_um,
        major_axis_um, minor_axis_um, and with an image mean_r, mean_g, mean_b, mean_hematoxylin_od, mean_eosin_od.
    """
    from skimage.measure import regionprops_table

    labels = _check_labels(labels)
    if image is not None:
        shape = tuple(getattr(image, "shape", np.shape(image)))
        if len(shape) != 3 or shape[2] < 3 or shape[:2] != tuple(labels.shape):
            raise InvalidInputError(f"image for measurements must be RGB (H, W, 3) matching the labels "
                                    f"{tuple(labels.shape)}, got {shape}")
    columns: dict[str, list[Any]] = {}
    for part in iter_label_chunks(labels):
        compact, original = _compact(part.window)
        table = regionprops_table(compact, properties=["label", "bbox", "perimeter", "solidity"])
        index = table["label"]
        keep = part.owned(table["bbox-0"], table["bbox-1"])
        stats = _Moments(compact.ravel(), compact.shape[1], index)
        l1, l2 = stats.l1, stats.l2
        cy = offset[0] + (stats.my + part.origin[0] + 0.5) * downsample
        cx = offset[1] + (stats.mx + part.origin[1] + 0.5) * downsample
        cols: dict[str, np.ndarray] = {
            "id": index if original is None else original[index], "centroid_x": cx, "centroid_y": cy,
            "area_px": stats.area, "perimeter_px": table["perimeter"],
            "eccentricity": np.where(l1 > 0, np.sqrt(1 - l2 / np.where(l1 > 0, l1, 1)), 0.0),
            "solidity": table["solidity"], "major_axis_px": 4 * np.sqrt(l1), "minor_axis_px": 4 * np.sqrt(l2)}
        if mpp:
            cols.update(centroid_x_um=cx * mpp / downsample, centroid_y_um=cy * mpp / downsample,
                        area_um2=stats.area * mpp * mpp, perimeter_um=table["perimeter"] * mpp,
                        major_axis_um=cols["major_axis_px"] * mpp, minor_axis_um=cols["minor_axis_px"] * mpp)
        if image is not None:
            (wy, wx), (h, w) = part.origin, part.window.shape
            stains = _stain_channels(np.asarray(image[wy:wy + h, wx:wx + w]))
            for k, name in enumerate(("mean_r", "mean_g", "mean_b", "mean_hematoxylin_od", "mean_eosin_od")):
                cols[name] = stats.mean(stains[..., k].ravel())
        for name, values in cols.items():
            columns.setdefault(name, []).extend(np.asarray(values)[keep].tolist())
    names = list(columns)
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return sorted(rows, key=lambda r: r["id"])


def _stain_channels(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 5): R, G, B (0-255) and the hematoxylin and eosin optical densities of `skimage.color.rgb2hed`."""
    from skimage.color import rgb2hed

    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:  # floats in [0, 1] or other integer ranges to 0-255
        top = 1.0 if np.issubdtype(rgb.dtype, np.floating) and rgb.size and float(rgb.max()) <= 1.0 else 255.0
        rgb = np.clip(rgb.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
    return np.concatenate([rgb.astype(np.float64), rgb2hed(rgb)[..., :2]], axis=-1)


def write_measurements_csv(labels: Any, path: str | Path, image: Any = None, mpp: float | None = None,
                           offset: Sequence[float] = (0, 0), *, downsample: float = 1.0,
                           overwrite: bool = False) -> Path:
    """Write `measure_nuclei` as CSV, one row per nucleus (atomically; refuses to overwrite by default)."""
    rows = measure_nuclei(labels, image, mpp, offset=offset, downsample=downsample)
    columns = list(rows[0]) if rows else ["id", "centroid_x", "centroid_y", "area_px"]
    with atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return Path(path)


def write_labels_ome_tiff(labels: Any, path: str | Path, mpp: float | None = None, pyramid: bool | None = None,
                          *, overwrite: bool = False, compression: str = "zlib", tile: int = 512) -> Path:
    """Write uint32 labels as a tiled, compressed OME-TIFF, pyramidal through SubIFDs when large.

    Args:
        labels: instance labels (H, W), numpy or lazy (zarr / dask, read tile by tile).
        path: the file to write; overwrite: replace an existing one.
        mpp: microns per pixel, written as OME PhysicalSizeX / Y (µm) and as TIFF resolution.
        pyramid: add half, quarter... resolution levels (nearest neighbour: every 2nd, 4th... pixel, so ids stay
            ids) down to one tile; None does so when the image is larger than 4096 px.
        compression: "zlib" (widely readable) or "zstd"; tile: tile side, a multiple of 16.
    """
    import tifffile

    labels = _check_labels(labels)
    h, w = (int(s) for s in labels.shape)
    steps = [1]
    if pyramid or (pyramid is None and max(h, w) > 4096):
        while max(-(-h // steps[-1]), -(-w // steps[-1])) > tile:
            steps.append(steps[-1] * 2)
    metadata: dict[str, Any] = {"axes": "YX", "Name": "nuclei labels", **({} if not mpp else {
        "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"})}
    resolution = (1e4 / mpp, 1e4 / mpp) if mpp else None
    options = {"tile": (tile, tile), "compression": compression, "photometric": "minisblack",
               "resolutionunit": "CENTIMETER" if mpp else None}
    data = labels.astype(np.uint32, copy=False) if isinstance(labels, np.ndarray) else None

    def level(step: int) -> dict[str, Any]:
        if data is not None:
            return {"data": np.ascontiguousarray(data[::step, ::step])}
        tiles = (np.asarray(labels[y:min(h, y + tile * step), x:min(w, x + tile * step)])[::step, ::step]
                 .astype(np.uint32) for y in range(0, h, tile * step) for x in range(0, w, tile * step))
        return {"data": tiles, "shape": (-(-h // step), -(-w // step)), "dtype": np.uint32}  # lazy: tile by tile

    with atomic_output(path, overwrite) as tmp, tifffile.TiffWriter(tmp, bigtiff=h * w * 4 > 2**31, ome=True) as tif:
        tif.write(**level(1), subifds=len(steps) - 1, metadata=metadata, resolution=resolution, **options)
        for step in steps[1:]:
            res = (resolution[0] / step, resolution[1] / step) if resolution else None
            tif.write(**level(step), subfiletype=1, resolution=res, **options)
    return Path(path)


def write_labels_zarr(labels: Any, path: str | Path, chunks: int = 1024, mpp: float | None = None,
                      *, overwrite: bool = False) -> Path:
    """Write uint32 labels to a new zarr v3 array folder `path` with `chunks` x `chunks` chunks and attrs mpp (None
    when unknown) and axes "yx"; lazy inputs are copied chunk by chunk. Refuses to overwrite unless asked to."""
    import zarr

    labels = _check_labels(labels)
    h, w = (int(s) for s in labels.shape)
    with atomic_output(path, overwrite) as tmp:
        arr = zarr.create_array(store=str(tmp), shape=(h, w), chunks=(min(chunks, max(h, 1)), min(chunks, max(w, 1))),
                                dtype="uint32", fill_value=0, zarr_format=3)
        arr.attrs.update({"mpp": mpp, "axes": "yx", "content": "nuclei instance labels, 0 = background"})
        step = max(h, w, 1) if isinstance(labels, np.ndarray) else chunks  # numpy in one go, lazy chunk by chunk
        for y, x in ((y, x) for y in range(0, h, step) for x in range(0, w, step)):
            arr[y:y + step, x:x + step] = np.asarray(labels[y:y + step, x:x + step]).astype(np.uint32, copy=False)
    return Path(path)
