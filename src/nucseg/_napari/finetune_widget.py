"""The "Fine-tune" dock widget: train a new model version on the corrections store, with live curves.

Thin by design: it builds a `FinetuneConfig`, runs `corrections_finetune` (the store's pairs, split, then
`iter_finetune`) in a thread worker with a progress bar and Stop, feeds every epoch record to the curves
(`plots.TrainingPlots`, docked below the canvas), and when the run ends shows the validation scores before and
after and announces the new version (`nucseg.models.versions.versions_changed`), so every model list refreshes.
Stop ends the run after the current step and keeps the best epoch as the new version. A run that was cut short
(the viewer closed, the machine crashed) can be resumed from its last epoch. The versions panel lists, renames,
deletes (to the trash, after a confirmation) and exports fine-tuned versions.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import napari
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from nucseg.config import AUGMENTATIONS, LOSSES, FinetuneConfig, read_config_json
from nucseg.errors import InvalidInputError, NucsegError
from nucseg.models import versions
from nucseg.models.device import available_devices
from nucseg.models.registry import DEFAULT_MODEL, list_models, resolve_model
from nucseg.training.corrections import CorrectionStore, corrections_changed

from ._native import isolate_triton
from ._workers import JobControls, error_message, start_generator_worker
from .plots import TrainingPlots
from .segment_widget import _dspin, _spin
from .versions_panel import VersionsPanel

if TYPE_CHECKING:
    from nucseg.training.finetune import FinetuneResult

isolate_triton()  # before torch is imported by a run: see _native

#: written into a run folder after its first record: which corrections trained and validated it
RUN_SOURCES = "corrections_run.json"
METRICS = (("val_aji", "AJI"), ("val_iou", "IoU"), ("val_f1", "F-score"), ("val_loss", "loss"))


def corrections_finetune(store: CorrectionStore, config: FinetuneConfig, out_dir: Path, *,
                         original_dir: str | Path | None = None, resume: bool = False,
                         stop: threading.Event | None = None) -> Generator[dict[str, Any], None, FinetuneResult]:
    """`iter_finetune` on the corrections in `store` (run it in a worker thread; it reads every pair).

    A new run splits the store's entries by `config.validation_fraction` and records the split (and the
    original-data folder, which holds ``images/`` and ``labels/``) in ``RUN_SOURCES``; a resumed run reads it
    back, so it trains on exactly the same pairs.
    """
    from nucseg.models.registry import resolve_model
    from nucseg.training.dataset import load_pairs, split_pairs
    from nucseg.training.finetune import iter_finetune

    sources = Path(out_dir) / RUN_SOURCES
    model_mpp = resolve_model(config.base_model).mpp  # corrections from a 20x slide are resampled to it
    if resume and sources.is_file():
        record = json.loads(sources.read_text())
        train, val = store.pairs(record["train"], model_mpp), store.pairs(record["val"], model_mpp)
        original_dir = record.get("original_dir")
    else:
        pairs = store.pairs(model_mpp=model_mpp)
        if not pairs:
            raise InvalidInputError("the corrections store is empty: add corrected regions with the Corrections "
                                    "widget first")
        train, val = split_pairs(pairs, config.validation_fraction, config.seed)
    original = None  # the base model's replay set, if it carries one
    if original_dir and config.mix_original > 0:
        original = load_pairs(Path(original_dir) / "images", Path(original_dir) / "labels")
    info = {"description": f"fine-tuned from {Path(config.base_model).name} on {len(train)} corrections"}
    gen = iter_finetune(train, val, config, out_dir, original=original, resume=resume, stop=stop, info=info)
    first = next(gen)  # the run folder is prepared (or refused) before this returns
    if not sources.is_file():
        tmp = sources.with_name(f".{RUN_SOURCES}.tmp")
        tmp.write_text(json.dumps({"store": str(store.root), "train": [p.name for p in train],
                                   "val": [p.name for p in val], "original_dir": str(original_dir or "") or None}))
        os.replace(tmp, sources)
    yield first
    return (yield from gen)


def scores_html(before: dict[str, float], after: dict[str, float]) -> str:
    """A small table of validation scores before and after fine-tuning."""
    if not after:
        return "no validation corrections: the best epoch was chosen by training loss"
    rows = "".join(f"<tr><td>{label}</td><td align='right'>{before.get(key, float('nan')):.3f}</td>"
                   f"<td align='right'>{after[key]:.3f}</td></tr>" for key, label in METRICS if key in after)
    return f"<table><tr><th>validation</th><th>before</th><th>after</th></tr>{rows}</table>"


class FinetuneWidget(QWidget):
    """Fine-tune a model on the corrections store, in a worker, with live curves and a versions panel.

    Args:
        napari_viewer: the viewer (the curves are docked in its window).
        store: the corrections store (default ``$NUCSEG_HOME/corrections``).
    """

    _versions_changed_qt = Signal()
    _corrections_changed_qt = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer, store: CorrectionStore | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.store = store or CorrectionStore()
        self.plots = TrainingPlots(dark=getattr(napari_viewer, "theme", "dark") != "light")
        self._plots_dock: Any = None
        self._worker: Any = None
        self._stop: threading.Event | None = None
        self.result: FinetuneResult | None = None
        self._build_controls()
        self._build_layout()
        self.start_button.clicked.connect(self.start)
        self.browse_button.clicked.connect(self._browse_original)
        self.mix_check.toggled.connect(self._update_enabled)
        self.model_combo.currentIndexChanged.connect(self._on_base_changed)
        self.resume_check.toggled.connect(self._update_enabled)
        self._versions_changed_qt.connect(self.refresh_versions)
        self._corrections_changed_qt.connect(self.refresh_data)
        versions.versions_changed.connect(self._relay_versions)
        corrections_changed.connect(self._relay_corrections)
        self.refresh_versions()
        self.refresh_data()

    # -- construction ------------------------------------------------------------------------------------
    def _build_controls(self) -> None:
        d = FinetuneConfig()
        self.model_combo = QComboBox()
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", *available_devices()])
        self.data_label = QLabel()
        self.data_label.setWordWrap(True)
        self.mix_check = QCheckBox("mix in original data (against forgetting)")
        self.original_edit = QLineEdit()
        self.original_edit.setPlaceholderText("a folder with images/ and labels/")
        self.browse_button = QPushButton("…")
        self.mix_check.setChecked(d.mix_original > 0)
        self.mix_spin = _dspin(0.05, 0.9, d.mix_original)
        self.val_spin = _dspin(0.0, 0.9, d.validation_fraction)
        self.epochs_spin = _spin(1, 1000, d.epochs)
        self.steps_spin = _spin(1, 10000, d.steps_per_epoch)
        self.lr_spin = _dspin(1e-6, 1.0, d.learning_rate)
        self.lr_spin.setDecimals(6)
        self.lr_spin.setSingleStep(1e-5)
        self.lr_spin.setValue(d.learning_rate)
        self.batch_spin = _spin(1, 256, d.batch_size)
        self.patch_spin = _spin(64, 1024, d.patch_size, step=32)
        self.loss_combo = QComboBox()
        self.loss_combo.addItems(list(LOSSES))
        self.loss_combo.setCurrentText(d.loss)
        self.aug_checks = {name: QCheckBox(name) for name in AUGMENTATIONS}
        for name, check in self.aug_checks.items():
            check.setChecked(name in d.augmentations)
        self.freeze_norm_check = QCheckBox("keep the base model's normalisation statistics")
        self.freeze_norm_check.setToolTip("forgets less of the original data, but adapts less to the new slides")
        self.freeze_norm_check.setChecked(d.freeze_norm)
        self.tune_check = QCheckBox("re-tune watershed thresholds on the validation corrections")
        self.tune_check.setToolTip("kept only when they beat the base model's thresholds by 0.01 AJI there; "
                                   "with a single validation correction the choice tends to overfit")
        self.tune_check.setChecked(d.tune_postprocess)
        self.threads_spin = _spin(0, 256, 0)
        self.threads_spin.setToolTip("CPU threads for torch (0 = all cores)")
        self.resume_check = QCheckBox("resume the last unfinished run")
        self.start_button = QPushButton("Start fine-tuning")
        self.controls = JobControls(self)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setMinimumHeight(2 * self.result_label.fontMetrics().lineSpacing() + 2)  # see JobControls
        self.versions_panel = VersionsPanel(self)

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("base model", self.model_combo)
        form.addRow("device", self.device_combo)
        data = QGroupBox("Data")
        dform = QFormLayout(data)
        dform.addRow(self.data_label)
        dform.addRow(self.mix_check)
        row = QHBoxLayout()
        row.addWidget(self.original_edit, 1)
        row.addWidget(self.browse_button)
        dform.addRow("original data", row)
        dform.addRow("fraction of each batch", self.mix_spin)
        dform.addRow("validation split", self.val_spin)
        train = QGroupBox("Training")
        tform = QFormLayout(train)
        tform.addRow("epochs", self.epochs_spin)
        tform.addRow("steps per epoch", self.steps_spin)
        tform.addRow("learning rate", self.lr_spin)
        tform.addRow("batch size", self.batch_spin)
        tform.addRow("patch size", self.patch_spin)
        tform.addRow("loss", self.loss_combo)
        grid = QGridLayout()
        for k, check in enumerate(self.aug_checks.values()):
            grid.addWidget(check, k // 2, k % 2)
        tform.addRow("augmentations", grid)
        tform.addRow(self.freeze_norm_check)
        tform.addRow(self.tune_check)
        tform.addRow("CPU threads", self.threads_spin)
        inner = QWidget()
        layout = QVBoxLayout(inner)
        layout.addLayout(form)
        layout.addWidget(data)
        layout.addWidget(train)
        layout.addWidget(self.resume_check)
        layout.addWidget(self.start_button)
        layout.addWidget(self.controls)
        layout.addWidget(self.result_label)
        layout.addWidget(self.versions_panel, 1)
        # many settings: scroll rather than squash them when the dock shares the side with other widgets
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

    def _update_enabled(self, *_: Any) -> None:
        resuming = self.resume_check.isChecked()
        for widget in (self.model_combo, self.epochs_spin, self.steps_spin, self.lr_spin, self.batch_spin,
                       self.patch_spin, self.loss_combo, self.val_spin, self.mix_check, self.freeze_norm_check,
                       self.tune_check, *self.aug_checks.values()):
            widget.setEnabled(not resuming)
        mixing = self.mix_check.isChecked() and not resuming
        for widget in (self.original_edit, self.browse_button, self.mix_spin):
            widget.setEnabled(mixing)

    def _on_base_changed(self, *_: Any) -> None:
        """Rehearsal is on by default where the base model carries a replay set, off where it carries none."""
        data = self.model_combo.currentData()
        if data is None:
            return
        try:
            spec = resolve_model(str(data))
        except NucsegError:
            return
        has_replay = spec.replay_dir is not None
        self.mix_check.setChecked(has_replay and FinetuneConfig().mix_original > 0)
        self.original_edit.setPlaceholderText(f"{spec.name}'s replay set, or a folder with images/ and labels/"
                                              if has_replay else "a folder with images/ and labels/")

    def _browse_original(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Original training data (a folder with images/ and labels/)")
        if folder:
            self.original_edit.setText(folder)

    # -- refreshing --------------------------------------------------------------------------------------
    def _relay_versions(self) -> None:
        try:
            self._versions_changed_qt.emit()
        except RuntimeError:  # closed
            versions.versions_changed.disconnect(self._relay_versions)

    def _relay_corrections(self, _root: Any) -> None:
        try:
            self._corrections_changed_qt.emit()
        except RuntimeError:
            corrections_changed.disconnect(self._relay_corrections)

    def refresh_data(self) -> None:
        """Count the corrections available for training."""
        try:
            entries = self.store.entries()
        except NucsegError as err:
            self.data_label.setText(error_message(err))
            return
        nuclei = sum(e.n_nuclei for e in entries)
        self.data_label.setText(f"{len(entries)} corrections ({nuclei} nuclei) in {self.store.root}")

    def refresh_versions(self) -> None:
        """Re-list base models, fine-tuned versions and the unfinished run."""
        current = self.model_combo.currentData()
        self.model_combo.clear()
        for name, description in list_models().items():
            shown = f"{Path(name).name} (fine-tuned)" if os.sep in name or "/" in name else name
            self.model_combo.addItem(shown, name)
            self.model_combo.setItemData(self.model_combo.count() - 1, description, 3)  # tooltip
        index = self.model_combo.findData(current if current else DEFAULT_MODEL)
        if index < 0:
            index = self.model_combo.findData("unet-efficientnet-b0")
        self.model_combo.setCurrentIndex(max(index, 0))
        self.versions_panel.refresh()
        runs = versions.unfinished_runs()
        self._resumable = runs[0] if runs else None
        self.resume_check.setEnabled(self._resumable is not None and self._worker is None)
        if self._resumable is None:
            self.resume_check.setChecked(False)
            self.resume_check.setText("resume the last unfinished run (none)")
        else:
            done = versions.run_epochs_done(self._resumable)
            self.resume_check.setText(f"resume {self._resumable.name} (after epoch {done})")
        self._update_enabled()

    # -- running -----------------------------------------------------------------------------------------
    def config(self) -> FinetuneConfig:
        """The settings chosen, as a validated config (raises ConfigError)."""
        mix = self.mix_spin.value() if self.mix_check.isChecked() else 0.0
        return FinetuneConfig(
            base_model=str(self.model_combo.currentData()), epochs=self.epochs_spin.value(),
            steps_per_epoch=self.steps_spin.value(), learning_rate=self.lr_spin.value(),
            batch_size=self.batch_spin.value(), patch_size=self.patch_spin.value(),
            loss=self.loss_combo.currentText(), validation_fraction=self.val_spin.value(), mix_original=mix,
            augmentations=tuple(n for n, c in self.aug_checks.items() if c.isChecked()),
            freeze_norm=self.freeze_norm_check.isChecked(), tune_postprocess=self.tune_check.isChecked(),
            device=self.device_combo.currentText(), num_threads=self.threads_spin.value())

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start(self) -> None:
        """Start (or resume) a fine-tuning run in a worker thread; errors are shown, never raised."""
        if self.running:
            return
        resume = self.resume_check.isChecked() and self._resumable is not None
        try:
            if resume:
                out = self._resumable
                config = FinetuneConfig.from_dict(read_config_json(out / versions.RUN_CONFIG))
                original = None
            else:
                config = self.config()
                original = self.original_edit.text().strip() or None
                if config.mix_original and not original and resolve_model(config.base_model).replay_dir is None:
                    raise InvalidInputError(f"{Path(config.base_model).name} carries no replay set: choose a folder "
                                            "of its original data (with images/ and labels/) to mix in")
                if not len(self.store):
                    raise InvalidInputError("no corrections yet: add corrected regions with the Corrections widget")
                out = versions.new_version_dir(config.base_model)
        except NucsegError as err:
            show_error(error_message(err))
            return
        self._show_plots()
        self.plots.reset()
        if resume:
            self.plots.set_history(versions.run_history(out))
        self.result_label.setText(f"training {out.name}…")
        self._stop = stop = threading.Event()
        self.start_button.setEnabled(False)
        self.resume_check.setEnabled(False)
        total = config.epochs * config.steps_per_epoch
        store = self.store
        self._worker = start_generator_worker(
            lambda: corrections_finetune(store, config, out, original_dir=original, resume=resume, stop=stop),
            on_yield=self._on_record, on_return=self._on_result, on_finished=self._on_finished,
            stop_event=stop, controls=self.controls, desc="fine-tuning",
            progress_of=lambda r: _progress(r, config.epochs, total))

    def stop(self) -> None:
        """Stop after the current step; the best epoch so far becomes the new version."""
        self.controls.request_stop()

    def _show_plots(self) -> None:
        if self._plots_dock is None and getattr(self.viewer, "window", None) is not None:
            self._plots_dock = self.viewer.window.add_dock_widget(self.plots, name="Fine-tuning curves",
                                                                  area="bottom")
        if self._plots_dock is not None:
            self._plots_dock.setVisible(True)

    def _on_record(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "epoch":
            self.plots.add_epoch(record)
            if "val_aji" in record:
                self.result_label.setText(f"epoch {record['epoch']}: validation AJI {record['val_aji']:.3f}, "
                                          f"IoU {record['val_iou']:.3f}, F {record['val_f1']:.3f}")
        elif kind == "baseline" and "val_aji" in record:
            self.plots.set_baseline(record)
        elif kind == "tuning":
            self.result_label.setText("tuning the watershed thresholds on the validation corrections…")

    def _on_result(self, result: FinetuneResult) -> None:
        self.result = result
        if result.model_dir is None:
            self.result_label.setText("stopped before the first epoch ended: no new version")
            return
        versions.discard_training_state(result.model_dir)
        head = "stopped; best epoch kept as" if result.stopped else "new version"
        from nucseg.training.postprocess_tuning import describe_tuning

        tuned = f"<br>{describe_tuning(result.postprocess_tuning)}" if result.postprocess_tuning else ""
        self.result_label.setText(f"<b>{head} {result.model_dir.name}</b><br>"
                                  f"{scores_html(result.before, result.after)}{tuned}")
        versions.versions_changed.emit()
        show_info(f"fine-tuned model saved as {result.model_dir}")

    def _on_finished(self) -> None:
        self._worker = None
        self._stop = None
        self.start_button.setEnabled(True)
        self.refresh_versions()


def _progress(record: dict[str, Any], epochs: int, total: int) -> tuple[int, int, str] | None:
    if record.get("kind") != "step":
        return None
    done = (record["epoch"] - 1) * record["steps"] + record["step"]
    return done, total, f"epoch {record['epoch']}/{epochs}, step {record['step']}/{record['steps']}, " \
                        f"loss {record['loss']:.3f}"
