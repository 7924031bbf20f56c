"""The Corrections and Fine-tune widgets: add a correction and its reviewed regions from a viewer, the
corrected-labels default (never the truth), fine-tune in a worker with live curves, keep or discard (a worse
model, a stopped run, after a restart), resume, the versions panel, the 1000-px layout, and the GUI event
loop kept turning while a model trains in a worker (the stall figure is printed, and measured in
benchmarks/bench_viewer_stalls.py, not asserted: timings on shared CI cores are not a test)."""

from __future__ import annotations

import html
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from test_finetune import tiny_model  # noqa: F401 - fixture

from fake_models import blob_image
from gap_meter import GapMeter
from nucseg.training.corrections.store import CorrectionStore

pytestmark = pytest.mark.gui

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "finetune_widget.png"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def errors(monkeypatch):
    from nucseg._napari import (
        _workers,
        corrections_list,
        corrections_widget,
        finetune_decision,
        finetune_widget,
        versions_panel,
    )

    seen: list[str] = []
    for module in (_workers, corrections_widget, corrections_list, finetune_widget, finetune_decision, versions_panel):
        monkeypatch.setattr(module, "show_error", seen.append)
    return seen


@pytest.fixture
def store_with_pairs(home):
    store = CorrectionStore()
    for seed in range(3):
        store.add(*blob_image((96, 128), n=8, seed=seed), {"source": f"tile{seed}.png", "model": "test"}, reviewed=True)
    return store


@pytest.fixture
def base_version(home, tiny_model):  # noqa: F811
    """The tiny model copied into $NUCSEG_HOME/models, so the widget lists it as a base."""
    folder = home / "models" / "tiny-base"
    shutil.copytree(tiny_model, folder)
    return folder


def scripted_in_this_process(monkeypatch, ajis):
    """`scripted_validation`, which replaces functions in this process: the widget trains in a thread here, not
    in its own process (`FinetuneWidget.train_apart`), for the run to meet the script."""
    from test_finetune import scripted_validation

    from nucseg._napari.finetune_widget import FinetuneWidget

    monkeypatch.setattr(FinetuneWidget, "train_apart", False)
    scripted_validation(monkeypatch, ajis)


def test_add_a_correction_from_the_viewer_then_remove_and_undo(make_napari_viewer, qtbot, home, errors):
    from nucseg._napari.corrections_widget import FIELD_OF_VIEW, SHAPES, WHOLE, CorrectionsWidget

    viewer = make_napari_viewer()
    image, labels = blob_image((120, 160), n=10, seed=4)
    viewer.add_image(image, name="tile", rgb=True, metadata={"nucseg_path": "/data/tile.png", "mpp": 0.25})
    # a segment result of the region (y, x) = (20, 30), 80 x 100 px, placed over the image like the Segment widget does
    viewer.add_labels(labels[20:100, 30:130], name="tile nuclei", translate=(20, 30),
                      metadata={"nucseg_config": {"model": "nucseg-default"}})
    widget = CorrectionsWidget(viewer)
    assert widget.labels_combo.currentText() == "(none)"  # nobody edited it: not chosen for the person...
    choose_labels(widget, "tile nuclei")  # ...who chooses it
    assert widget.image_combo.currentText() == "tile" and widget.labels_combo.currentText() == "tile nuclei"

    widget.region_combo.setCurrentText(WHOLE)
    widget.add_correction()  # nothing marked as reviewed: refused, nothing written
    assert len(errors) == 1 and "marked as reviewed" in errors[0] and len(widget.store) == 0
    errors.clear()
    widget.whole_check.setChecked(True)
    widget.add_correction()
    qtbot.waitUntil(lambda: widget._worker is None and widget.entries.list.count() == 1, timeout=20000)
    entry = widget.store.entries()[0]
    assert entry.provenance["region"] == [20, 30, 80, 100] and entry.provenance["model"] == "nucseg-default"
    assert entry.provenance["source"] == "/data/tile.png" and entry.provenance["mpp"] == 0.25
    assert entry.reviewed == "all"
    img, lab = entry.load()
    assert np.array_equal(img, image[20:100, 30:130]) and np.array_equal(lab, labels[20:100, 30:130])
    assert "1 corrections" in widget.entries.count_label.text()

    widget.whole_check.setChecked(False)
    shapes = viewer.add_shapes([np.array([[30, 40], [30, 90], [70, 90], [70, 40]])], shape_type="rectangle")
    widget.region_combo.setCurrentText(SHAPES)
    widget.shapes_combo.set_layer(shapes)
    viewer.reset_view()
    assert widget.mark_view() == (0, 0, 120, 160)  # the whole image is in view
    widget.add_correction()
    qtbot.waitUntil(lambda: widget._worker is None and widget.entries.list.count() == 2, timeout=20000)
    assert widget.store.entries()[1].provenance["region"][2:] == [41, 51]

    widget.region_combo.setCurrentText(FIELD_OF_VIEW)
    widget.add_correction()
    qtbot.waitUntil(lambda: widget._worker is None and widget.entries.list.count() == 3, timeout=20000)

    widget.entries.list.item(0).setSelected(True)
    widget.entries.remove_selected()
    assert widget.entries.list.count() == 2 and (widget.store.trash_dir / entry.id).is_dir()
    widget.entries.undo()
    assert widget.entries.list.count() == 3
    assert errors == []

    viewer.add_labels(np.zeros((120, 160), np.uint32), name="empty")
    widget.labels_combo.set_layer("empty")
    widget.region_combo.setCurrentText(WHOLE)
    widget.add_correction()
    assert len(errors) == 1 and "no nucleus" in errors[0] and len(widget.store) == 3


def choose_labels(widget, name):
    """The person picks a labels layer in the Corrections widget."""
    widget.labels_combo.set_layer(name)
    widget.labels_combo.native.activated.emit(widget.labels_combo.native.currentIndex())


def test_corrected_labels_default_to_an_edited_layer_never_to_the_truth(make_napari_viewer, home, errors):
    """The widget used to pick the first Labels layer (here the ground truth) as "corrected labels", and later the
    newest prediction even when nobody had corrected it. Now only a layer a person edited is chosen for them."""
    from nucseg._napari.corrections_widget import CorrectionsWidget
    from nucseg._napari.label_editing import editing_for
    from nucseg.editing.tools import delete_nucleus

    viewer = make_napari_viewer()
    image, labels = blob_image((64, 64), n=4, seed=1)
    viewer.add_image(image, name="tile", rgb=True)
    viewer.add_labels(labels, name="tile_labels", metadata={"nucseg": {"role": "truth"}})  # opened as truth
    viewer.add_labels(labels, name="ground truth")
    widget = CorrectionsWidget(viewer)
    assert widget.labels_combo.currentText() == "(none)" and not widget.truth_warning.text()
    first = viewer.add_labels(labels.copy(), name="tile nuclei", metadata={"nucseg_result": object()})
    assert widget.labels_combo.currentText() == "(none)"  # a fresh prediction nobody checked
    editing_for(first).apply(delete_nucleus(first.data, np.argwhere(first.data == 1)[0]))
    assert widget.labels_combo.currentText() == "tile nuclei"  # edited: chosen
    viewer.add_labels(labels.copy(), name="tile nuclei [2]", metadata={"nucseg": {"role": "prediction"}})
    assert widget.labels_combo.currentText() == "tile nuclei"  # the newer prediction is not edited
    choose_labels(widget, "ground truth")  # the person's own choice...
    assert "ground truth" in widget.truth_warning.text()
    viewer.add_labels(labels.copy(), name="tile nuclei [3]", metadata={"nucseg": {"role": "prediction"}})
    assert widget.labels_combo.currentText() == "ground truth"  # ...is kept
    assert errors == []


def test_reviewed_regions_become_the_mask_of_each_correction(make_napari_viewer, qtbot, home, errors):
    from nucseg._napari.corrections_widget import REVIEWED_AREAS, CorrectionsWidget
    from nucseg._napari.reviewed_regions import REVIEWED_LAYER, reviewed_layer

    viewer = make_napari_viewer()
    image, labels = blob_image((120, 160), n=10, seed=4)
    layer = viewer.add_image(image, name="tile", rgb=True)
    viewer.add_labels(labels, name="tile nuclei", metadata={"nucseg": {"role": "prediction"}})
    widget = CorrectionsWidget(viewer)
    choose_labels(widget, "tile nuclei")
    assert widget.region_combo.currentText() == REVIEWED_AREAS  # the default
    widget.add_correction()
    assert errors and "nothing is marked as reviewed" in errors[-1] and len(widget.store) == 0
    reviewed = reviewed_layer(viewer, layer)
    assert reviewed.name == REVIEWED_LAYER
    reviewed.add_polygons([np.array([[10, 10], [10, 70], [60, 10]])])  # a triangle the pathologist checked
    reviewed.add_rectangles([np.array([[80, 100], [80, 150], [110, 150], [110, 100]])])
    widget.add_correction()
    qtbot.waitUntil(lambda: widget._worker is None and widget.entries.list.count() == 2, timeout=20000)
    triangle, box = widget.store.entries()
    assert triangle.reviewed == "mask" and 0.4 < triangle.reviewed_fraction < 0.6  # half of its bounding box
    mask = triangle.load_reviewed()
    y, x = triangle.provenance["region"][:2]
    assert mask[12 - y, 12 - x] and not mask[58 - y, 68 - x]  # inside / outside the triangle
    assert box.reviewed == "all" and box.provenance["region"] == [80, 100, 31, 51]
    assert "reviewed: 5" in widget.entries.list.item(0).text() or "reviewed: 4" in widget.entries.list.item(0).text()
    # an entry from before reviewed regions: listed as not reviewed until the person says so
    widget.store.add(image[:40, :40], labels[:40, :40], {"source": "old"})
    widget.entries.refresh()
    assert "NOT reviewed" in widget.entries.list.item(2).text() and "1 not reviewed" in widget.entries.count_label.text()
    widget.entries.list.item(2).setSelected(True)
    widget.entries.mark_selected_reviewed()
    assert widget.store.unreviewed() == [] and "reviewed: all" in widget.entries.list.item(2).text()
    assert errors[1:] == []


def assert_in_window(viewer, *widgets):
    """Each widget is shown and lies wholly inside the main window (no scrolling needed to reach it)."""
    from qtpy.QtCore import QPoint

    window = viewer.window._qt_window
    for w in widgets:
        top = w.mapTo(window, QPoint(0, 0)).y()
        assert w.isVisible() and 0 <= top and top + w.height() <= window.height(), (w.text(), top, window.height())


def run_widget(qtbot, widget, timeout=240000):
    widget.start()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def set_tiny(widget, epochs=1, steps=2):
    settings = widget.settings
    settings.epochs_spin.setValue(epochs)
    settings.steps_spin.setValue(steps)
    settings.batch_spin.setValue(2)
    settings.patch_spin.setValue(64)
    settings.threads_spin.setValue(1)
    settings.val_spin.setValue(0.34)
    widget.device_combo.setCurrentText("cpu")
    for name, check in settings.aug_checks.items():
        check.setChecked(name == "flips")


def test_finetune_in_a_worker_with_live_curves_and_a_responsive_gui(
        make_napari_viewer, qtbot, store_with_pairs, base_version, errors, monkeypatch):
    import threading

    from nucseg._napari.finetune_widget import FinetuneWidget
    from nucseg.models import versions
    from nucseg.training import finetune

    scripted_in_this_process(monkeypatch, [0.5, 0.6])  # better than its base: kept without asking
    threads = []
    scored = finetune.iter_heldout_scores
    monkeypatch.setattr(finetune, "iter_heldout_scores",
                        lambda *a, **k: (threads.append(threading.current_thread()), scored(*a, **k))[1])

    viewer = make_napari_viewer(show=True)
    viewer.add_image(blob_image((96, 128), n=8, seed=0)[0], name="tile", rgb=True)
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    assert "3 reviewed corrections" in widget.data_label.text()
    index = widget.model_combo.findData(str(base_version))
    assert index >= 0 and "tiny-base (fine-tuned)" == widget.model_combo.itemText(index)
    widget.model_combo.setCurrentIndex(index)
    set_tiny(widget, epochs=1, steps=2)
    announced = []
    versions.versions_changed.connect(lambda: announced.append(1))
    qtbot.wait(300)
    # docking the curves relayouts the window and repaints the canvas once (software OpenGL here): measured
    # and reported apart from the stalls while the model trains
    meter = GapMeter()
    meter.start()
    t_dock = time.perf_counter()
    widget._show_plots()
    qtbot.wait(1000)
    dock_stall = meter.longest_ms(t_dock)

    t0 = time.perf_counter()
    run_widget(qtbot, widget)
    t1 = time.perf_counter()
    meter.stop()
    stall = meter.longest_ms(t0 + 0.05, t1)
    ticks = sum(1 for t, _ in meter.gaps if t0 < t < t1)
    print(f"\nfine-tune widget: {t1 - t0:.1f} s run, {ticks} timer ticks, longest GUI event-loop stall {stall:.0f} ms "
          f"(docking the curves once: {dock_stall:.0f} ms)")

    assert errors == []
    result = widget.result
    assert result is not None and result.model_dir is not None and not result.stopped
    assert widget.plots.epochs == [1] and widget.plots.draws >= 2 and widget.plots.baseline
    assert result.model_dir.name in widget.versions_panel.names()
    assert widget.model_combo.findData(str(result.model_dir)) >= 0 and announced
    assert not (result.model_dir / "checkpoints").exists()
    text = widget.decision.text.text()
    assert "before" in text and "after" in text and "Better than its base model" in text
    assert not widget.decision.asking
    # the model trained and was scored in a worker while the GUI's event loop went on turning
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert ticks >= 5, f"the GUI's event loop turned {ticks} times during a {t1 - t0:.1f} s run"


def test_stop_asks_keep_or_discard_and_says_how_many_steps_ran(make_napari_viewer, qtbot, store_with_pairs,
                                                               base_version, errors, monkeypatch):
    """Stop after two steps used to save a new version without a word. The run trains in a process of its own
    (as every run from the dock does), and Stop reaches it there."""
    from nucseg._napari import finetune_widget
    from nucseg._napari.finetune_widget import FinetuneWidget
    from nucseg.jobs.apart import run_apart_or_here
    from nucseg.models import versions

    apart = []
    monkeypatch.setattr(finetune_widget, "run_apart_or_here", lambda function, *a, **k: (
        apart.append(function.__name__), run_apart_or_here(function, *a, **k))[1])
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(str(base_version)))
    set_tiny(widget, epochs=20, steps=4)
    records = []
    on_record = widget._on_record

    def record_then_stop(record):
        on_record(record)
        records.append(record)
        if record.kind == "progress" and record.info["step"] == 2:
            widget.stop()

    widget._on_record = record_then_stop
    run_widget(qtbot, widget)
    assert errors == []
    assert "corrections_finetune" in apart
    result = widget.result
    assert result.stopped and result.pending and widget.decision.asking
    assert result.model_dir is None and versions.list_versions()[-1].name == base_version.name  # not registered
    text = widget.decision.text.text()
    assert f"Stopped after {result.steps_done} of 80 training steps" in text and result.steps_done >= 2
    assert not widget.decision.keep_button.isHidden() and not widget.decision.discard_button.isHidden()
    widget.start()  # a new run waits until this one is decided
    assert not widget.running and "keep or discard" in errors[-1]
    errors.clear()
    kept = widget.decision.keep()
    assert kept == result.run_dir and kept.name in widget.versions_panel.names()
    assert widget.model_combo.findData(str(kept)) >= 0 and not widget.decision.asking
    assert "kept as new version" in widget.decision.text.text()


def test_a_worse_model_is_offered_and_can_be_discarded_even_after_a_restart(
        make_napari_viewer, qtbot, store_with_pairs, base_version, errors, monkeypatch):
    """Seen: AJI 0.988 -> 0.857 saved as a new version without a warning."""
    from nucseg._napari.finetune_widget import FinetuneWidget
    from nucseg.models import versions

    scripted_in_this_process(monkeypatch, [0.988, 0.857])
    widget = FinetuneWidget(make_napari_viewer())
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(str(base_version)))
    set_tiny(widget, epochs=1, steps=2)
    run_widget(qtbot, widget)
    assert errors == [] and widget.decision.asking
    run_dir = widget.result.run_dir
    said = html.unescape(widget.decision.text.text())
    assert "NOT better than its base model on the 3 held-out regions of 3 corrections: held-out score 0.988 -> " \
           "0.857" in said, said
    assert run_dir.name not in widget.versions_panel.names()
    # the viewer is closed without a decision; the next Fine-tune widget asks again, in sight on a 1000 px screen
    viewer = make_napari_viewer(show=True)
    again = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(again, name="Fine-tune")
    viewer.window._qt_window.resize(1500, 1000)
    qtbot.wait(300)
    assert again.decision.asking and again.result.run_dir == run_dir and again.result.verdict == "not better"
    assert_in_window(viewer, again.start_button, again.decision.keep_button, again.decision.discard_button)
    trashed = again.decision.discard()
    assert trashed.parent == versions.trash_dir() and (trashed / "model.safetensors").is_file()
    assert not run_dir.exists() and versions.pending_candidates() == [] and "discarded" in again.decision.text.text()
    assert errors == []


def test_resume_the_last_unfinished_run(make_napari_viewer, qtbot, store_with_pairs, base_version, errors,
                                        monkeypatch):
    from nucseg._napari.finetune_widget import FinetuneWidget
    from nucseg.config import FinetuneConfig
    from nucseg.jobs.finetune import corrections_finetune
    from nucseg.models import versions

    scripted_in_this_process(monkeypatch, [0.5, 0.6, 0.7])

    config = FinetuneConfig(base_model=str(base_version), epochs=2, steps_per_epoch=2, batch_size=2, patch_size=64,
                            augmentations=("flips",), device="cpu", num_threads=1, validation_fraction=0.34)
    out = versions.new_version_dir(base_version)
    gen = corrections_finetune(store_with_pairs, config, out)
    for record in gen:  # the viewer was closed during epoch 2
        if record.kind == "progress" and record.info["epoch"] == 2:
            gen.close()
            break
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    assert widget.resume_check.isEnabled() and out.name in widget.resume_check.text()
    widget.resume_check.setChecked(True)
    assert not widget.settings.epochs_spin.isEnabled()
    run_widget(qtbot, widget)
    assert errors == []
    assert widget.result.model_dir == out and [r["epoch"] for r in widget.result.history] == [1, 2]
    assert widget.plots.epochs == [1, 2]
    assert not widget.resume_check.isEnabled()


def test_versions_panel_rename_delete_export(make_napari_viewer, home, base_version, tmp_path, errors, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    from nucseg._napari.finetune_widget import FinetuneWidget
    from nucseg.models.registry import resolve_model

    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    panel = widget.versions_panel
    assert panel.names() == ["tiny-base"]
    panel.select("tiny-base")
    assert panel.rename_version("breast-v1") == home / "models" / "breast-v1"
    assert panel.names() == ["breast-v1"] and widget.model_combo.findData(str(home / "models" / "breast-v1")) >= 0
    panel.select("breast-v1")
    dest = panel.export_version(tmp_path / "exported")
    assert resolve_model(dest).trained
    assert panel.export_version(tmp_path / "exported") is None and "never overwrite" in errors[-1]
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    assert panel.delete_version() is None and panel.names() == ["breast-v1"]
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    trashed = panel.delete_version()
    assert trashed.parent == home / "trash" / "models" and panel.names() == []


@pytest.mark.slow
def test_screenshot_of_the_finetune_widget_with_curves(make_napari_viewer, qtbot, store_with_pairs, base_version,
                                                         tmp_path):
    from nucseg._napari.corrections_widget import CorrectionsWidget
    from nucseg._napari.finetune_widget import FinetuneWidget

    viewer = make_napari_viewer(show=True)
    entry = store_with_pairs.entries()[0]
    image, labels = entry.load()
    viewer.add_image(image, name="correction image", rgb=True)
    layer = viewer.layers["correction image"]
    viewer.add_labels(labels, name="corrected nuclei", opacity=0.5)
    from nucseg._napari.reviewed_regions import reviewed_layer

    reviewed_layer(viewer, layer).add_rectangles([np.array([[8, 8], [8, 80], [70, 80], [70, 8]])])
    corrections = viewer.window.add_dock_widget(CorrectionsWidget(viewer), name="Corrections")
    widget = FinetuneWidget(viewer)
    finetune = viewer.window.add_dock_widget(widget, name="Fine-tune")
    viewer.window._qt_window.tabifyDockWidget(corrections, finetune)  # one tab each, as a user arranges them
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(str(base_version)))
    set_tiny(widget, epochs=6, steps=3)
    widget.settings.lr_spin.setValue(0.003)
    run_widget(qtbot, widget)
    assert widget.plots.epochs[:5] == [1, 2, 3, 4, 5]  # six asked; early stopping may end it after the fifth
    viewer.window._qt_window.resize(1500, 1000)
    finetune.raise_()
    qtbot.wait(500)
    assert_in_window(viewer, widget.start_button, widget.decision)
    # docs/ is refreshed on request only (NUCSEG_SCREENSHOTS=1), like the other widgets' screenshots
    shot = SCREENSHOT if os.environ.get("NUCSEG_SCREENSHOTS") else tmp_path / SCREENSHOT.name
    shot.parent.mkdir(parents=True, exist_ok=True)
    viewer.window._qt_window.grab().save(str(shot))
    assert shot.stat().st_size > 10000


def test_rehearsal_follows_the_base_models_replay_set(make_napari_viewer, base_version, tmp_path, errors):
    """On by default where the base carries a replay set (the shipped default does), off where it carries none."""
    from test_finetune import with_replay

    from nucseg._napari.finetune_widget import FinetuneWidget
    from nucseg.models import versions

    with_replay(base_version, base_version.parent)  # a second user model, with a replay set
    versions.versions_changed.emit()
    widget = FinetuneWidget(make_napari_viewer())
    for folder, rehearses in ((base_version.parent / f"{base_version.name}-replay", True), (base_version, False)):
        widget.model_combo.setCurrentIndex(widget.model_combo.findData(str(folder)))
        assert widget.settings.mix_check.isChecked() is rehearses
        assert ("replay set" in widget.settings.original_edit.placeholderText()) is rehearses
        assert (widget.config().mix_original > 0) is rehearses
    assert errors == []
    assert widget.plots.wait_idle()  # no curve render left running when the test process ends


def test_a_version_written_by_another_process_appears_in_the_open_widget(make_napari_viewer, qtbot, base_version,
                                                                        errors):
    """`nucseg finetune` in a terminal cannot emit the in-process signal: the widget's watcher polls the disk."""
    from nucseg._napari.finetune_widget import FinetuneWidget

    widget = FinetuneWidget(make_napari_viewer())
    new = base_version.parent / "from-the-terminal"
    assert widget.model_combo.findData(str(new)) < 0
    shutil.copytree(base_version, new)  # what another process leaves behind
    qtbot.waitUntil(lambda: widget.model_combo.findData(str(new)) >= 0, timeout=10000)
    assert "from-the-terminal" in widget.versions_panel.names() and not widget.model_combo.watcher.check()
    assert errors == []


def test_the_dock_reads_the_versions_once_per_change(make_napari_viewer, qtbot, base_version, errors):
    """One watcher of the versions folder (issue 21): a version kept in this process re-reads the model list and
    the versions panel once each (two watchers read both twice, and the list a third time)."""
    from nucseg._napari.finetune_widget import FinetuneWidget
    from nucseg._napari.model_list import POLL_MS
    from nucseg.models import versions

    widget = FinetuneWidget(make_napari_viewer())
    lists, panels = [], []
    widget.model_combo.listed.connect(lambda: lists.append(1))
    panel_refresh = widget.versions_panel.refresh
    widget.versions_panel.refresh = lambda: (panels.append(1), panel_refresh())
    new = shutil.copytree(base_version, base_version.parent / "kept-here")
    versions.versions_changed.emit()  # as `FinetuneResult.keep` does
    qtbot.waitUntil(lambda: widget.model_combo.findData(str(new)) >= 0, timeout=10000)
    qtbot.wait(POLL_MS + 500)  # a look at the disk after the change finds nothing new
    assert (len(lists), len(panels)) == (1, 1) and "kept-here" in widget.versions_panel.names()
    assert errors == []


def test_the_segment_and_fine_tune_docks_list_the_same_models(make_napari_viewer, qtbot, base_version, errors):
    """One model list (issue 21): the Fine-tune dock offers what the Segment dock offers, in the same words, plus
    the untrained starting points; a version registered while both are open appears in both."""
    from nucseg._napari.finetune_widget import FinetuneWidget
    from nucseg._napari.segment_widget import SegmentWidget
    from nucseg.models import versions
    from nucseg.models.registry import model_catalog

    viewer = make_napari_viewer()
    segment, finetune = SegmentWidget(viewer), FinetuneWidget(viewer)

    def listed(combo) -> list[tuple[str, str]]:
        return [(combo.itemData(i), combo.itemText(i)) for i in range(combo.count()) if combo.itemData(i) is not None]

    def trained(combo) -> list[tuple[str, str]]:
        return [(key, text) for key, text in listed(combo) if not key.startswith("unet-")]

    assert trained(segment.model_combo) == trained(finetune.model_combo) and trained(segment.model_combo)
    assert (str(base_version), "tiny-base (fine-tuned)") in trained(segment.model_combo)
    untrained = [key for key, _ in listed(finetune.model_combo) if key.startswith("unet-")]
    assert untrained == [k for k in model_catalog().models if k.startswith("unet-")]
    assert not [key for key, _ in listed(segment.model_combo) if key.startswith("unet-")]
    new = versions.export_version(str(base_version), versions.user_models_dir() / "registered-while-open")
    versions.versions_changed.emit()
    for combo in (segment.model_combo, finetune.model_combo):
        qtbot.waitUntil(lambda c=combo: c.findData(str(new.resolve())) >= 0, timeout=10000)
    assert trained(segment.model_combo) == trained(finetune.model_combo)
    assert errors == []
