"""What nucseg writes into an output folder and how it is recognised again: the one home of the output names,
of "is this one of our outputs", of the writable-folder check and of the output-folder lock.

- Names: `OUTPUT_NAMES` (``<stem>_labels.tif`` ...), `summary_name` (``<stem>_predict.json``, the manifest of
  one input's outputs) and `BATCH_SUMMARY`; `own_output_name` parses a name back.
- Ours: `is_own_output` says whether a path holds something nucseg wrote: a folder that is a label zarr carrying
  our marker (``"nucseg"`` attributes), or a file named as our outputs are and confirmed by the summary JSON
  beside it or, for labels TIFFs, by the OME name "nuclei labels". `check_replaceable`: ``--overwrite`` replaces
  a folder only when it is ours (`nucseg.io.export.replace_into_place`); a batch listing a folder of inputs skips
  our outputs (`nucseg predict --out` may be the input folder).
- `check_output_folder`: create the folder and write a probe into it before any work, so a read-only, full or
  impossible folder fails at once with one line.
- `write_failure`: the one-line `StoreError` of a failed write (a full disk says so); small files are written
  through `nucseg.io.export.atomic_write_text` (a temporary name, never left empty or half-written).
- `output_lock`: one run at a time per output folder (``.nucseg.lock`` with pid, host and command; the lock
  of a process that died on this host is taken over).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nucseg.errors import StoreError

__all__ = ["BATCH_SUMMARY", "LOCK_NAME", "OUTPUT_NAMES", "check_output_folder", "check_replaceable", "is_disk_full", "is_own_output",
           "output_lock", "own_output_name", "summary_name", "write_failure"]

#: output formats of `nucseg predict` and the names of their files
OUTPUT_NAMES = {"tif": "{stem}_labels.tif", "zarr": "{stem}_labels.zarr", "geojson": "{stem}_nuclei.geojson",
                "csv": "{stem}_nuclei.csv"}
#: the JSON written last for each input: settings, counts and the list of its outputs
SUMMARY_NAME = "{stem}_predict.json"
#: the per-batch table
BATCH_SUMMARY = "batch_summary.csv"
#: the lock file a run holds in its output folder
LOCK_NAME = ".nucseg.lock"
#: a lock file still empty after this many seconds was left by a process that died while writing it
_EMPTY_LOCK_GRACE_S = 10.0

_PATTERNS = {fmt: re.compile(re.escape(name).replace(re.escape("{stem}"), "(?P<stem>.+)") + r"\Z")
             for fmt, name in {**OUTPUT_NAMES, "summary": SUMMARY_NAME}.items()}


def summary_name(stem: str) -> str:
    """The name of an input's summary JSON (``<stem>_predict.json``)."""
    return SUMMARY_NAME.format(stem=stem)


def own_output_name(path: str | Path) -> tuple[str, str] | None:
    """(format, stem) when `path` is named as one of our outputs (`OUTPUT_NAMES`, or "summary" for the JSON), else
    None. Only the name is looked at."""
    name = Path(path).name
    for fmt, pattern in _PATTERNS.items():
        match = pattern.match(name)
        if match:
            return fmt, match.group("stem")
    return None


def _tiff_marker(path: Path) -> bool:
    """An OME-TIFF that `nucseg.io.export.write_labels_ome_tiff` wrote (its image is named "nuclei labels")."""
    from nucseg.io.label_files import OUR_OME_NAME

    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return bool(tif.is_ome and f'Name="{OUR_OME_NAME}"' in (tif.ome_metadata or ""))
    except Exception:  # noqa: BLE001 - any file tifffile cannot parse is not ours
        return False


def _listed_in_summary(path: Path, stem: str) -> bool:
    """Whether the summary JSON beside `path` lists it among its input's outputs."""
    try:
        summary = json.loads((path.parent / summary_name(stem)).read_text())
        outputs = summary.get("outputs") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return any(isinstance(v, str) and Path(v).name == path.name for v in outputs.values())


def is_own_output(path: str | Path) -> bool:
    """Whether `path` is something nucseg wrote: a folder that is a label zarr with our marker, or a file named as
    our outputs are (`OUTPUT_NAMES`) that the summary JSON beside it lists or that is an OME-TIFF of our labels. A
    missing path is not."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.exists():
            return False
        if path.is_dir():
            from nucseg.io.label_files import is_own_label_zarr

            return is_own_label_zarr(path)
    except OSError:
        return False
    named = own_output_name(path)  # a file: named as our outputs are, then confirmed (a user's x_labels.tif is not)
    if named is None or named[0] in ("summary", "zarr"):
        return False
    return _listed_in_summary(path, named[1]) or (named[0] == "tif" and _tiff_marker(path))


def check_replaceable(path: str | Path, folder: bool | None = None) -> None:
    """Refuse to replace `path` (asked with ``--overwrite``) when that would destroy something nucseg did not
    write: a folder is replaced only when it is one of our outputs (`is_own_output`), and only by a folder;
    `folder`: whether the replacement is a folder (None: not known yet). A file is replaced by a file.

    Raises:
        StoreError: one line naming `path`, why it is kept, and what to do.
    """
    path = Path(path)
    try:
        is_folder = path.is_dir() and not path.is_symlink()
    except OSError:
        return
    if is_folder and folder is False:
        raise StoreError(f"{path} is a folder and this output is a file: --overwrite never replaces a folder with "
                         "a file; move the folder away or choose another name")
    if is_folder and not is_own_output(path):
        raise StoreError(f"{path} is a folder that nucseg did not write: --overwrite replaces only nucseg's own "
                         "outputs; move it away or choose another name")
    if folder and not is_folder and (path.exists() or path.is_symlink()):
        raise StoreError(f"{path} is a file and this output is a folder: move the file away or choose another name")


def is_disk_full(err: BaseException) -> bool:
    """An OSError that means the disk (or the user's quota) is full."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def write_failure(path: str | Path, err: OSError, fix: str = "") -> StoreError:
    """The one-line `StoreError` for `err` met while writing `path`; a full disk says so."""
    named = getattr(err, "filename", None)
    where = Path(named) if named and not Path(named).name.startswith(".") else Path(path)
    target = f"into {where.parent}" if where.name.startswith(".") else str(where)  # not our hidden temporary
    if is_disk_full(err):
        error = StoreError(f"cannot write {target}: the disk is full ({err.strerror}); free some space or choose "
                           f"another folder{'; ' + fix if fix else ''}")
        error.disk_full = True  # type: ignore[attr-defined]
        return error
    reason = err.strerror or str(err) or type(err).__name__
    return StoreError(f"cannot write {target}: {reason}; check that the folder exists and that you may write "
                      f"there{'; ' + fix if fix else ''}")


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """Make sure `path` is a folder this process can write into, before any work: create it (and its parents)
    if needed, then write and remove a small probe file.

    Raises:
        StoreError: `path` is a file, cannot be created, or cannot be written into (read-only, no permission,
            full disk...), with one line saying which and what to do.
    """
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    try:
        if path.exists() and not path.is_dir():
            raise StoreError(f"{label} is a file, not a folder: give a folder (it is created if needed)")
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(f"{label} is a file, not a folder: give a folder (it is created if needed)") from None
    except NotADirectoryError:
        raise StoreError(f"{label}: a part of this path is a file, not a folder; choose another folder") from None
    except OSError as err:
        raise StoreError(f"cannot create {label}: {err.strerror or err}; choose a folder you may write to") from err
    probe = path / f".nucseg-write-test.{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        if is_disk_full(err):
            raise StoreError(f"cannot write into {label}: the disk is full ({err.strerror}); free some space or "
                             "choose another folder") from err
        reason = "new files cannot be created there" if err.errno == errno.ENOENT else err.strerror or str(err)
        raise StoreError(f"cannot write into {label}: {reason}; choose a folder you may write to") from err
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return path


# ------------------------------------------------------------------------------------------------- lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stale(path: Path, holder: dict[str, Any] | None) -> bool:
    """Whether the lock at `path` was left by a process that is gone (on this host: its pid is dead)."""
    if holder is None:  # empty or garbled: a process that died while writing it, once it is old enough
        try:
            return time.time() - path.stat().st_mtime > _EMPTY_LOCK_GRACE_S
        except OSError:
            return True
    if holder.get("host") != socket.gethostname():
        return False  # cannot tell whether a process on another machine is alive
    pid = holder.get("pid")
    return not isinstance(pid, int) or not _alive(pid)


def _holder_text(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another run (its lock file is being written)"
    since = holder.get("started")
    return (f"{holder.get('command') or 'another nucseg run'} (pid {holder.get('pid')} on {holder.get('host')}"
            f"{', since ' + since if since else ''})")


@contextlib.contextmanager
def output_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold ``folder/.nucseg.lock`` while a run writes into `folder` (which must exist).

    The lock file records the pid, host, command and start time. A lock whose process is gone (same host, dead
    pid) is taken over; a live one refuses.

    Raises:
        StoreError: another run holds the folder (one line naming it, and what to do), or the lock cannot be
            written.
    """
    path = Path(folder) / LOCK_NAME
    token = uuid.uuid4().hex
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "token": token,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    text = json.dumps(mine)
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if not _stale(path, holder):
                raise StoreError(
                    f"{folder} is in use by {_holder_text(holder)}: two runs must not write into one folder; wait "
                    f"for it to finish or choose another --out (if no run is going, remove {path})") from None
            tmp = path.with_name(f"{LOCK_NAME}.{token[:8]}.tmp")  # take the dead run's lock over
            try:
                tmp.write_text(text)
                os.replace(tmp, path)
            except OSError as err:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise write_failure(path, err) from err
            time.sleep(0.05)  # two runs taking over at once: the last rename wins, the other sees it here
            if (_read_lock(path) or {}).get("token") == token:
                break
            continue
        except OSError as err:
            raise write_failure(path, err) from err
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        except OSError as err:
            with contextlib.suppress(OSError):
                path.unlink()
            raise write_failure(path, err) from err
        break
    else:
        raise StoreError(f"{folder} is in use by {_holder_text(_read_lock(path))}; wait for it to finish or "
                         "choose another --out")
    try:
        yield path
    finally:
        if (_read_lock(path) or {}).get("token") == token:
            with contextlib.suppress(OSError):
                path.unlink()
