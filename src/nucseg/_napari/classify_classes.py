"""The Classify dock's class list: names and colours (editable, saved in ``$NUCSEG_HOME/classify/classes.json``);
the selected row is the class a click gives. Shortcuts: Shift+1..9 choose the n-th class."""

from __future__ import annotations

from collections.abc import Callable

from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor, QPixmap
from qtpy.QtWidgets import (
    QColorDialog,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from nucseg.classify.classes import (
    NucleusClass,
    check_class_name,
    color_for,
    load_class_list,
    save_class_list,
)
from nucseg.errors import NucsegError


def _icon(color: tuple[int, int, int]):
    from qtpy.QtGui import QIcon

    pixmap = QPixmap(14, 14)
    pixmap.fill(QColor(*color))
    return QIcon(pixmap)


class ClassList(QWidget):
    """Classes with colours; `current()` is the selected one.

    Args:
        choose_color: asks for a colour (default: Qt's colour dialog); tests pass their own.
    """

    changed = Signal()

    def __init__(self, choose_color: Callable[[tuple[int, int, int]], tuple[int, int, int] | None] | None = None):
        super().__init__()
        self.choose_color = choose_color or _dialog_color
        self.classes: list[NucleusClass] = load_class_list()
        self.list = QListWidget()
        self.list.setMaximumHeight(120)
        self.list.itemChanged.connect(self._renamed)
        add, colour, remove = QPushButton("Add"), QPushButton("Colour…"), QPushButton("Remove")
        add.clicked.connect(lambda: self.add_class())
        colour.clicked.connect(self.change_color)
        remove.clicked.connect(self.remove_current)
        buttons = QHBoxLayout()
        for b in (add, colour, remove):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list)
        layout.addLayout(buttons)
        self._fill(0)

    def _fill(self, row: int) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for i, c in enumerate(self.classes):
            item = QListWidgetItem(_icon(c.color), c.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
            item.setToolTip(f"{c.description or c.name}; Shift+{i + 1} selects it" if i < 9 else c.name)
            self.list.addItem(item)
        self.list.blockSignals(False)
        self.list.setCurrentRow(max(0, min(row, len(self.classes) - 1)))

    def current(self) -> NucleusClass:
        return self.classes[max(0, self.list.currentRow())]

    def select(self, index: int) -> None:
        if 0 <= index < len(self.classes):
            self.list.setCurrentRow(index)

    def colors(self) -> dict[str, tuple[int, int, int]]:
        return {c.name: c.color for c in self.classes}

    def _save(self, row: int) -> None:
        try:
            save_class_list(self.classes)
        except NucsegError as err:
            show_error(str(err))
        self._fill(row)
        self.changed.emit()

    def add_class(self, name: str | None = None) -> None:
        taken = {c.name for c in self.classes}
        name = name or next(f"class {i}" for i in range(1, 100) if f"class {i}" not in taken)
        self.classes.append(NucleusClass(name, color_for(name, [c.color for c in self.classes])))
        self._save(len(self.classes) - 1)

    def _renamed(self, item: QListWidgetItem) -> None:
        row = self.list.row(item)
        try:
            name = check_class_name(item.text())
            if any(c.name == name for i, c in enumerate(self.classes) if i != row):
                raise NucsegError(f"there is a class {name!r} already")
        except NucsegError as err:
            show_error(str(err))
            self._fill(row)
            return
        old = self.classes[row]
        self.classes[row] = NucleusClass(name, old.color, old.description if name == old.name else "")
        self._save(row)

    def change_color(self) -> None:
        row = max(0, self.list.currentRow())
        color = self.choose_color(self.classes[row].color)
        if color is not None:
            old = self.classes[row]
            self.classes[row] = NucleusClass(old.name, tuple(int(c) for c in color[:3]), old.description)
            self._save(row)

    def remove_current(self) -> None:
        if len(self.classes) <= 2:
            show_error("keep at least two classes")
            return
        row = max(0, self.list.currentRow())
        del self.classes[row]
        self._save(row)


def _dialog_color(color: tuple[int, int, int]) -> tuple[int, int, int] | None:
    chosen = QColorDialog.getColor(QColor(*color))
    return (chosen.red(), chosen.green(), chosen.blue()) if chosen.isValid() else None
