"""The versions panel of the fine-tune widget: list, rename, delete (to the trash) and export fine-tuned models.

Every action goes through `nucseg.models.versions`, which never overwrites a version, never erases one (deleted
versions move to ``$NUCSEG_HOME/trash/models``) and refuses to touch the models shipped with the package.
The dialogs are skipped when the caller passes the answer (tests, scripts). The panel is refreshed by its owner
when the model list is read again (`model_list.ModelCombo.listed`: the one watcher of the versions folder).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from nucseg.errors import NucsegError
from nucseg.models import versions

from ._workers import error_message

USER_ROLE = 256  # Qt.ItemDataRole.UserRole
class VersionsPanel(QGroupBox):
    """A list of fine-tuned versions with Rename, Delete and Export buttons.

    Args:
        parent: the owning widget.
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Versions", parent)
        self.list = QListWidget()
        self.rename_button = QPushButton("Rename…")
        self.delete_button = QPushButton("Delete…")
        self.export_button = QPushButton("Export…")
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        buttons = QHBoxLayout()
        for button in (self.rename_button, self.delete_button, self.export_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.rename_button.clicked.connect(lambda: self.rename_version())
        self.delete_button.clicked.connect(lambda: self.delete_version())
        self.export_button.clicked.connect(lambda: self.export_version())

    def refresh(self) -> None:
        """Re-list the versions in ``$NUCSEG_HOME/models``, keeping the selection."""
        current = self.selected_version()
        self.list.clear()
        for version in versions.list_versions():
            item = QListWidgetItem(version.summary())
            item.setData(USER_ROLE, version.name)
            item.setToolTip(f"{version.folder}\ncreated {version.created}\n{version.description}")
            self.list.addItem(item)
            if version.name == current:
                self.list.setCurrentItem(item)

    def names(self) -> list[str]:
        """The listed version names, oldest first."""
        return [self.list.item(i).data(USER_ROLE) for i in range(self.list.count())]

    def select(self, name: str) -> None:
        """Select a version by name."""
        for i in range(self.list.count()):
            if self.list.item(i).data(USER_ROLE) == name:
                self.list.setCurrentRow(i)

    def selected_version(self) -> str | None:
        item = self.list.currentItem()
        return None if item is None else item.data(USER_ROLE)

    def rename_version(self, new_name: str | None = None) -> Path | None:
        """Rename the selected version (asks for the name when not given)."""
        name = self.selected_version()
        if name is None:
            show_info("select a version to rename")
            return None
        if new_name is None:
            new_name, ok = QInputDialog.getText(self, "Rename version", "new name", text=name)
            if not ok:
                return None
        return self._guard(lambda: versions.rename(name, new_name.strip()))

    def delete_version(self, confirm: bool | None = None) -> Path | None:
        """Move the selected version to the trash, after a confirmation dialog (unless `confirm` is given)."""
        name = self.selected_version()
        if name is None:
            show_info("select a version to delete")
            return None
        if confirm is None:
            answer = QMessageBox.question(self, "Delete version", f"Move {name} to {versions.trash_dir()}?")
            confirm = answer == QMessageBox.StandardButton.Yes
        if not confirm:
            return None
        return self._guard(lambda: versions.delete(name, confirm=True))

    def export_version(self, dest: str | Path | None = None) -> Path | None:
        """Copy the selected version to `dest` (asks for a parent folder when not given)."""
        name = self.selected_version()
        if name is None:
            show_info("select a version to export")
            return None
        if dest is None:
            folder = QFileDialog.getExistingDirectory(self, f"Export {name} into folder")
            if not folder:
                return None
            dest = Path(folder) / name
        path = self._guard(lambda: versions.export_version(name, dest))
        if path is not None:
            show_info(f"exported {name} to {path}")
        return path

    def _guard(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except NucsegError as err:
            show_error(error_message(err))
            return None
