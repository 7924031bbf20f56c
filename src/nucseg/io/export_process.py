"""The GeoJSON and CSV of an in-memory label map, written in a separate (spawned) Python process.

Why: the viewer saves in a worker thread, but tracing and measuring thousands of nuclei is Python work. In the
viewer's process it holds the GIL between the GUI thread's many short releases and sets off full garbage
collections of napari's heap (330-480 k objects, 0.12-0.21 s each, docs/VIEWER.md), so the window froze for
up to 0.2 s per save. In a process of its own it has neither: the GUI thread only waits for a pipe.

The labels (and the H&E pixels under them, when they are in memory) go to the child as ``.npy`` files in a
temporary folder, memory-mapped there, so nothing is pickled twice; a slide is opened by its path. The child runs
the same `nucseg.io.export` writers, so the files are those a script gets. One child serves the whole session
(started on the first save: about 0.5 s of imports, not on the GUI thread).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.errors import NucsegError

#: label maps up to this many pixels go to the child (with their pixels: three bytes each); larger in-memory maps
#: are written in the caller's process rather than copied to disk
MAX_PIXELS = 1 << 26

_lock = threading.Lock()
_executor: concurrent.futures.ProcessPoolExecutor | None = None
#: whether a child has written a file in this session (None: not tried yet; False: it could not even start)
_works: bool | None = None


class Unavailable(RuntimeError):
    """No child process could be started here (an embedded interpreter, a sandbox): write in-process instead."""


def fits(labels: Any) -> bool:
    """Whether `labels` can be written in the child: an in-memory numpy label map of at most `MAX_PIXELS`, in a
    session where a child could start."""
    return _works is not False and isinstance(labels, np.ndarray) and labels.ndim == 2 and labels.size <= MAX_PIXELS


def write_tables(kind: str, labels: np.ndarray, path: str | Path, *, pixels: Any = None, slide_path: str | None = None,
                 how: str = "", mpp: float | None = None, offset: Sequence[float] = (0, 0)) -> str | None:
    """`nucseg.io.export.write_table_file` (overwriting) in the child process; waits for it.

    Args:
        pixels: the RGB pixels aligned with `labels` (read here, if lazy), or None.
        slide_path: without `pixels`, the slide file the child opens for the stain columns, or None.
        how, mpp, offset: as `write_table_file`.

    Returns:
        None, or why the file has no stain columns.

    Raises:
        NucsegError: the writer's own errors (their message), or the child ended without an answer.
        Unavailable: the first child of the session could not start; nothing was written.
    """
    global _works
    # ignore_cleanup_errors: on Windows a mapping the child has not yet released would fail a finished save
    with tempfile.TemporaryDirectory(prefix="nucseg-export-", ignore_cleanup_errors=True) as tmp:
        labels_file = str(Path(tmp) / "labels.npy")
        np.save(labels_file, labels)
        pixels_file = None
        if pixels is not None:
            pixels_file = str(Path(tmp) / "pixels.npy")
            np.save(pixels_file, np.asarray(pixels))
        try:
            error, missing = _pool().submit(_write, kind, labels_file, pixels_file, slide_path, how, str(path), mpp,
                                            tuple(float(v) for v in offset)).result()
        except (concurrent.futures.process.BrokenProcessPool, OSError) as err:
            _reset()
            if _works is None:  # never started here: say so once, the caller writes in-process from now on
                _works = False
                raise Unavailable(str(err)) from err
            raise NucsegError(f"{path}: the export process ended without finishing (out of memory?); "
                              "nothing was written there: save again") from err
        _works = True
    if error is not None:
        raise NucsegError(error)
    return missing


def _pool() -> concurrent.futures.ProcessPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = concurrent.futures.ProcessPoolExecutor(max_workers=1,
                                                               mp_context=multiprocessing.get_context("spawn"))
        return _executor


def _reset() -> None:
    global _executor
    with _lock:
        if _executor is not None:
            _executor.shutdown(wait=False, cancel_futures=True)
        _executor = None


def _write(kind: str, labels_file: str, pixels_file: str | None, slide_path: str | None, how: str, path: str,
           mpp: float | None, offset: tuple[float, float]) -> tuple[str | None, str | None]:
    """In the child: write the file; (None, or the error's message: a message pickles, every exception may not;
    `write_table_file`'s answer)."""
    from nucseg.io import export

    try:
        pixels = None if pixels_file is None else np.load(pixels_file, mmap_mode="r")
        return None, export.write_table_file(kind, np.load(labels_file, mmap_mode="r"), path, pixels=pixels,
                                             slide_path=slide_path, how=how, mpp=mpp, offset=offset, overwrite=True)
    except NucsegError as err:
        return str(err), None
    except Exception as err:  # noqa: BLE001 - told to the user in one line, as the viewer's own errors are
        return f"{path}: {type(err).__name__}: {err}", None
