"""Every dock of the plugin open at once fits a 1366 x 768 laptop and a 1600 x 1000 screen: no control or text is
cut, long layer names are elided, the docks are tabbed and scroll. Opened the way a user opens them (Plugins
menu: ``add_plugin_dock_widget``), in a real window under Xvfb, with a real slide and long TCGA-style names.

Screenshots of both sizes: ``NUCSEG_SCREENSHOTS=1 pytest tests/test_dock_layout.py`` writes
docs/screenshots/docks_1366x768.png and docks_1600x1000.png (otherwise they go to the test's tmp folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractScrollArea,
    QAbstractSpinBox,
    QComboBox,
    QDockWidget,
    QLabel,
    QLineEdit,
    QProgressBar,
    QScrollArea,
    QTableView,
    QWidget,
)

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT.parent / "shared" / "data" / "slides" / "small_HE.svs"
#: as napari's Plugins menu names them (napari.yaml)
DOCKS = ("Segment nuclei", "Evaluate (TP / FP / FN)", "Corrections", "Fine-tune", "Slide label and macro",
         "Measurements")
LONG_NAME = "TCGA-A7-A13E-01Z-00-DX1.5D6E6E5C-1A3B-4B8E-9C5C-2C0B7F1E0A4B"


def clipped(dock: QDockWidget) -> list[str]:
    """What is cut in a dock as it is laid out now: controls narrower than their text or their minimum, anything
    reaching past the dock's right edge, word-wrapped labels too short for their text, tables cutting their
    columns without a scroll bar."""
    problems = []
    right = dock.width()
    for w in dock.findChildren(QWidget):
        if not w.isVisibleTo(dock) or w.width() <= 0 or isinstance(w, (QScrollArea,)):
            continue
        if any(isinstance(p, QComboBox) for p in _parents(w, dock)):  # a combo's own popup and line edit
            continue
        name = f"{type(w).__name__} {_text(w)!r}"
        x0 = w.mapTo(dock, w.rect().topLeft()).x()
        viewport = next((p for p in _parents(w, dock) if isinstance(p, QAbstractScrollArea)), None)
        if (viewport is None or not isinstance(viewport, QTableView)) and (x0 < 0 or x0 + w.width() > right + 1):
            problems.append(f"{name} reaches x {x0}..{x0 + w.width()} past the dock's width {right}")
        if isinstance(viewport, QScrollArea) and viewport.viewport() in _parents(w, dock):
            # nor under the scroll area's right edge (its vertical scroll bar)
            edge = viewport.viewport().mapTo(dock, viewport.viewport().rect().topRight()).x() + 1
            if x0 + w.width() > edge + 1:
                problems.append(f"{name} reaches x {x0 + w.width()}, under the scroll area's edge at {edge}")
        if isinstance(w, QAbstractButton) and w.text():
            if w.width() < w.sizeHint().width() - 1:
                problems.append(f"{name} is {w.width()} px wide, its text needs {w.sizeHint().width()}")
        elif isinstance(w, QLabel) and w.text() and not w.pixmap():
            if w.wordWrap():
                if w.height() < w.heightForWidth(w.width()) - 1:
                    problems.append(f"{name} is {w.height()} px high, its text needs {w.heightForWidth(w.width())}")
            elif w.width() < w.sizeHint().width() - 1:
                problems.append(f"{name} is {w.width()} px wide, its text needs {w.sizeHint().width()}")
        elif isinstance(w, (QAbstractSpinBox, QComboBox, QLineEdit, QProgressBar)):
            # napari's style sheet makes fields 20 px high (below Qt's own hint, 23): what matters is the text line
            if w.width() < w.minimumSizeHint().width() - 1 or w.height() < w.fontMetrics().height() + 2:
                problems.append(f"{name} is {w.width()}x{w.height()}, needs {w.minimumSizeHint().width()}x"
                                f"{w.fontMetrics().height() + 2}")
        elif isinstance(w, QTableView) and w.model() is not None and w.model().columnCount():
            header = w.horizontalHeader()
            needed = header.length()
            if needed > w.viewport().width() + 1 and not w.horizontalScrollBar().isVisible():
                problems.append(f"{name} cuts its columns ({needed} px in {w.viewport().width()}) without a scroll bar")
    return problems


def _parents(w: QWidget, stop: QWidget):
    p = w.parentWidget()
    while p is not None and p is not stop:
        yield p
        p = p.parentWidget()


def _text(w: QWidget) -> str:
    for attr in ("text", "currentText", "windowTitle"):
        if hasattr(w, attr):
            try:
                return str(getattr(w, attr)())[:40]
            except TypeError:
                continue
    return ""


def scene(viewer):
    """A real slide with a long TCGA-style name, a result of it and a truth, as a pathologist's session has."""
    if SLIDE.is_file():
        (image,) = viewer.open(str(SLIDE), plugin="napari-nucseg")
    else:
        image = viewer.add_image(np.full((600, 800, 3), 230, np.uint8), rgb=True)
    image.name = LONG_NAME
    shape = image.data.shape[:2] if not image.multiscale else image.data[0].shape[:2]
    labels = np.zeros(shape, np.uint32)
    labels[100:120, 100:125] = 1
    labels[300:318, 400:420] = 2
    viewer.add_labels(labels, name=f"{LONG_NAME} nuclei (nucseg-default v2)", scale=image.scale,
                      units=image.units, metadata={"mpp": image.metadata.get("mpp")})
    viewer.add_labels(labels.copy(), name=f"{LONG_NAME} ground truth labels", scale=image.scale, units=image.units)


def open_every_dock(viewer, qtbot):
    docks = {}
    for name in DOCKS:
        dock, _ = viewer.window.add_plugin_dock_widget("napari-nucseg", name)
        docks[name] = dock
        qtbot.wait(50)
    qtbot.wait(200)
    return docks


def shoot(viewer, qtbot, name: str, tmp_path: Path) -> Path:
    out = ROOT / "docs" / "screenshots" if os.environ.get("NUCSEG_SCREENSHOTS") else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    qtbot.wait(300)
    path = out / name
    viewer.screenshot(str(path), canvas_only=False)
    return path


@pytest.mark.parametrize("size", [(1366, 768), (1600, 1000)])
def test_every_dock_fits_with_all_of_them_open(make_napari_viewer, qtbot, tmp_path, monkeypatch, size):
    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path / "home"))
    viewer = make_napari_viewer(show=True)
    scene(viewer)
    docks = open_every_dock(viewer, qtbot)
    window = viewer.window._qt_window
    window.resize(*size)
    qtbot.wait(300)
    assert window.width() == size[0] and window.height() == size[1]

    # tabbed: each dock gets the whole height of its area, not a fifth of it
    main = window
    for name, dock in docks.items():
        assert len(main.tabifiedDockWidgets(dock)) == len(DOCKS) - 1, f"{name} is not tabbed with the others"
    problems = {}
    for name, dock in docks.items():
        dock.raise_()
        qtbot.wait(150)
        assert dock.isVisible()
        assert dock.height() > size[1] * 0.55, f"{name} gets {dock.height()} px of {size[1]}"
        if found := clipped(dock):
            problems[name] = found
        if name == DOCKS[0]:
            shot = shoot(viewer, qtbot, f"docks_{size[0]}x{size[1]}.png", tmp_path)
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() > size[0] * 0.35, f"the canvas keeps only {canvas.width()} px of {size[0]}"
    assert not problems, "\n".join(f"{k}: {p}" for k, v in problems.items() for p in v)
    assert shot.is_file()


def test_long_layer_names_are_elided_in_the_layer_choices(make_napari_viewer, qtbot):
    from nucseg._napari.layer_picker import layer_picker

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((10, 10, 3), np.uint8), rgb=True, name=LONG_NAME)
    picker = layer_picker(viewer, type(viewer.layers[0]))
    combo = picker.native  # magicgui's widget; its Qt combo box
    combo.resize(160, combo.sizeHint().height())
    combo.show()
    qtbot.wait(50)
    shown = picker.shown_text()
    assert shown != LONG_NAME and "…" in shown and shown.startswith("TCGA") and shown.endswith(LONG_NAME[-4:])
    assert combo.fontMetrics().horizontalAdvance(shown) <= combo.width()
    assert combo.toolTip() == LONG_NAME  # the whole name on hover
