"""The list of stored corrections in the Corrections widget: what is stored, what of it was reviewed, and
Remove (to the store's trash), Undo, and Mark fully reviewed (for entries saved without a reviewed region)."""

from __future__ import annotations

from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from nucseg.errors import NucsegError
from nucseg.training.corrections.entry import CorrectionEntry
from nucseg.training.corrections.store import CorrectionStore

from ._workers import error_message

USER_ROLE = 256  # Qt.ItemDataRole.UserRole


def review_text(entry: CorrectionEntry) -> str:
    if entry.reviewed is None:
        return "NOT reviewed (not trained on)"
    if entry.reviewed == "all":
        return "reviewed: all"
    return f"reviewed: {100 * (entry.reviewed_fraction or 0):.0f}%"


class CorrectionsList(QWidget):
    """The store's entries with Remove, Undo and Mark fully reviewed.

    Args:
        store: the corrections store shown.
    """

    def __init__(self, store: CorrectionStore, parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self.count_label = QLabel()
        self.count_label.setWordWrap(True)
        self.count_label.setMinimumWidth(1)  # a long store path wraps instead of widening the dock
        self.list = QListWidget()
        self.list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.list.setMinimumHeight(120)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("move the selected corrections to the store's trash (Undo brings them back)")
        self.undo_button = QPushButton("Undo")
        self.mark_button = QPushButton("Mark fully reviewed")
        self.mark_button.setToolTip("for corrections saved without a reviewed region: say that you checked all "
                                    "of each selected one, so fine-tuning may learn from all of it")
        buttons = QHBoxLayout()
        for button in (self.remove_button, self.undo_button, self.mark_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.count_label)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        self.remove_button.clicked.connect(self.remove_selected)
        self.undo_button.clicked.connect(self.undo)
        self.mark_button.clicked.connect(self.mark_selected_reviewed)

    def selected_ids(self) -> list[str]:
        return [item.data(USER_ROLE) for item in self.list.selectedItems()]

    def _each_selected(self, action: Any, what: str) -> None:
        ids = self.selected_ids()
        if not ids:
            show_info(f"select corrections in the list to {what} them")
            return
        try:
            for entry_id in ids:
                action(entry_id)
        except NucsegError as err:
            show_error(error_message(err))
        self.refresh()

    def remove_selected(self) -> None:
        """Move the selected entries to the trash."""
        self._each_selected(self.store.remove, "remove")

    def mark_selected_reviewed(self) -> None:
        """Record that the person checked all of each selected entry that had no reviewed region."""
        unmarked = {e.id for e in self.store.unreviewed()}
        self._each_selected(lambda i: self.store.mark_reviewed(i) if i in unmarked else None, "mark")

    def undo(self) -> None:
        """Restore the last removed entry."""
        try:
            entry = self.store.undo()
        except NucsegError as err:
            show_error(error_message(err))
            return
        if entry is None:
            show_info("nothing to undo")
        self.refresh()

    def refresh(self) -> None:
        """Re-list the stored entries and the count."""
        try:
            entries = self.store.entries()
        except NucsegError as err:
            show_error(error_message(err))
            entries = []
        self.list.clear()
        for entry in entries:
            src = str(entry.source).replace("\\", "/").rsplit("/", 1)[-1]
            text = (f"{entry.id}  {src}  {entry.shape[0]}x{entry.shape[1]} px  {entry.n_nuclei} nuclei  "
                    f"{review_text(entry)}")
            item = QListWidgetItem(text)
            item.setData(USER_ROLE, entry.id)
            item.setToolTip(f"region (y, x, h, w) {entry.provenance.get('region')}, model "
                            f"{entry.provenance.get('model')}, saved {entry.created}")
            self.list.addItem(item)
        nuclei = sum(e.n_nuclei for e in entries)
        unreviewed = sum(e.reviewed is None for e in entries)
        note = f"; {unreviewed} not reviewed (left out of fine-tuning)" if unreviewed else ""
        self.count_label.setText(f"{len(entries)} corrections, {nuclei} nuclei in {self.store.root}{note}")
