"""The model picker of the Segment and Fine-tune docks (one list, one home): `ModelCombo`.

Entries are what `nucseg.models.registry.model_catalog` lists (as `nucseg models` does): the shipped models and
the fine-tuned versions in `user_models_dir()`, plus folders the user browsed to; the Fine-tune dock also offers
the untrained architectures as a starting point (they segment nothing, so the Segment dock does not). Damaged model
folders are left out and named once (`name_damaged_models`). The list refreshes when its `VersionsWatcher`
says the versions changed (at once for a version made, kept, renamed or deleted in this process; within `POLL_MS`
for one another process wrote, e.g. ``nucseg finetune`` in a terminal), when it is opened, and before every run;
the Fine-tune dock's versions panel follows the list (`ModelCombo.listed`), so the folder is watched once. A chosen version that was renamed is followed by its weights' sha256; one that was deleted is
reported, never silently swapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import QComboBox, QWidget

from nucseg.errors import NucsegError
from nucseg.models import versions
from nucseg.models.registry import DEFAULT_MODEL, ModelCatalog, model_catalog, resolve_model

BROWSE = "Browse folder…"
_KEY = Qt.ItemDataRole.UserRole
#: how often `VersionsWatcher` looks at the models folder (a directory listing and one stat per version)
POLL_MS = 2000
#: damaged model folders already named in this session (each is named once, not at every refresh of every list)
_named_damaged: set[str] = set()


def name_damaged_models(catalog: ModelCatalog) -> None:
    """Name each damaged model folder of `catalog` once (a napari warning); the lists show the others."""
    from napari.utils.notifications import show_warning

    for line in catalog.damaged_lines():
        if line not in _named_damaged:
            _named_damaged.add(line)
            show_warning(line)


def _is_folder(key: str) -> bool:
    """A model folder (a fine-tuned version, a browsed folder), not a registry name."""
    return "/" in key or "\\" in key


def _display_name(key: str, spec: Any, kind: str) -> str:
    """What the list shows: the name (a folder: its name), then what it is: "fine-tuned", "untrained", its version."""
    label = Path(key).name if _is_folder(key) else spec.name
    version = spec.info.get("version")
    notes = [kind] if kind else []
    if version not in (None, ""):
        notes.append(f"v{version}")
    return f"{label} ({', '.join(notes)})" if notes else label


class VersionsWatcher(QObject):
    """Emits `changed` (on the GUI thread) when fine-tuned versions appear, are kept, renamed or deleted: at once
    for changes in this process (the psygnal `versions_changed`, relayed to the GUI thread), and within `poll_ms`
    for those of another process, by polling `nucseg.models.versions.versions_token`.

    Args:
        parent: the owning widget (the watcher stops with it).
        poll_ms: interval of the on-disk check; 0 = only this process's changes.
    """

    changed = Signal()
    _relay = Signal()

    def __init__(self, parent: QObject | None = None, poll_ms: int = POLL_MS):
        super().__init__(parent)
        self._token = versions.versions_token()
        self._relay.connect(self._emit)
        versions.versions_changed.connect(self._from_any_thread)
        self.timer = QTimer(self)
        self.timer.setInterval(poll_ms)
        self.timer.timeout.connect(self.check)
        if poll_ms:
            self.timer.start()

    def _from_any_thread(self) -> None:
        try:
            self._relay.emit()  # queued to the GUI thread when a worker kept the version
        except RuntimeError:  # the owner was closed
            versions.versions_changed.disconnect(self._from_any_thread)

    def _emit(self) -> None:
        self.seen()
        self.changed.emit()

    def seen(self) -> None:
        """Take the versions on disk as known (the owner is reading them now)."""
        self._token = versions.versions_token()

    def check(self) -> bool:
        """Emit `changed` if the versions on disk differ from the last look; returns whether they did."""
        if versions.versions_token() == self._token:
            return False
        self._emit()
        return True


class ModelCombo(QComboBox):
    """The models of `model_catalog` to choose from; `current_model()` is what `resolve_model` takes.

    Args:
        parent: parent widget.
        untrained: also offer the untrained architectures (a fine-tuning starting point).
        browse: end the list with "Browse folder…" (the owner answers `browse_requested`).

    Signals:
        model_chosen(str): a model was chosen (by the user, or followed after a rename).
        model_lost(str): the chosen model disappeared (deleted); the text says which.
        browse_requested(): the "Browse folder…" entry was picked.
        listed(): the list was read again (the owner may re-read what it shows beside it).

    Attributes:
        watcher: the `VersionsWatcher` that refreshes the list.
    """

    model_chosen = Signal(str)
    model_lost = Signal(str)
    browse_requested = Signal()
    listed = Signal()

    def __init__(self, parent: QWidget | None = None, *, untrained: bool = False, browse: bool = True):
        super().__init__(parent)
        self._untrained = untrained
        self._browse = browse
        self._extra: list[str] = []  # folders the user browsed to
        self._current: str | None = None
        self._sha: dict[str, str | None] = {}
        self.watcher = VersionsWatcher(self)
        self.watcher.changed.connect(self.refresh)
        self.currentIndexChanged.connect(self._on_index)
        self.refresh()  # chooses the default model (else the first)

    # -- the list ----------------------------------------------------------------------------------------
    def _entries(self, catalog: ModelCatalog) -> list[tuple[str, str, str, str | None]]:
        """(key, text, tooltip, sha256) of every model of `catalog` in its order (shipped, versions, untrained),
        then the browsed folders; a folder's key is its resolved path."""
        described = {str(Path(k).resolve()) if _is_folder(k) else k: d for k, d in catalog.models.items()}
        out = []
        for key in list(described) + [k for k in self._extra if k not in described]:
            try:
                spec = resolve_model(key)
            except NucsegError:  # gone since the catalog was read
                continue
            if key not in described:
                kind = ""  # a browsed folder
            elif _is_folder(key):
                kind = "fine-tuned"
            else:
                kind = "untrained" if spec.folder is None else ""
            description = described.get(key) or spec.info.get("description", "")
            tip = "\n".join(t for t in (description, str(spec.folder or "")) if t)
            out.append((key, _display_name(key, spec, kind), tip, spec.sha256))
        return out

    def refresh(self) -> None:
        """Re-list the models; keep the choice, follow it across a rename, report it when it was deleted, and name
        damaged model folders (left out of the list)."""
        self.watcher.seen()  # a change from now on is seen at the next look
        catalog = model_catalog(include_untrained=self._untrained)
        name_damaged_models(catalog)
        entries = self._entries(catalog)
        keys = [e[0] for e in entries]
        chosen = self._current
        followed = None
        if chosen is not None and chosen not in keys:
            sha = self._sha.get(chosen)
            followed = next((e[0] for e in entries if sha and e[3] == sha), None)
        self.blockSignals(True)
        self.clear()
        for key, text, tip, sha in entries:
            self.addItem(text, key)
            self.setItemData(self.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
            self._sha[key] = sha
        if self._browse:
            self.addItem(BROWSE, None)
        self.blockSignals(False)
        if chosen is not None and chosen in keys:
            self._select(chosen)
        elif followed is not None:
            self._extra = [followed if k == chosen else k for k in self._extra]
            self._select(followed)
            self.model_chosen.emit(followed)
        elif chosen is not None:
            self._current = None
            fallback = DEFAULT_MODEL if DEFAULT_MODEL in keys else (keys[0] if keys else None)
            if fallback is not None:
                self._select(fallback)
            self.model_lost.emit(f"the model {Path(chosen).name!r} is gone (deleted or moved); "
                                 f"{'now ' + repr(Path(fallback).name) if fallback else 'choose another'}")
            if fallback is not None:
                self.model_chosen.emit(fallback)
        elif keys:  # nothing was chosen (the list was empty): the default, else the first
            self._select(DEFAULT_MODEL if DEFAULT_MODEL in keys else keys[0])
            self.model_chosen.emit(self._current)
        self.listed.emit()

    def _select(self, key: str) -> None:
        index = self.findData(key)
        if index >= 0:
            self.blockSignals(True)
            self.setCurrentIndex(index)
            self.blockSignals(False)
            self._current = key

    def showPopup(self) -> None:  # noqa: N802 - Qt's name
        self.refresh()
        super().showPopup()

    # -- choosing ----------------------------------------------------------------------------------------
    def _on_index(self, index: int) -> None:
        key = self.itemData(index)
        if key is None:
            if index >= 0 and self.itemText(index) == BROWSE:
                if self._current is not None:
                    self._select(self._current)  # back to the chosen model until a folder is picked
                self.browse_requested.emit()
            return
        self._current = key
        self.model_chosen.emit(key)

    def current_model(self) -> str | None:
        """The chosen model as `resolve_model` takes it (registry name or folder), None when there is none."""
        return self._current

    def model_keys(self) -> list[str]:
        """Every model offered, as `current_model` would give it."""
        return [self.itemData(i) for i in range(self.count()) if self.itemData(i) is not None]

    def set_model(self, key: str | Path) -> bool:
        """Choose a model by registry name or folder; a folder not yet listed is added. False if not a model."""
        key = str(key)
        if key not in self.model_keys():
            try:
                resolve_model(key)
            except NucsegError:
                return False
            if Path(key).expanduser().is_dir():
                key = str(Path(key).expanduser().resolve())
                if key not in self._extra:
                    self._extra.append(key)
                self.refresh()
        if key not in self.model_keys():
            return False
        self._select(key)
        self.model_chosen.emit(key)
        return True
