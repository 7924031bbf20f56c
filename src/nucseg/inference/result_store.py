"""The zarr layout a run streams into, in one place: made here (`create_result_store`, by `iter_predict` and by
the Dask runner's slide assembly), recognised here (`is_result_store`, by the cleaner of old widget runs), and
grown here (`tuned_labels`, re-applied thresholds; `zarr_pyramid`, the levels a viewer shows).

A result store is a folder holding a zarr group with

* ``labels``: uint32 (H, W) nuclei at level 0 of the region, chunks of `CHUNK`;
* ``probabilities``: uint8 (C, h, w) foreground / contour / distance at the model's resolution, scaled to 0..255;
* ``labels-tuned``: labels re-made with other thresholds (never over ``labels``), when the user changed them;
* ``pyramid/<array>-<k>``: coarser levels of an array for display (`zarr_pyramid`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nucseg.io.pyramid import copy_level, pyramid_steps

__all__ = ["CHUNK", "LABELS", "PROBABILITIES", "PYRAMID_MIN_SIZE", "TUNED_LABELS", "create_result_store",
           "is_result_store", "result_folder", "tuned_labels", "zarr_pyramid"]

LABELS, PROBABILITIES, TUNED_LABELS, PYRAMID = "labels", "probabilities", "labels-tuned", "pyramid"
#: chunk side of every array of a result store
CHUNK = 1024
#: `zarr_pyramid` halves until the longer side is at most this many pixels
PYRAMID_MIN_SIZE = 1024


def create_result_store(path: str | Path, label_shape: tuple[int, int], prob_shape: tuple[int, int],
                        channels: int = 3) -> tuple[Any, Any]:
    """A new result store at `path` (which must not exist); returns its (labels, probabilities) arrays."""
    import zarr

    root = zarr.open_group(str(path), mode="w-")
    labels = root.create_array(LABELS, shape=tuple(label_shape), chunks=(CHUNK, CHUNK), dtype="uint32", fill_value=0)
    probs = root.create_array(PROBABILITIES, shape=(channels, *prob_shape), chunks=(channels, CHUNK, CHUNK),
                              dtype="uint8", fill_value=0)
    return labels, probs


def tuned_labels(probabilities: Any, shape: tuple[int, int]) -> Any:
    """An empty ``labels-tuned`` array beside `probabilities` (a result store's), replacing an earlier one."""
    import zarr

    group = zarr.open_group(probabilities.store, mode="a")
    return group.create_array(TUNED_LABELS, shape=tuple(shape), chunks=(CHUNK, CHUNK), dtype="uint32", fill_value=0,
                              overwrite=True)


def is_result_store(folder: Path) -> bool:
    """Whether `folder` is a result store (``*.zarr``, a zarr group with labels and probabilities)."""
    return (folder.is_dir() and folder.suffix == ".zarr" and (folder / "zarr.json").is_file()
            and (folder / LABELS).is_dir() and (folder / PROBABILITIES).is_dir())


def result_folder(result: Any) -> Path | None:
    """The result store a `PredictionResult` streamed into, None for an in-memory result."""
    root = getattr(getattr(result.labels, "store", None), "root", None)
    return None if root is None else Path(str(root))


def zarr_pyramid(array: Any, min_size: int = PYRAMID_MIN_SIZE, channel: int | None = None, reuse: bool = True
                 ) -> list[Any]:
    """Levels ``[a, a/2, a/4, ...]`` of a result store's array for a multiscale layer (`pyramid_steps` down to
    `min_size` pixels).

    The coarser levels are real zarr arrays stored beside `array` in its group (``pyramid/<name>-<k>``, made by
    `copy_level`: every other pixel of the level above, so labels stay labels), built here (call it in a worker)
    and reused when present. A viewer showing the whole slide then reads a small array instead of striding through
    level 0's chunks on the GUI thread. The run's own arrays are only read.

    Args:
        array: a 2-D zarr array, or 3-D (C, H, W) with `channel` chosen.
        min_size: the coarsest level's longer side is at most this.
        channel: for (C, H, W) arrays, the channel to show (level 0 is then a lazy dask view of it).
        reuse: take levels already stored; False rebuilds them (for an array that was rewritten).

    Returns:
        Level arrays, finest first; ``[array]`` (or its channel) when it is already small.
    """
    import dask.array as da
    import zarr

    base = da.from_zarr(array)[channel] if channel is not None else array
    shape = tuple(int(s) for s in array.shape[-2:])
    steps = pyramid_steps(shape, min_size)
    levels: list[Any] = [base]
    if len(steps) == 1:
        return levels
    group = zarr.open_group(array.store, mode="a").require_group(PYRAMID)
    name = array.path.rsplit("/", 1)[-1] + ("" if channel is None else f"-c{channel}")
    for step in steps[1:]:
        key = f"{name}-{step}"
        level_shape = tuple(-(-s // step) for s in shape)
        level = group.get(key)
        if not (reuse and level is not None and tuple(level.shape) == level_shape and level.attrs.get("complete")):
            level = group.create_array(key, shape=level_shape, chunks=(CHUNK, CHUNK), dtype=array.dtype,
                                       fill_value=0, overwrite=True)
            copy_level(levels[-1], level)
            level.attrs["complete"] = True
        levels.append(level)
    return levels
