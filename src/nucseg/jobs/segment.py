"""Segment job: run `iter_predict` over regions, re-apply thresholds, keep the user's edits, store slide results.

What a segmentation face (the napari widget, a script) needs around the engine, free of Qt:

* `segment_regions` runs `iter_predict` on each region in turn and yields its progress records;
* `keep_user_edits` merges a re-application of thresholds (`reapply_postprocess`) with a labels map the user has
  corrected, so that a threshold change never replaces what the user painted, erased or filled;
* `prediction_outputs` (`predictions_dir`, `new_prediction_path`, `streams_to_disk`) decides where results stream
  (zarr), and `clean_predictions` removes old runs there on a stated policy.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import threading
import time
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.config import InferenceConfig
from nucseg.home import nucseg_home
from nucseg.inference.plan import streams_to_disk
from nucseg.inference.predict import PredictionResult, PredictProgress, iter_predict
from nucseg.inference.result_store import is_result_store
from nucseg.progress import relay

Region = tuple[int, int, int, int]

#: `clean_predictions` removes runs older than this many days...
KEEP_DAYS = 14
#: ...and then the oldest runs until the folder holds at most this many bytes
KEEP_BYTES = 20 * 1024**3

#: runs written by this process (never cleaned while it runs)
_SESSION_RUNS: set[Path] = set()


def predictions_dir() -> Path:
    """Where slide predictions are streamed: ``$NUCSEG_HOME/predictions`` (default ``~/.nucseg/predictions``)."""
    return nucseg_home() / "predictions"


def new_prediction_path(stem: str, suffix: str = "") -> Path:
    """A new, unused ``<stem>-<timestamp><suffix>.zarr`` folder name under `predictions_dir`.

    The name is remembered as this session's, so `clean_predictions` leaves it alone.
    """
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "image"
    base = predictions_dir() / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"
    path, n = base.with_name(base.name + ".zarr"), 1
    while path.exists() or path in _SESSION_RUNS:
        path, n = base.with_name(f"{base.name}-{n}.zarr"), n + 1
    _SESSION_RUNS.add(path)
    return path


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def prediction_outputs(name: str, shape: tuple[int, int], multiscale: bool, mpp: float | None,
                       regions: list[Region | None], config: InferenceConfig, model_mpp: float) -> list[Path | None]:
    """Where each region's run goes: a new folder under `predictions_dir` (created) when it `streams_to_disk`,
    else None (memory).

    Args:
        name: the image's file path, or its layer name (the folders are named after its `plain_stem`).
        shape, multiscale, mpp: the image's level-0 (h, w), whether it is a pyramid, its µm/px (None: unknown).
        regions: (y, x, h, w) level-0 boxes, None for the whole image; config: the run's settings;
        model_mpp: the model's resolution.
    """
    from nucseg.io.names import plain_stem

    stem = plain_stem(name)
    outs = [new_prediction_path(stem, f"-r{k}" if len(regions) > 1 else "")
            if streams_to_disk(shape, multiscale, mpp, region, config.block_size, model_mpp) else None
            for k, region in enumerate(regions, start=1)]
    for out in outs:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
    return outs


def clean_predictions(in_use: Iterable[str | Path] = (), keep_days: float = KEEP_DAYS, keep_bytes: int = KEEP_BYTES,
                      now: float | None = None) -> list[Path]:
    """Remove old runs from `predictions_dir`; returns what was removed.

    Policy: a run (a result store, `is_result_store`; nothing else there is touched) is removed when
    it was last modified more than `keep_days` ago; then, while the remaining runs hold more than `keep_bytes`,
    the oldest is removed. Never removed: runs written by this process and runs in `in_use` (e.g. shown by a
    layer). Call it in a worker thread: it walks the folders to size them.
    """
    root = predictions_dir()
    if not root.is_dir():
        return []
    protected = {Path(p).resolve() for p in (*in_use, *_SESSION_RUNS)}
    now = time.time() if now is None else now
    runs = sorted((f.stat().st_mtime, f) for f in root.iterdir() if is_result_store(f) and f.resolve() not in protected)
    removed: list[Path] = []
    kept: list[tuple[float, Path, int]] = []
    for mtime, folder in runs:
        if now - mtime > keep_days * 86400:
            removed.append(folder)
        else:
            kept.append((mtime, folder, _size(folder)))
    total = sum(size for *_, size in kept) + sum(_size(Path(p)) for p in protected if Path(p).is_dir()
                                                   and Path(p).parent == root)
    for _, folder, size in kept:  # oldest first
        if total <= keep_bytes:
            break
        removed.append(folder)
        total -= size
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def segment_regions(image: Any, config: InferenceConfig, regions: list[Region | None], outs: list[Path | None],
                    stop: threading.Event, mpp: float | None = None
                    ) -> Generator[PredictProgress, None, list[PredictionResult]]:
    """Run `iter_predict` on each region in turn (in a worker thread), yielding its progress records.

    Args:
        image: what `iter_predict` takes (an RGB array or a slide), or a callable returning it, called here so
            that reading the image happens in the worker too.
        config: the run's settings.
        regions: (y, x, h, w) level-0 boxes; None for the whole image.
        outs: for each region, a new zarr folder to stream into, or None to keep the result in memory.
        stop: set to end after the current batch (the finished blocks are returned).
        mpp: microns per pixel of the image; None = unknown (slides know theirs).
    """
    yield PredictProgress(0, 0, "opening the image and loading the model")
    source = image() if callable(image) else image
    results: list[PredictionResult] = []
    for k, (region, out) in enumerate(zip(regions, outs), start=1):
        where = f"region {k}/{len(regions)}: " if len(regions) > 1 else ""
        results.append((yield from relay(
            iter_predict(source, config, mpp=mpp, region=region, out=out, stop=stop),
            lambda r, where=where: dataclasses.replace(r, stage=f"{where}{r.stage} ({r.done}/{r.total} tiles)"))))
        if stop.is_set():
            break
    return results


def keep_user_edits(current: np.ndarray, written: np.ndarray, edited: np.ndarray | None, fresh: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Merge a fresh post-processing into labels the user has corrected: the user's work wins everywhere.

    A pixel counts as the user's when it differs from what was last written to the layer (`written`), or was
    the user's before (`edited`). Every nucleus the user touched (painted, or trimmed: its id before the edit is still
    there) is kept whole as it is now, and so are erased
    pixels (a deleted nucleus stays deleted). Fresh nuclei are taken everywhere else, except those that overlap
    the user's pixels (the user's version of that place wins). Fresh ids are renumbered to avoid the user's.

    Args:
        current: the labels now (with the user's edits).
        written: the labels last written by the program.
        edited: the pixels that were the user's before (cumulative), or None.
        fresh: the new post-processing, same shape.

    Returns:
        ``(merged labels, the user's pixels now, number of the user's nuclei kept)``; pass the second back as
        `edited` next time (it also tells which parts the user worked on).
    """
    current, fresh = np.asarray(current), np.asarray(fresh)
    changed = np.asarray(current != written)
    if edited is not None:
        changed |= edited
    if not changed.any():
        return fresh, changed, 0
    # the user's nuclei: those painted (their id now) and those trimmed (their id before, where it still exists)
    touched = np.unique(np.concatenate([current[changed], np.asarray(written)[changed]]))
    user_ids = np.intersect1d(touched[touched > 0], np.unique(current))
    mine = changed | np.isin(current, user_ids)
    clash = np.unique(fresh[mine])
    fresh_ids = np.setdiff1d(np.unique(fresh), np.concatenate([clash, [0]]))
    # fresh ids -> the smallest ids the user's nuclei do not use
    free = np.setdiff1d(np.arange(1, len(fresh_ids) + len(user_ids) + 1), user_ids)[: len(fresh_ids)]
    lut = np.zeros(int(fresh.max()) + 1, dtype=current.dtype)
    lut[fresh_ids] = free
    merged = np.where(mine, current, lut[fresh])
    return merged, mine, int(len(user_ids))


def count_nuclei(labels: np.ndarray) -> int:
    """The number of distinct nucleus ids in a labels map."""
    ids = np.unique(np.asarray(labels))
    return int((ids > 0).sum())


def layer_title(model_info: dict[str, Any]) -> str:
    """``"nucseg-default v2"``: the model's name and, when its config gives one, its version."""
    name = str(model_info.get("name") or "model")
    version = model_info.get("version")
    return f"{name} v{version}" if version not in (None, "") else name
