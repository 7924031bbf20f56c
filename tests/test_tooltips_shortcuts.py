"""Every setting explains itself (what, default, when to change it), the documented shortcuts work from the
canvas, and a fluorescence slide gets a persistent warning and is not segmented until the user says so.

Screenshot: ``NUCSEG_SCREENSHOTS=1 pytest tests/test_tooltips_shortcuts.py -k fluorescence`` writes
docs/screenshots/segment_fluorescence_warning.png.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractSpinBox, QCheckBox, QComboBox, QLineEdit
from test_widget_segment import MODEL_NAME, net, nucseg_home  # noqa: F401  (fixtures)

from fake_models import blob_image

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("net")]

ROOT = Path(__file__).resolve().parents[1]
NDPI = ROOT.parent / "shared" / "data" / "slides" / "formats" / "hamamatsu_dapi_fluorescence.ndpi"
SETTING_DOCKS = ("Segment nuclei", "Evaluate (TP / FP / FN)", "Fine-tune", "Measurements")


def test_every_setting_has_a_tooltip_with_its_default_and_when_to_change_it(make_napari_viewer, qtbot):
    from nucseg._napari.tooltips import HELP

    viewer = make_napari_viewer()
    viewer.add_image(np.full((64, 64, 3), 200, np.uint8), rgb=True, name="tile")
    missing = []
    for name in SETTING_DOCKS:
        _, widget = viewer.window.add_plugin_dock_widget("napari-nucseg", name)
        for setting in widget.findChildren((QAbstractSpinBox, QComboBox, QCheckBox, QLineEdit)):
            if isinstance(setting.parent(), (QAbstractSpinBox, QComboBox)):  # a spin box's or combo's own editor
                continue
            tip = setting.toolTip()
            if "Default:" not in tip or "When to change it:" not in tip:
                missing.append(f"{name}: {type(setting).__name__} {getattr(setting, 'text', lambda: '')()!r} "
                               f"tooltip {tip!r}")
    assert not missing, "\n".join(missing)
    # defaults come from the configs, not typed twice
    from nucseg.config import FinetuneConfig, TilingConfig

    assert f"Default: {TilingConfig().tile_size} px" in HELP["tile_size"][1]() + " px" or \
        HELP["tile_size"][1]() == f"{TilingConfig().tile_size} px"
    assert HELP["epochs"][1]() == str(FinetuneConfig().epochs)


def test_shortcuts_run_and_review_from_the_canvas(make_napari_viewer, qtbot):
    from nucseg._napari import shortcuts

    viewer = make_napari_viewer(show=True)
    image, truth = blob_image((200, 260), n=15, seed=2)
    viewer.add_image(image, name="blobs", rgb=True)
    _, segment = viewer.window.add_plugin_dock_widget("napari-nucseg", "Segment nuclei")
    assert segment.model_combo.set_model(os.environ["NUCSEG_HOME"] + f"/models/{MODEL_NAME}")
    segment.tile_spin.setValue(128)
    segment.overlap_spin.setValue(32)
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: bool(segment.result_layers) and not segment.running, timeout=60000)
    assert "Ctrl+Shift+R" in segment.run_button.toolTip()
    truth_layer = viewer.add_labels(truth, name="truth")
    _, evaluate = viewer.window.add_plugin_dock_widget("napari-nucseg", "Evaluate (TP / FP / FN)")
    evaluate.truth_combo.set_layer(truth_layer)
    evaluate.pred_combo.set_layer(segment.result_layers[0])
    truth_layer.data[truth == 1] = 0  # one FP for the list
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_E, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: evaluate.evaluation is not None, timeout=60000)
    assert evaluate.errors_table.rowCount() >= 1
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert evaluate.errors_table.currentRow() == 0
    # every documented shortcut is in the docs
    doc = (ROOT / "docs" / "VIEWER.md").read_text()
    for name in shortcuts.SHORTCUTS:
        assert shortcuts.label(name) in doc, f"{shortcuts.label(name)} is not documented in docs/VIEWER.md"


@pytest.mark.shared_data
@pytest.mark.skipif(not NDPI.is_file(), reason="needs ../shared/data/slides/formats/hamamatsu_dapi_fluorescence.ndpi")
def test_a_fluorescence_slide_is_not_segmented_until_the_user_says_so(make_napari_viewer, qtbot, monkeypatch):
    from nucseg._napari import _workers, segment_widget
    from nucseg._napari.fluorescence import ALLOW_TEXT

    errors: list[str] = []
    monkeypatch.setattr(segment_widget, "show_error", errors.append)
    monkeypatch.setattr(_workers, "show_error", errors.append)
    viewer = make_napari_viewer(show=True)
    with pytest.warns(UserWarning, match="fluorescence"):
        (slide,) = viewer.open(str(NDPI), plugin="napari-nucseg")
    viewer.add_image(np.full((64, 64, 3), 200, np.uint8), rgb=True, name="H&E tile")
    _, widget = viewer.window.add_plugin_dock_widget("napari-nucseg", "Segment nuclei")
    assert widget.model_combo.set_model(os.environ["NUCSEG_HOME"] + f"/models/{MODEL_NAME}")
    widget.image_combo.set_layer(slide)
    viewer.window._qt_window.resize(1600, 1000)
    qtbot.wait(200)
    guard = widget.fluorescence
    assert guard.isVisible() and "fluorescence" in guard.label.text() and ALLOW_TEXT in guard.label.text()
    assert guard.label.wordWrap() and guard.label.height() >= guard.label.heightForWidth(guard.label.width()) - 1
    if os.environ.get("NUCSEG_SCREENSHOTS"):
        viewer.screenshot(str(ROOT / "docs" / "screenshots" / "segment_fluorescence_warning.png"), canvas_only=False)
    widget.region_combo.setCurrentText(segment_widget.FIELD_OF_VIEW)
    widget.run_button.click()
    assert not widget.running and errors and "looks like a fluorescence slide" in errors[-1]
    assert "--allow-fluorescence" not in errors[-1] and ALLOW_TEXT in errors[-1]
    widget.image_combo.set_layer("H&E tile")  # a brightfield image: no warning
    assert not guard.isVisible()
    widget.image_combo.set_layer(slide)  # back: the warning is still there (persistent, per image)
    assert guard.isVisible()
    guard.allow_check.setChecked(True)
    viewer.scene.camera.zoom = viewer.scene.camera.zoom * 20  # a small field of view: a quick run
    widget.run_button.click()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=180000)
    assert widget.result_layers
