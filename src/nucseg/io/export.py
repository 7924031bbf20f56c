"""Export instance labels: QuPath GeoJSON, per-nucleus measurement CSV, OME-TIFF (pyramidal) and OME-NGFF zarr.

Coordinates follow QuPath: origin at the top-left CORNER of the full-resolution image, x right, y down; pixel (row r,
column c) covers [c, c+1) x [r, r+1). ``offset`` = (y0, x0) is the label map's origin and ``downsample`` the size of
one label pixel, both in full-resolution pixels. Outlines: `nucseg.io.polygons`; measurements: `nucseg.io.measure`.

Units: ``mpp`` (microns per label pixel) is whatever the caller knows: the file's, the user's, ``--mpp``; any
positive value counts, the model's own 0.25 included. Without it every output stays in pixels and says the size is
unknown (CSV column ``mpp`` empty, GeoJSON ``"nucseg": {"mpp": null}``, no OME PhysicalSize, zarr axes unitless).

Labels may be numpy or lazy zarr / dask arrays. The CSV and GeoJSON are streamed block by block
(`nucseg.io.label_blocks`): features are written as they are made, each nucleus once and whole, so a slide's
measurements never sit in memory together. Writers refuse to replace an existing file unless ``overwrite=True``
(`StoreError`) and write to a temporary name in the same folder, renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import csv
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
from nucseg.io.label_blocks import CHUNK, LabelBlock, iter_label_blocks
from nucseg.io.measure import finite_or_none, measure_block, measurement_columns, rows_of
from nucseg.io.pyramid import pyramid_steps

__all__ = ["CHUNK", "atomic_output", "atomic_write_text", "iter_geojson_features", "iter_nuclei", "labels_to_geojson", "measure_nuclei", "opened_source", "write_geojson",
           "write_labels_ome_tiff", "write_labels_zarr", "write_measurements_csv", "write_nuclei_tables",
           "write_table_file"]

NUCLEUS_COLOR = (220, 50, 50)


def replace_into_place(tmp: Path, final: Path) -> None:
    """Rename a finished `tmp` to `final`. An earlier folder there (a zarr) is replaced only when nucseg wrote it
    (`nucseg.io.outputs.check_replaceable`); it is moved aside first and then removed, since a rename cannot
    replace a non-empty folder.

    Raises:
        StoreError: `final` is something nucseg did not write and must not destroy (a foreign folder).
    """
    from nucseg.io.outputs import check_replaceable

    check_replaceable(final, folder=tmp.is_dir())
    if final.is_dir() and not final.is_symlink():
        trash = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False, fix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed. With
    `overwrite`, only a file or one of nucseg's own outputs is replaced (never a foreign folder), checked before
    the work and again at the rename. `fix` is added to the one-line error of a failed write.

    Raises:
        StoreError: `path` exists and `overwrite` is False, `path` is a folder nucseg did not write, or the
            folder cannot be written (a full disk says so).
    """
    from nucseg.io.outputs import check_replaceable, write_failure

    path = Path(path)
    if path.exists() and not overwrite:
        raise StoreError(f"{path} already exists; remove it, choose another name, or pass overwrite=True "
                         "(--overwrite on the command line)")
    check_replaceable(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        replace_into_place(tmp, path)
    except OSError as err:
        raise write_failure(path, err, fix) from err
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True, fix: str = "") -> Path:
    """Write `text` (UTF-8) to `path` through `atomic_output` (a reader never sees half a file, a failed write
    leaves the earlier file as it was); replaces by default. The one atomic text writer of the package."""
    with atomic_output(path, overwrite, fix) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


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


def _check_mpp(mpp: float | None) -> float | None:
    """A known pixel size (any positive number), or None."""
    if mpp is None:
        return None
    if not (isinstance(mpp, (int, float, np.floating)) and math.isfinite(mpp) and mpp > 0):
        raise InvalidInputError(f"pixel size {mpp!r} µm/px is not a positive number; give the microns per pixel "
                                "(about 0.25 at 40x, 0.5 at 20x) or leave it unknown")
    return float(mpp)


def _image_reader(image: Any, labels: Any, offset: Sequence[float], downsample: float):
    """A function (y0, y1, x0, x1) -> RGB pixels of that window of the label map, from an array aligned with the
    labels (H, W, 3) or from a `Slide` (anything with ``read_region(level, y, x, h, w)``) at full resolution."""
    h, w = (int(s) for s in labels.shape)
    if hasattr(image, "read_region"):
        oy, ox = (int(round(v)) for v in offset)
        height, width = image.shape
        if downsample != 1.0 or oy < 0 or ox < 0 or oy + h > height or ox + w > width:
            raise InvalidInputError(f"labels of {h} x {w} px at (y, x) = ({oy}, {ox}), downsample {downsample:g} "
                                    f"do not lie on the full-resolution slide of {height} x {width} px")
        return lambda y0, y1, x0, x1: image.read_region(0, oy + y0, ox + x0, y1 - y0, x1 - x0)
    shape = tuple(getattr(image, "shape", np.shape(image)))
    if len(shape) != 3 or shape[2] < 3 or shape[:2] != (h, w):
        raise InvalidInputError(f"image for measurements must be RGB (H, W, 3) matching the labels {(h, w)}, "
                                f"got {shape}")
    return lambda y0, y1, x0, x1: np.asarray(image[y0:y1, x0:x1])


def iter_nuclei(labels: Any, image: Any = None, mpp: float | None = None, *, offset: Sequence[float] = (0, 0),
                downsample: float = 1.0, outlines: bool = False, chunk: int = CHUNK,
                annotate: Any = None) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """Measurements (and outlines) of every nucleus, block by block: what the CSV and GeoJSON writers stream.

    Args:
        labels: instance labels (H, W), 0 = background; numpy, zarr or dask.
        image: RGB pixels for the stain columns: an (H, W, 3) array aligned with `labels`, or a `Slide` whose
            full-resolution pixels the labels cover from `offset` (downsample 1); None leaves those columns out.
        mpp: microns per label pixel when known: adds the micron columns.
        offset: (y0, x0) of the label map in full-resolution pixels; downsample: full-resolution px per label px.
        outlines: also trace each nucleus (shapely geometry in full-resolution pixels).
        chunk: block side in label pixels.
        annotate: a per-block hook ``annotate(block, pixels, columns) -> more columns`` (the nucleus classes of
            `nucseg.classify.apply.ClassAnnotator`); it needs `image`.

    Yields:
        (columns, geometries) per block: columns as `nucseg.io.measure.measure_block`, geometries an object array
        in the same order (None without `outlines`).
    """
    from scipy import ndimage as ndi

    from nucseg.io.polygons import finish_geometries, mask_geometry

    labels, mpp = _check_labels(labels), _check_mpp(mpp)
    read_image = None if image is None else _image_reader(image, labels, offset, downsample)
    if annotate is not None and read_image is None:
        raise InvalidInputError("classifying nuclei needs the image (H&E pixels) the labels were made from")
    block: LabelBlock
    for block in iter_label_blocks(labels, chunk=chunk):
        (wy, wx), (h, w) = block.origin, block.labels.shape
        pixels = None if read_image is None else read_image(wy, wy + h, wx, wx + w)
        cols = measure_block(block, pixels, mpp, offset=offset, downsample=downsample)
        if annotate is not None:
            cols.update(annotate(block, pixels, cols))
        geometries = None
        if outlines:
            boxes = ndi.find_objects(block.labels)
            raw = [mask_geometry(block.labels[box] == k, (box[0].start + wy, box[1].start + wx))
                   for k, box in enumerate(boxes, start=1)]
            geometries = finish_geometries(raw, downsample, offset)
        yield cols, geometries


def measure_nuclei(labels: Any, image: Any = None, mpp: float | None = None, *, offset: Sequence[float] = (0, 0),
                   downsample: float = 1.0) -> list[dict[str, Any]]:
    """Shape and stain measurements of each nucleus, in memory (the CSV writer streams the same rows).

    Args:
        labels: instance labels (H, W).
        image: optional RGB pixels (an (H, W, 3) array aligned with `labels`, or a `Slide`, see `iter_nuclei`), for
            mean R, G, B (0-255) and the mean hematoxylin and eosin optical densities (`skimage.color.rgb2hed`).
        mpp: microns per pixel of `labels` when known; adds the ``*_um`` / ``*_um2`` columns.
        offset: (y0, x0) of the label map in full-resolution pixels.
        downsample: full-resolution pixels per label pixel.

    Returns:
        One dict per nucleus, sorted by id: id, centroid_x, centroid_y (full-resolution px, QuPath convention),
        area_px, perimeter_px, eccentricity, solidity, major_axis_px, minor_axis_px (``_px``: label pixels; axes
        from second moments as regionprops), with `mpp` centroid_x_um, centroid_y_um, area_um2, perimeter_um,
        major_axis_um, minor_axis_um, and with an image mean_r, mean_g, mean_b, mean_hematoxylin_od, mean_eosin_od.
    """
    rows = [row for cols, _ in iter_nuclei(labels, image, mpp, offset=offset, downsample=downsample)
            for row in rows_of(cols)]
    return sorted(rows, key=lambda r: r["id"])


def _given_measurements(measurements: Any) -> dict[int, dict[str, Any]]:
    """{id: {name: value}} from `measure_nuclei` rows (with "id") or a {id: {name: value}} mapping."""
    items = measurements.items() if isinstance(measurements, Mapping) else [(r["id"], r) for r in measurements]
    return {int(key): {n: v.item() if isinstance(v, np.generic) else v for n, v in row.items() if n != "id"}
            for key, row in items}


def _qupath_measurements(label: int, values: Mapping[str, Any]) -> dict[str, float]:
    """QuPath's ``measurements`` map (read by QuPath 0.4+ as {name: number}): "Label" = the id, then every
    finite number of `values`; missing or non-finite values are left out (QuPath reads them as numbers)."""
    out: dict[str, Any] = {"Label": label}
    for name, value in values.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if name != "id" and number and finite_or_none(value) is not None:
            out[name] = value
    return out


def _collection_info(mpp: float | None, downsample: float) -> dict[str, Any]:
    """What the numbers of a FeatureCollection are in (a foreign member, which GeoJSON readers and QuPath skip)."""
    return {"mpp": mpp, "pixel_size": "known" if mpp else "unknown: measurements in pixels only",
            "coordinates": "full-resolution pixels, origin at the top-left corner of the image",
            "downsample": downsample}


def _block_features(cols: dict[str, np.ndarray], geometries: np.ndarray, klass: dict[str, Any],
                    measurements: Any, given: dict[int, dict[str, Any]] | None,
                    annotate: Any = None) -> list[dict[str, Any]]:
    """The GeoJSON Features of one block's measurements and outlines (each nucleus's own class with `annotate`)."""
    from shapely.geometry import mapping

    features = []
    for row, geometry in zip(rows_of(cols), geometries, strict=True):
        label = int(row["id"])
        values = {} if measurements is False else given.get(label, {}) if given is not None else row
        shape = mapping(geometry)
        features.append({
            "type": "Feature", "id": str(uuid.uuid4()),
            "geometry": {"type": shape["type"], "coordinates": shape["coordinates"]},
            "properties": {"objectType": "detection", "nucseg_id": label,
                           "classification": dict(klass) if annotate is None else
                           annotate.classification(str(row["class"])),
                           "measurements": _qupath_measurements(label, values)}})
    return features


def _feature_blocks(labels: Any, *, offset: Sequence[float] = (0, 0), downsample: float = 1.0,
                    measurements: Any = None, classification: str = "Nucleus",
                    color: Sequence[int] = NUCLEUS_COLOR, image: Any = None,
                    mpp: float | None = None) -> Iterator[list[dict[str, Any]]]:
    """The GeoJSON Features of each block in turn (see `labels_to_geojson` for the arguments)."""
    klass = {"name": classification, "color": [int(c) for c in color]}
    given = None if measurements is None or measurements is False else _given_measurements(measurements)
    for cols, geometries in iter_nuclei(labels, image, mpp, offset=offset, downsample=downsample, outlines=True):
        yield _block_features(cols, geometries, klass, measurements, given)


def iter_geojson_features(labels: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """One GeoJSON Feature per nucleus, made block by block (keyword arguments as `labels_to_geojson`)."""
    for features in _feature_blocks(labels, **kwargs):
        yield from features


def labels_to_geojson(labels: Any, *, offset: Sequence[float] = (0, 0), downsample: float = 1.0,
                      measurements: Any = None, classification: str = "Nucleus",
                      color: Sequence[int] = NUCLEUS_COLOR, image: Any = None,
                      mpp: float | None = None) -> dict[str, Any]:
    """A QuPath-compatible GeoJSON FeatureCollection with one detection per nucleus, in memory (`write_geojson`
    streams the same features to a file).

    Args:
        labels: instance labels (H, W), 0 = background; numpy, or lazy zarr / dask for slides.
        offset: (y0, x0) of the label map's top-left in full-resolution pixels.
        downsample: full-resolution pixels per label pixel.
        measurements: None (default) measures every nucleus as the CSV does (`measure_nuclei`, with `image` and
            `mpp`); or given numbers: `measure_nuclei` rows (with "id") or {id: {name: value}}; False: only "Label".
        classification: QuPath class name; color: its colour (r, g, b).
        image: RGB pixels for the stain measurements (see `iter_nuclei`); mpp: microns per label pixel if known.

    Returns:
        ``{"type": "FeatureCollection", "features": [...], "nucseg": {"mpp": ..., ...}}``; each feature has a
        random uuid ``id``, a valid Polygon (with holes) or MultiPolygon in full-resolution pixels (exterior rings
        counter-clockwise in x/y as RFC 7946 asks), and properties objectType "detection", classification
        {name, color}, nucseg_id and measurements ({name: number}, as QuPath 0.4+ reads them; "Label" = the id).
    """
    features = list(iter_geojson_features(labels, offset=offset, downsample=downsample, measurements=measurements,
                                          classification=classification, color=color, image=image, mpp=mpp))
    mpp = _check_mpp(mpp)
    return {"type": "FeatureCollection", "features": features,
            "nucseg": {**_collection_info(mpp, downsample), "count": len(features)}}


def write_nuclei_tables(labels: Any, *, csv_path: str | Path | None = None, geojson_path: str | Path | None = None,
                        image: Any = None, mpp: float | None = None, offset: Sequence[float] = (0, 0),
                        downsample: float = 1.0, measurements: Any = None, classification: str = "Nucleus",
                        color: Sequence[int] = NUCLEUS_COLOR, overwrite: bool = False,
                        annotate: Any = None) -> dict[str, Path]:
    """Write the measurements CSV and / or the QuPath GeoJSON in ONE pass over the labels, block by block.

    Each block's nuclei are measured once and go to both files, flushed before the next block; both files are
    written under temporary names and renamed into place when complete (refusing to replace existing ones unless
    `overwrite`). Arguments as `write_measurements_csv` and `labels_to_geojson`; returns {"csv": ..., "geojson": ...}
    for the files asked for.

    The CSV's last column, ``mpp``, holds the microns per label pixel the micron columns used (area_um2 = area_px
    x mpp²) and is empty when the pixel size is unknown (then there are no micron columns). Its rows are sorted by
    id within a block (a map no larger than one block is sorted by id throughout).

    With `annotate` (a `nucseg.classify.apply.ClassAnnotator`) the CSV gets its columns (``class``,
    ``class_probability``) before ``mpp``, and each GeoJSON feature its nucleus's class as QuPath's
    ``classification`` {name, color} (``class_probability`` among its measurements).
    """
    if csv_path is None and geojson_path is None:
        raise InvalidInputError("write_nuclei_tables: give csv_path, geojson_path or both")
    labels, mpp = _check_labels(labels), _check_mpp(mpp)
    klass = {"name": classification, "color": [int(c) for c in color]}
    given = None if measurements is None or measurements is False else _given_measurements(measurements)
    size, count = ("" if mpp is None else repr(mpp)), 0
    with contextlib.ExitStack() as stack:
        table = geo = None
        if csv_path is not None:
            tmp = stack.enter_context(atomic_output(csv_path, overwrite))
            table_file = stack.enter_context(open(tmp, "w", newline="", encoding="utf-8"))
            table = csv.writer(table_file)
            table.writerow([*measurement_columns(mpp is not None, image is not None),
                            *(annotate.columns if annotate is not None else ()), "mpp"])
        if geojson_path is not None:
            tmp = stack.enter_context(atomic_output(geojson_path, overwrite))
            geo = stack.enter_context(open(tmp, "w", encoding="utf-8"))
            geo.write('{"type":"FeatureCollection","features":[')
        for cols, geometries in iter_nuclei(labels, image, mpp, offset=offset, downsample=downsample,
                                            outlines=geo is not None, annotate=annotate):
            if table is not None:
                order = np.argsort(cols["id"], kind="stable")
                for row in rows_of({name: np.asarray(v)[order] for name, v in cols.items()}):
                    table.writerow([*(f"{v:.6g}" if isinstance(v, float) else v for v in row.values()), size])
                table_file.flush()
            if geo is not None:
                for feature in _block_features(cols, geometries, klass, measurements, given, annotate):
                    geo.write(("," if count else "") + json.dumps(feature, separators=(",", ":"), ensure_ascii=False))
                    count += 1
                geo.flush()  # a block done is a block on disk
        if geo is not None:
            info = {**_collection_info(mpp, downsample), "count": count}
            geo.write('],"nucseg":' + json.dumps(info, ensure_ascii=False) + "}")
    return {k: Path(p) for k, p in (("csv", csv_path), ("geojson", geojson_path)) if p is not None}


def write_geojson(labels: Any, path: str | Path, *, overwrite: bool = False, **kwargs: Any) -> Path:
    """Stream `labels_to_geojson(labels, **kwargs)` to `path`, block by block (atomically; refuses to overwrite by
    default). Pass ``mpp=`` and ``image=`` for the micron and stain measurements (`write_nuclei_tables`)."""
    return write_nuclei_tables(labels, geojson_path=path, overwrite=overwrite, **kwargs)["geojson"]


def write_measurements_csv(labels: Any, path: str | Path, image: Any = None, mpp: float | None = None,
                           offset: Sequence[float] = (0, 0), *, downsample: float = 1.0,
                           overwrite: bool = False) -> Path:
    """Write `measure_nuclei` as CSV, one row per nucleus, streamed block by block, atomically; refuses to
    overwrite by default. Columns and order: `write_nuclei_tables`."""
    return write_nuclei_tables(labels, csv_path=path, image=image, mpp=mpp, offset=offset, downsample=downsample,
                               overwrite=overwrite)["csv"]


@contextlib.contextmanager
def opened_source(pixels: Any, path: str | None, how: str) -> Iterator[tuple[Any, str]]:
    """Yield (`pixels`, or the slide at `path` opened for the duration, or None; `how` they were found, or why the
    slide could not be opened)."""
    from nucseg.errors import NucsegError

    if pixels is not None or path is None:
        yield pixels, how
        return
    from nucseg.io.slides import open_slide

    try:
        slide = open_slide(path)
    except NucsegError:
        yield None, f"{how} cannot be opened"
        return
    with slide:
        yield slide, how


def write_table_file(kind: str, labels: Any, path: str | Path, *, pixels: Any = None, slide_path: str | None = None,
                     how: str = "", mpp: float | None = None, offset: Sequence[float] = (0, 0),
                     overwrite: bool = False) -> str | None:
    """Write the GeoJSON (`kind` "geojson") or the CSV ("csv") of `labels`, the stain columns measured from
    `pixels` (aligned with the labels) or the slide at `slide_path` (`opened_source`).

    Returns:
        None, or why the file has no stain columns (`how` the source was looked for).
    """
    with opened_source(pixels, slide_path, how) as (image, found):
        if kind == "geojson":
            write_geojson(labels, path, offset=offset, image=image, mpp=mpp, overwrite=overwrite)
        else:
            write_measurements_csv(labels, path, image=image, mpp=mpp, offset=offset, overwrite=overwrite)
    return None if image is not None else found


def write_labels_ome_tiff(labels: Any, path: str | Path, mpp: float | None = None, pyramid: bool | None = None,
                          *, overwrite: bool = False, compression: str = "zlib", tile: int = 512,
                          offset: Sequence[float] = (0, 0), image: Any = None) -> Path:
    """Write uint32 labels as a tiled, compressed OME-TIFF, pyramidal through SubIFDs when large.

    Args:
        labels: instance labels (H, W), numpy or lazy (zarr / dask, read tile by tile).
        path: the file to write; overwrite: replace an existing one.
        mpp: microns per pixel, written as OME PhysicalSizeX / Y (µm) and as TIFF resolution.
        offset: (y0, x0) of the label map in full-resolution pixels of its source image, and image: that image
            (a name or {"name", "path"}): written as the Plane position and a MapAnnotation
            (`nucseg.io.placement`), so the labels reopen over the nuclei they came from.
        pyramid: add half, quarter... resolution levels (nearest neighbour: every 2nd, 4th... pixel, so ids stay
            ids) down to one tile; None does so when the image is larger than 4096 px.
        compression: "zlib" (widely readable) or "zstd"; tile: tile side, a multiple of 16.
    """
    import tifffile

    from nucseg.io.placement import Placement, ome_metadata

    labels, mpp = _check_labels(labels), _check_mpp(mpp)
    h, w = (int(s) for s in labels.shape)
    steps = pyramid_steps((h, w), tile) if pyramid or (pyramid is None and max(h, w) > 4096) else [1]
    metadata: dict[str, Any] = {"axes": "YX", "Name": "nuclei labels", **({} if not mpp else {
        "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"}),
        **ome_metadata(Placement.of(offset, image), mpp)}
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
                      *, overwrite: bool = False, offset: Sequence[float] = (0, 0), image: Any = None) -> Path:
    """Write uint32 labels as an OME-NGFF 0.5 label image (zarr v3): see `nucseg.io.ngff.write_labels_ngff`
    (`offset` and `image` as `write_labels_ome_tiff`: written as each level's translation)."""
    from nucseg.io.ngff import write_labels_ngff
    from nucseg.io.placement import Placement

    labels = _check_labels(labels)
    with atomic_output(path, overwrite) as tmp:
        write_labels_ngff(labels, tmp, chunks=chunks, mpp=_check_mpp(mpp), placement=Placement.of(offset, image))
    return Path(path)
