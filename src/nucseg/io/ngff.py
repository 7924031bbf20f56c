"""Instance labels as an OME-NGFF 0.5 label image (zarr v3), written with ome-zarr's metadata functions.

Layout of ``<name>.zarr`` (the group itself is the label image, so a viewer opening the folder gets labels):

    zarr.json     attributes {"ome": {"version": "0.5", "multiscales": [...], "image-label": {"version": "0.5"}},
                              "nucseg": {"mpp": 0.25 | null, "content": ...}}
    0/            uint32 labels at full resolution, chunks of `chunks` px, dimension_names ["y", "x"]
    1/, 2/ ...    every 2nd, 4th ... pixel (nearest neighbour, so ids stay ids) while the level is larger than
                  a chunk; each level is built from the one above, block by block.

``multiscales`` has axes y / x of type "space" with unit "micrometer" and each level's ``coordinateTransformations``
scale (mpp x 2^level) when the pixel size is known; otherwise axes without a unit and scales in pixels (1, 2, 4...),
so no physical size is claimed. Level k's pixel i is level 0's pixel i x 2^k, so every level has the same
``translation``: the region's origin on its source image (`nucseg.io.placement`; µm, or pixels when the size is
unknown), repeated as ``nucseg.offset_px`` with the source image in ``nucseg.image``.

ome-zarr 0.18 writes NGFF 0.5 with zarr 3; its `write_labels` would nest the labels under an image as
``labels/<name>`` and compute pyramids through dask, so the arrays are written here and the metadata through
`ome_zarr.writer.write_multiscales_metadata` and `add_metadata`, which validate it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nucseg.io.placement import Placement
from nucseg.io.pyramid import copy_level, pyramid_steps

__all__ = ["read_labels_ngff", "read_labels_placement", "write_labels_ngff"]

CONTENT = "nuclei instance labels, 0 = background (napari-nucseg)"


def write_labels_ngff(labels: Any, path: str | Path, *, chunks: int = 1024, mpp: float | None = None,
                      name: str = "nuclei", placement: Placement | None = None) -> Path:
    """Write labels (numpy, or zarr / dask read block by block) to a new folder `path` as an NGFF label image.

    Args:
        labels: instance labels (H, W), ids up to 2^32 - 1.
        path: a folder that does not exist yet.
        chunks: chunk side of every level.
        mpp: microns per pixel when known (any positive value); None writes pixel units only.
        name: the multiscale's name.
        placement: the region's origin on its source image, and that image (None: the origin).
    """
    import warnings

    import zarr

    with warnings.catch_warnings():  # ome_zarr.writer builds a deprecated Scaler default at import
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.format import FormatV05
        from ome_zarr.writer import add_metadata, write_multiscales_metadata

    fmt = FormatV05()
    h, w = (int(s) for s in labels.shape)
    root = zarr.open_group(str(path), mode="w-", zarr_format=3)
    steps = pyramid_steps((h, w), chunks)
    previous: Any = labels
    for level, step in enumerate(steps):
        lh, lw = -(-h // step), -(-w // step)
        arr = root.create_array(str(level), shape=(lh, lw), chunks=(min(chunks, max(lh, 1)), min(chunks, max(lw, 1))),
                                dtype="uint32", fill_value=0, dimension_names=("y", "x"),
                                chunk_key_encoding=fmt.chunk_key_encoding)
        block = max(lh, lw, 1) if isinstance(labels, np.ndarray) else chunks  # numpy at once, lazy block by block
        copy_level(previous, arr, 1 if level == 0 else 2, block)
        previous = arr
    unit = {"unit": "micrometer"} if mpp else {}
    axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    size = float(mpp) if mpp else 1.0
    placement = placement or Placement()
    translation = {"type": "translation", "translation": placement.world(mpp)}
    datasets = [{"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [size * s, size * s]},
                                                                   translation]}
                for level, s in enumerate(steps)]
    write_multiscales_metadata(root, datasets, fmt=fmt, axes=axes, name=name)
    add_metadata(root, {"image-label": {"version": fmt.version}}, fmt=fmt)
    root.attrs["nucseg"] = {"mpp": float(mpp) if mpp else None, "content": CONTENT,
                            "pixel_size": "known" if mpp else "unknown: coordinates in pixels",
                            "offset_px": list(placement.offset), "image": placement.image}
    return Path(path)


def read_labels_placement(path: str | Path, mpp: float | None) -> Placement:
    """Where an NGFF label image lies on its source image: ``nucseg.offset_px`` (exact), else level 0's
    ``translation`` (divided by `mpp` when the axes are in micrometer), else the origin."""
    import zarr

    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    ours = attrs.get("nucseg") or {}
    if ours.get("offset_px") is not None:
        return Placement.of(ours["offset_px"], ours.get("image"))
    ome = attrs.get("ome", attrs)
    dataset = ome["multiscales"][0]["datasets"][0]
    translation = next((t["translation"] for t in dataset.get("coordinateTransformations", [])
                        if t.get("type") == "translation"), None)
    if not translation:
        return Placement()
    size = float(mpp) if mpp else 1.0
    return Placement.of([float(v) / size for v in translation[-2:]])


def read_labels_ngff(path: str | Path) -> tuple[list[Any], float | None]:
    """The levels (lazy zarr arrays, finest first) of an NGFF label image written by `write_labels_ngff` (or any
    single multiscale whose axes end in y, x), and microns per pixel of level 0 when its axes say micrometer."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    ome = root.attrs.get("ome", root.attrs)
    multiscale = ome["multiscales"][0]
    levels = [root[d["path"]] for d in multiscale["datasets"]]
    units = [a.get("unit") for a in multiscale.get("axes", []) if isinstance(a, dict)][-2:]
    scale = next((t["scale"] for t in multiscale["datasets"][0].get("coordinateTransformations", [])
                  if t.get("type") == "scale"), None)
    mpp = None
    if scale and units == ["micrometer", "micrometer"] and scale[-1] == scale[-2]:
        mpp = float(scale[-1])
    return levels, mpp
