"""Small Qt input helpers shared by the dock widgets: number fields and a scroll area that keeps a dock usable
on a 1000-px-high screen."""

from __future__ import annotations

import contextlib

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFrame,
    QLayout,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)


def _spin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(lo, hi)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin


def _dspin(lo: float, hi: float, value: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(lo, hi)
    spin.setDecimals(2)
    spin.setSingleStep(0.05)
    spin.setValue(value)
    return spin


#: `fit_width` does not widen a dock beyond this for a table's preferred width
MAX_DOCK_WIDTH = 440


def scroll_area(content: QWidget) -> QScrollArea:
    """A frameless vertical scroll area around `content` (it follows the dock's width, never scrolls sideways)."""
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(content)
    return scroll


def scrolled(owner: QWidget) -> QVBoxLayout:
    """Give `owner` a vertical scroll area and return the layout to fill: when the dock is shorter than its
    content (a laptop screen, several docks stacked), the content scrolls instead of being squeezed or cut."""
    content = QWidget()
    scroll = scroll_area(content)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    owner.scroll_area = scroll  # type: ignore[attr-defined]  # tests and callers reach it here
    return QVBoxLayout(content)


def fit_width(owner: QWidget) -> None:
    """After `scrolled`'s layout is filled: the dock as wide as its content needs (the scroll area scrolls only
    vertically), with combo boxes that do not grow with the longest layer or model name."""
    fit_scroll_width(owner.scroll_area)  # type: ignore[attr-defined]


def fit_scroll_width(scroll: QScrollArea) -> None:
    """A vertical-only scroll area as wide as its content needs, so nothing in it is cut at the right edge; its
    combo boxes do not grow with the longest layer or model name (a `layer_picker` elides the name it shows)."""
    content = scroll.widget()
    for combo in content.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(14)
    for layout in content.findChildren(QLayout):  # measure with the narrower combos, not cached sizes
        layout.invalidate()
    if content.layout() is not None:
        content.layout().activate()
    _fit(scroll)
    if not content.property("nucseg_fits"):  # and again whenever the content's layout changes (a list filled)
        content.setProperty("nucseg_fits", True)
        content.installEventFilter(_Refit(scroll))


def _fit(scroll: QScrollArea, preferred: bool = True) -> None:
    """Make `scroll` at least as wide as its content's minimum (and, `preferred`, its preferred width within
    `MAX_DOCK_WIDTH`: tables ask for their columns), plus the vertical scroll bar; never narrower than it is."""
    content = scroll.widget()
    width = content.minimumSizeHint().width()
    if preferred:
        width = max(width, min(content.sizeHint().width(), MAX_DOCK_WIDTH))
    width += scroll.verticalScrollBar().sizeHint().width() + 8
    if width > scroll.minimumWidth():  # only ever wider: a dock that shrank under the user's drag would jump
        scroll.setMinimumWidth(width)


class _Refit(QObject):
    """Refits a scroll area when its content asks for a new layout (it grew wider than when it was fitted)."""

    def __init__(self, scroll: QScrollArea):
        super().__init__(scroll)
        self.scroll = scroll

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.LayoutRequest:
            QTimer.singleShot(0, self._refit)
        return False

    def _refit(self) -> None:
        # the minimum only: a status line's preferred width grows with its text, and every widening of the dock
        # resizes napari's OpenGL canvas (a second of GUI time with software rendering)
        with contextlib.suppress(RuntimeError):  # the dock was closed meanwhile
            _fit(self.scroll, preferred=False)
