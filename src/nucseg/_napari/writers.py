"""napari writer contributions for Labels layers: OME-TIFF, zarr, QuPath GeoJSON and per-nucleus measurements CSV.

Each is an npe2 single-layer writer, ``write_x(path, data, attributes) -> [path]``, over `nucseg.io.export`.

* Resolution: microns per pixel come from ``attributes["metadata"]["mpp"]`` (set by the plugin's reader and its
  results), else from the layer's scale when it is square and not 1 (napari scale in microns), else unknown.
* Position: GeoJSON and CSV coordinates are in full-resolution pixels of the slide. The label map's origin is the
  region the plugin segmented (``metadata["nucseg_region"]``), else ``translate / scale``.
* Multiscale layers are written from their finest level (lazy arrays are read window by window).
* Overwriting: these writers REPLACE an existing file or folder. napari's Save dialog already asks the user
  before it returns an existing path, the npe2 writer contract has no "overwrite" flag to pass that answer on, and
  napari's own writers replace too; refusing would make "Save" fail right after the user chose "Replace". The
  export functions write to a temporary name and rename it into place only when complete, so a failed write never
  destroys the earlier file. (The command line keeps refusing unless ``--overwrite``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nucseg.io import export

__all__ = ["write_geojson", "write_labels_ome_tiff", "write_labels_zarr", "write_measurements_csv"]


def _level0(data: Any, attributes: dict[str, Any]) -> Any:
    if attributes.get("multiscale") or isinstance(data, (list, tuple)):
        return data[0]
    return data


def layer_mpp(attributes: dict[str, Any]) -> float | None:
    """Microns per pixel of a layer from its metadata, else from a square, non-unit scale; None when unknown."""
    mpp = (attributes.get("metadata") or {}).get("mpp")
    if mpp:
        return float(mpp)
    scale = attributes.get("scale")
    if scale is not None and len(scale) >= 2:
        sy, sx = float(scale[-2]), float(scale[-1])
        if sy == sx and sy > 0 and sy != 1.0:
            return sy
    return None


def layer_offset(attributes: dict[str, Any]) -> tuple[float, float]:
    """(y0, x0) of the label map in full-resolution pixels: the segmented region's origin, else translate / scale."""
    region = (attributes.get("metadata") or {}).get("nucseg_region")
    if region is not None and len(region) == 4:
        return float(region[0]), float(region[1])
    translate: Sequence[float] = attributes.get("translate") or (0.0, 0.0)
    scale: Sequence[float] = attributes.get("scale") or (1.0, 1.0)
    return tuple(float(t) / float(s) if s else 0.0 for t, s in zip(translate[-2:], scale[-2:]))  # type: ignore[return-value]


def write_labels_ome_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Labels layer as a tiled (and, when large, pyramidal) OME-TIFF with its pixel size."""
    export.write_labels_ome_tiff(_level0(data, attributes), path, mpp=layer_mpp(attributes), overwrite=True)
    return [path]


def write_labels_zarr(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Labels layer as a chunked zarr array (attrs: mpp)."""
    export.write_labels_zarr(_level0(data, attributes), path, mpp=layer_mpp(attributes), overwrite=True)
    return [path]


def write_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Labels layer as QuPath detections (one polygon per nucleus, full-resolution pixel coordinates)."""
    export.write_geojson(_level0(data, attributes), path, offset=layer_offset(attributes), overwrite=True)
    return [path]


def write_measurements_csv(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save per-nucleus shape measurements (centroid, area, perimeter, axes...; microns when the mpp is known)."""
    export.write_measurements_csv(_level0(data, attributes), path, mpp=layer_mpp(attributes),
                                  offset=layer_offset(attributes), overwrite=True)
    return [path]
