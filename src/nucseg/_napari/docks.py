"""The plugin's docks as napari's Plugins menu opens them (the classes napari.yaml names): tabbed together, each
as wide as its content.

napari stacks every dock it adds to an area one above the other (``add_plugin_dock_widget`` is called without
``tabify``), so with the five docks open each got a fifth of the height (89 px at 1000 px) and the window could
not be made shorter than the sum of their minimum heights. Each dock here, once napari has docked it, joins the
plugin's other docks in the same area as a tab (`tab_with_siblings`): every dock gets the whole height and
scrolls inside it. Their combo boxes do not grow with a long layer or slide name and show it elided in the middle
(`layer_picker`, `ElideNames`), and their scroll areas are as wide as their content (`_forms.fit_scroll_width`), so
nothing is cut at the right edge.

The widget classes themselves stay plain (tests and scripts build them directly); these subclasses only add
`docked`.
"""

from __future__ import annotations

import weakref

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox, QDockWidget, QMainWindow, QScrollArea, QWidget

from . import tooltips
from ._forms import fit_scroll_width
from .layers import MIN_NAME_CHARS, ElideNames

#: the plugin's dock widgets, in the order they were opened
_OPENED: list[weakref.ref] = []


def _dock_of(widget: QWidget) -> QDockWidget | None:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def _alive(widget: QWidget | None) -> bool:
    if widget is None:
        return False
    try:
        widget.objectName()
    except RuntimeError:  # its C++ object is gone
        return False
    return True


def tab_with_siblings(widget: QWidget) -> None:
    """Tab `widget`'s dock with the plugin's last opened dock in the same area of the same window."""
    if not _alive(widget):
        return
    dock = _dock_of(widget)
    main = dock.parentWidget() if dock is not None else None
    if dock is None or not isinstance(main, QMainWindow) or dock.isFloating():
        return
    area = main.dockWidgetArea(dock)
    siblings = []
    for ref in _OPENED:
        other = ref()
        if other is None or other is widget or not _alive(other):
            continue
        other_dock = _dock_of(other)
        if other_dock is not None and other_dock is not dock and other_dock.parentWidget() is main \
                and not other_dock.isFloating() and main.dockWidgetArea(other_dock) == area:
            siblings.append(other_dock)
    plugin = " (napari-nucseg)"  # napari titles docks "<name> (<plugin>)": a tab has room for the name only
    if dock.windowTitle().endswith(plugin):
        dock.setWindowTitle(dock.windowTitle()[: -len(plugin)])
    if siblings:
        main.tabifyDockWidget(siblings[-1], dock)
        dock.show()
        dock.raise_()


def docked(widget: QWidget) -> QWidget:
    """Give `widget`'s settings their tooltips (`tooltips`), fit its scroll areas to their content and, once
    napari has put it in a dock (the next turn of the event loop), tab that dock with the plugin's others."""
    tooltips.apply(widget)  # first: an eliding combo box keeps its tooltip under the whole name
    for combo in widget.findChildren(QComboBox):  # before any size is computed (QComboBox caches its minimum)
        if combo.sizeAdjustPolicy() == QComboBox.SizeAdjustPolicy.AdjustToContentsOnFirstShow:
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(MIN_NAME_CHARS)
        ElideNames.install(combo)
    for scroll in widget.findChildren(QScrollArea):
        if scroll.widget() is not None and scroll.parentWidget() is widget:
            fit_scroll_width(scroll)
    _OPENED[:] = [ref for ref in _OPENED if ref() is not None]
    _OPENED.append(weakref.ref(widget))
    QTimer.singleShot(0, lambda: tab_with_siblings(widget))
    return widget


#: dock class name (napari.yaml) -> (module, widget class): the classes are made on first use (`__getattr__`), so
#: opening one dock imports only its own widget module
DOCKS = {
    "SegmentDock": ("segment_widget", "SegmentWidget"),
    "EvaluateDock": ("evaluate_widget", "EvaluateWidget"),
    "CorrectionsDock": ("corrections_widget", "CorrectionsWidget"),
    "FinetuneDock": ("finetune_widget", "FinetuneWidget"),
    "SlideImagesDock": ("slide_images", "SlideImagesWidget"),
    "MeasurementsDock": ("measurements_widget", "MeasurementsWidget"),
}
_made: dict[str, type] = {}


def __getattr__(name: str) -> type:
    if name not in DOCKS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _made:
        import importlib

        module, base_name = DOCKS[name]
        base = getattr(importlib.import_module(f"{__package__}.{module}"), base_name)

        def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:  # noqa: F821 - napari reads the name
            base.__init__(self, napari_viewer)
            docked(self)

        _made[name] = type(name, (base,), {"__init__": __init__, "__module__": __name__,
                                           "__doc__": f"{base_name} as a dock of the plugin (`docked`)."})
    return _made[name]
