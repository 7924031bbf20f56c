"""Fine-tuned model versions: folders under `user_models_dir()` (``$NUCSEG_HOME/models``) that are listed,
renamed, exported and deleted (moved to ``$NUCSEG_HOME/trash/models``, never erased) here.

A version is a model folder (config.json + model.safetensors) written by `iter_finetune`; its config.json
records the base model, the creation time and the validation scores before and after fine-tuning. A run that
has not finished yet (no model.safetensors, a checkpoint) is an *unfinished run* that can be resumed.

The shipped models inside the package (`nucseg.models.registry.SHIPPED_DIR`) are never renamed or deleted.

A finished run whose model was not (yet) kept is a *candidate*: model.safetensors with ``candidate.json``
instead of config.json. It is not listed as a version and loads nowhere by name; `register_candidate` makes it
one (the user chose to keep it, or it beat its base on validation), `discard_candidate` moves it to the trash.

`versions_changed` is a psygnal signal emitted (with no arguments) whenever versions appear, are renamed or
deleted in this process; model lists (the segment widget's, the fine-tune widget's) connect to it to refresh at
once. Versions written by another process (``nucseg finetune`` in a terminal) are seen by polling
`versions_token`, a cheap listing of the models folder that changes whenever a version appears, is renamed,
kept or deleted::

    from nucseg.models.versions import versions_changed, versions_token
    versions_changed.connect(self.refresh_models)
    token = versions_token()  # later, e.g. from a 2 s QTimer: if versions_token() != token: refresh
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from psygnal import SignalInstance

from nucseg.errors import ModelError, StoreError
from nucseg.io.export import atomic_write_text
from nucseg.models.registry import (
    CONFIG_FILE,
    ENCODERS,
    SHIPPED_DIR,
    WEIGHTS_FILE,
    ModelSpec,
    resolve_model,
    shipped_models,
    user_models_dir,
)

#: emitted after a version is created, renamed or deleted
versions_changed = SignalInstance((), name="versions_changed")

#: files and folders of a run that only training needs (left out of exports, removed by `discard_training_state`)
TRAINING_STATE = ("checkpoints", "best.safetensors")
RUN_CONFIG = "finetune_config.json"
#: the config of a finished run's model until it is kept (renamed to config.json) or discarded
CANDIDATE_CONFIG = "candidate.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """A fine-tuned version as listed to a person.

    Attributes:
        name: folder name (what rename / delete / export take).
        folder: the model folder (pass it to `resolve_model` or ``nucseg predict --model``).
        base: name of the model it was fine-tuned from.
        created: ISO time it was written.
        before: validation scores of the base model on the run's validation images.
        after: validation scores of the version (its best epoch).
        description: one line from its config.json.
    """

    name: str
    folder: Path
    base: str
    created: str
    before: dict[str, float]
    after: dict[str, float]
    description: str

    def summary(self) -> str:
        """One line: name, base and AJI before -> after when known."""
        text = f"{self.name} (from {self.base}"
        if "val_aji" in self.after:
            before = self.before.get("val_aji")
            text += f", AJI {before:.3f} -> " if before is not None else ", AJI "
            text += f"{self.after['val_aji']:.3f}"
        return text + ")"


def trash_dir() -> Path:
    """``$NUCSEG_HOME/trash/models``: where deleted versions go."""
    return user_models_dir().parent / "trash" / "models"


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise StoreError(f"cannot read {folder / CONFIG_FILE}: {err}") from err


def _version(folder: Path) -> ModelVersion:
    cfg = _read_config(folder)
    base = cfg.get("base_model")
    validation = cfg.get("validation") or {}
    created = cfg.get("created") or _dt.datetime.fromtimestamp(
        (folder / WEIGHTS_FILE).stat().st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")
    return ModelVersion(
        name=folder.name, folder=folder, base=str(base.get("name") if isinstance(base, dict) else base or "?"),
        created=str(created), before=dict(validation.get("before") or {}), after=dict(validation.get("after") or {}),
        description=str(cfg.get("description", "")))


def list_versions() -> list[ModelVersion]:
    """Finished versions in `user_models_dir()`, oldest first (unreadable folders are skipped)."""
    root = user_models_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and (folder / CONFIG_FILE).is_file() \
                and (folder / WEIGHTS_FILE).is_file():
            try:
                out.append(_version(folder))
            except StoreError:
                continue
    return sorted(out, key=lambda v: (v.created, v.name))


def unfinished_runs() -> list[Path]:
    """Run folders in `user_models_dir()` with training state but no finished model or candidate, newest first."""
    root = user_models_dir()
    if not root.is_dir():
        return []
    runs = [f for f in root.iterdir() if f.is_dir() and (f / RUN_CONFIG).is_file()
            and not ((f / WEIGHTS_FILE).is_file() and (f / CONFIG_FILE).is_file()) and not is_candidate(f)]
    return sorted(runs, key=lambda f: (f / RUN_CONFIG).stat().st_mtime, reverse=True)


def is_candidate(folder: str | Path) -> bool:
    """Whether `folder` holds a finished run's model that was neither kept nor discarded."""
    folder = Path(folder)
    return (folder / CANDIDATE_CONFIG).is_file() and (folder / WEIGHTS_FILE).is_file() \
        and not (folder / CONFIG_FILE).is_file()


def pending_candidates() -> list[Path]:
    """Candidates in `user_models_dir()` waiting for a keep / discard decision, newest first."""
    root = user_models_dir()
    if not root.is_dir():
        return []
    found = [f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".") and is_candidate(f)]
    return sorted(found, key=lambda f: (f / CANDIDATE_CONFIG).stat().st_mtime, reverse=True)


def register_candidate(folder: str | Path) -> Path:
    """Keep a candidate: its candidate.json becomes config.json (atomically), so it is a version from now on.

    Raises:
        StoreError: `folder` is not a candidate (already kept, discarded, or never finished).
    """
    folder = Path(folder)
    if not is_candidate(folder):
        raise StoreError(f"{folder} holds no model waiting to be kept (already kept, discarded, or unfinished)")
    try:
        os.replace(folder / CANDIDATE_CONFIG, folder / CONFIG_FILE)  # config.json is absent: checked above
    except OSError as err:
        raise StoreError(f"cannot keep {folder}: {err}") from err
    versions_changed.emit()
    return folder


def discard_candidate(folder: str | Path) -> Path:
    """Move a candidate to ``$NUCSEG_HOME/trash/models`` without its training state (nothing is erased but
    the checkpoints, which only served resuming a run that is over).

    Returns:
        Where it now lies in the trash.
    """
    folder = Path(folder)
    if not is_candidate(folder):
        raise StoreError(f"{folder} holds no model waiting for a decision (already kept, discarded, or unfinished)")
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    (folder / "best.safetensors").unlink(missing_ok=True)
    target = _move_to_trash(folder)
    versions_changed.emit()
    return target


def versions_token() -> tuple[tuple[str, int], ...]:
    """A cheap fingerprint of the versions on disk: (name, config.json mtime in ns) of every folder that holds a
    config.json in `user_models_dir()`. It changes when a version appears (in any process), is renamed, kept or
    deleted; poll it where `versions_changed` cannot reach (versions made by another process)."""
    root = user_models_dir()
    try:
        folders = list(os.scandir(root))
    except OSError:
        return ()
    out = []
    for entry in folders:
        try:
            out.append((entry.name, os.stat(os.path.join(entry.path, CONFIG_FILE)).st_mtime_ns))
        except OSError:
            continue
    return tuple(sorted(out))


def run_epochs_done(run: Path) -> int:
    """The last checkpointed epoch of a run folder (0 when none)."""
    try:
        return int(json.loads((run / "checkpoints" / "latest.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def new_version_dir(base_name: str | Path) -> Path:
    """A new, empty, never-used folder ``<base>-ft-<YYYYmmdd-HHMMSS>[-n]`` in `user_models_dir()`.

    The folder is created here (atomically, `mkdir` without exist_ok), so two runs never share one.
    """
    root = user_models_dir()
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{_slug(Path(str(base_name)).name)}-ft-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for n in range(1000):
        folder = root / (stem if n == 0 else f"{stem}-{n}")
        if (trash_dir() / folder.name).exists():
            continue
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise StoreError(f"cannot find a free version name in {root}")


def is_shipped(name_or_path: str | Path) -> bool:
    """Whether this names (or is the folder of) a model shipped inside the package."""
    text = str(name_or_path)
    if text in shipped_models():
        return True
    try:
        Path(text).resolve().relative_to(SHIPPED_DIR.resolve())
    except ValueError:
        return False
    return True


def _user_folder(name: str | Path, action: str) -> Path:
    """The version folder `name` (a folder name or a path) inside `user_models_dir()`, refusing shipped models."""
    if is_shipped(name):
        raise StoreError(f"{name} is a model shipped with nucseg: it cannot be {action}; fine-tune it into a new "
                         "version instead")
    root = user_models_dir().resolve()
    path = Path(str(name))
    folder = (path if path.is_absolute() or len(path.parts) > 1 else root / path).resolve()
    if folder.parent != root:
        raise StoreError(f"{name} is not a fine-tuned version in {root}: only those can be {action} here")
    if not folder.is_dir():
        raise StoreError(f"no version {folder.name!r} in {root} (see the versions list)")
    if not (folder / CONFIG_FILE).is_file():
        raise StoreError(f"{folder} is an unfinished run, not a model version: resume or finish it first")
    return folder


def check_new_name(new: str) -> str:
    """Refuse names that are not plain folder names or that would shadow a registry name."""
    if not _NAME.fullmatch(new or ""):
        raise StoreError(f"{new!r} is not a valid version name: use letters, digits, '.', '_' or '-' "
                         "(starting with a letter or digit, at most 100 characters)")
    if new in shipped_models() or (new.startswith("unet-") and new[5:] in ENCODERS):
        raise StoreError(f"{new!r} is the name of a built-in model: choose another name")
    return new


def rename(old: str | Path, new: str) -> Path:
    """Rename a version folder (and the name in its config.json); refuses an existing target.

    Returns:
        The new folder.
    """
    folder = _user_folder(old, "renamed")
    target = folder.parent / check_new_name(new)
    if target.exists():
        raise StoreError(f"a version named {new!r} already exists: versions are never overwritten; choose another")
    cfg = _read_config(folder)
    try:
        os.rename(folder, target)  # a directory rename onto an existing name fails; checked above for a clear message
    except OSError as err:
        raise StoreError(f"cannot rename {folder.name} to {new}: {err}") from err
    cfg["name"] = new
    atomic_write_text(target / CONFIG_FILE, json.dumps(cfg, indent=2))
    _forget_cached(folder)
    versions_changed.emit()
    return target


def delete(name: str | Path, confirm: bool = False) -> Path:
    """Move a version to ``$NUCSEG_HOME/trash/models`` (nothing is erased); needs ``confirm=True``.

    Returns:
        Where the version now lies in the trash.
    """
    folder = _user_folder(name, "deleted")
    if not confirm:
        raise StoreError(f"deleting {folder.name} needs confirmation (confirm=True); it is moved to {trash_dir()}")
    target = _move_to_trash(folder)
    versions_changed.emit()
    return target


def _move_to_trash(folder: Path) -> Path:
    trash = trash_dir()
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / folder.name
    n = 1
    while target.exists():
        target, n = trash / f"{folder.name}.{n}", n + 1
    try:
        shutil.move(str(folder), str(target))
    except OSError as err:
        raise StoreError(f"cannot move {folder} to {trash}: {err}") from err
    _forget_cached(folder)
    return target


def export_version(name: str | Path, dest: str | Path) -> Path:
    """Copy a model (a version name, a registry name or a folder) to `dest`, without its training state.

    The copy loads with ``resolve_model(dest)`` and ``nucseg predict --model dest``.

    Raises:
        StoreError: `dest` exists (exports never overwrite).
        ModelError: the model cannot be found or the copy does not verify.
    """
    dest = Path(dest)
    if dest.exists():
        raise StoreError(f"{dest} already exists: exports never overwrite; choose a new folder")
    text = str(name)
    if not is_shipped(text) and not Path(text).is_dir() and (user_models_dir() / text).is_dir():
        text = str(user_models_dir() / text)
    spec = resolve_model(text)
    if spec.folder is None:
        raise ModelError(f"{name} is an untrained architecture: there are no weights to export")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:6]}.tmp")
    shutil.copytree(spec.folder, tmp, ignore=shutil.ignore_patterns(*TRAINING_STATE, ".*"))
    os.rename(tmp, dest)
    check = resolve_model(dest)
    _verify(check)
    return dest


def discard_training_state(folder: str | Path) -> None:
    """Remove checkpoints and best-epoch weights from a *finished* version (they only serve resuming)."""
    folder = Path(folder)
    if not ((folder / WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file()):
        raise StoreError(f"{folder} is not a finished model: its training state is still needed to resume")
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    (folder / "best.safetensors").unlink(missing_ok=True)


def _verify(spec: ModelSpec) -> None:
    from nucseg.models.registry import sha256_of

    if spec.sha256 and spec.weights_path is not None and sha256_of(spec.weights_path) != spec.sha256:
        raise ModelError(f"the copy in {spec.folder} does not match its sha256: the source is damaged")


def _forget_cached(folder: Path) -> None:
    """Drop cached networks of a folder that moved (the cache is keyed by folder)."""
    import sys

    build = sys.modules.get("nucseg.models.build")
    if build is not None:
        with build._CACHE_LOCK:
            for key in [k for k in build._CACHE if k[1] == str(folder)]:
                del build._CACHE[key]


def run_history(run: str | Path) -> list[dict[str, Any]]:
    """The epoch records of a run's last checkpoint (empty when it has none), e.g. to redraw its curves."""
    folder = Path(run) / "checkpoints"
    try:
        latest = json.loads((folder / "latest.json").read_text())
        state = json.loads((folder / latest["checkpoint"] / "state.json").read_text())
        return list(state.get("history", []))
    except (OSError, ValueError, KeyError):
        return []
