"""The "Fine-tune" dock widget: train a new model version on the reviewed corrections, with live curves.

Thin by design: it builds a `FinetuneConfig` (`finetune_settings`), runs `nucseg.jobs.finetune.
corrections_finetune` in a spawned process of its own (`nucseg.jobs.apart`: torch stays out of the viewer) watched
by a thread worker, with a progress bar and Stop, feeds every step and epoch record to the
curves (`plots.TrainingPlots`, docked below the canvas) and the time left to the status line, and hands the
outcome to the `finetune_decision` panel: a
model better than its base on validation is kept at once; one that is not, or a stopped run, waits for the
person's Keep or Discard. A run cut short (the viewer closed, the machine crashed) can be resumed from its last
epoch. The versions panel lists, renames, deletes (to the trash) and exports fine-tuned versions.

Before Start, the widget says how long a run will take: once it is shown, and again when the base model, the
device or the batch settings change, it times one real training step in a process of its own (`nucseg.training.
estimate.measure_step`, kept per setting for the session) and multiplies it out with the same function the run's own
remaining time comes from.

Layout for small screens: the base model, Start, the progress and the result stay at the top; the settings
and the versions list scroll below them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import napari
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from nucseg.config import FinetuneConfig
from nucseg.errors import NucsegError
from nucseg.jobs.apart import run_apart_or_here, run_here
from nucseg.jobs.finetune import (
    corrections_finetune,
    require_original_data,
    require_reviewed,
    saved_config,
    settle,
)
from nucseg.models import versions
from nucseg.models.device import available_devices
from nucseg.training.corrections.store import CorrectionStore, corrections_changed
from nucseg.training.estimate import format_minutes

from ._forms import scroll_area
from ._native import isolate_triton_before_torch
from ._workers import JobControls, error_message, start_generator_worker
from .finetune_decision import DecisionPanel
from .finetune_settings import FinetuneSettings
from .model_list import ModelCombo
from .versions_panel import VersionsPanel

if TYPE_CHECKING:
    from collections.abc import Callable

    from nucseg.progress import Progress
    from nucseg.training.finetune import FinetuneResult

    from .plots import TrainingPlots

isolate_triton_before_torch()  # see _native


class FinetuneWidget(QWidget):
    """Fine-tune a model on the corrections store, in a worker, with live curves and a versions panel.

    Args:
        napari_viewer: the viewer (the curves are docked in its window).
        store: the corrections store (default ``$NUCSEG_HOME/corrections``).
    """

    _corrections_changed_qt = Signal()
    #: train and time training steps in a spawned process (`nucseg.jobs.apart`), so torch and
    #: segmentation-models-pytorch never enter the viewer's process, where their 363 k objects about doubled what
    #: every full garbage collection on the GUI thread walks (docs/VIEWER.md); False runs them in a thread of this
    #: process (tests that script the training's functions in this process)
    train_apart = True

    def __init__(self, napari_viewer: napari.viewer.Viewer, store: CorrectionStore | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.store = store or CorrectionStore()
        self._plots: TrainingPlots | None = None
        self._plots_dock: Any = None
        self._worker: Any = None
        self._resumable: Path | None = None
        self.model_combo = ModelCombo(untrained=True, browse=False)  # the Segment dock's list, and starting points
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", *available_devices()])
        self.data_label = QLabel()
        self.data_label.setWordWrap(True)
        self.estimate_label = QLabel("")
        self.estimate_label.setWordWrap(True)
        self.estimates: dict[tuple, dict[str, Any]] = {}  # measured steps, by (base, batch, patch, device, threads)
        self._estimate_worker: Any = None
        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(1500)  # settles after a spin box is scrolled through several values
        self._estimate_timer.timeout.connect(self.update_estimate)
        self.resume_check = QCheckBox("resume the last unfinished run")
        self.start_button = QPushButton("Start fine-tuning")
        self.controls = JobControls(self)
        self.decision = DecisionPanel(self)
        self.settings = FinetuneSettings(self)
        self.versions_panel = VersionsPanel(self)
        self._build_layout()
        self.start_button.clicked.connect(self.start)
        self.model_combo.model_chosen.connect(self._on_base_changed)
        self.model_combo.model_lost.connect(show_info)
        self.resume_check.toggled.connect(self._update_enabled)
        # the model list watches the versions (kept here, or written by `nucseg finetune` elsewhere): the panel and
        # the run to resume follow it
        self.model_combo.listed.connect(self._versions_listed)
        self._corrections_changed_qt.connect(self.refresh_data)
        corrections_changed.connect(self._relay_corrections)
        self.refresh_versions()
        self.refresh_data()
        self._offer_pending_decision()
        self._on_base_changed()
        for signal in (self.model_combo.model_chosen, self.device_combo.currentIndexChanged,
                       *self.settings.changed_signals()):
            signal.connect(self._schedule_estimate)

    @property
    def result(self) -> FinetuneResult | None:
        """The outcome of the last run (or of the undecided run offered at start-up)."""
        return self.decision.result

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("base model", self.model_combo)
        form.addRow("device", self.device_combo)
        form.addRow(self.data_label)
        form.addRow(self.estimate_label)
        form.addRow(self.resume_check)
        inner = QWidget()
        scrolled = QVBoxLayout(inner)
        scrolled.setContentsMargins(0, 0, 0, 0)
        scrolled.addWidget(self.settings)
        scrolled.addWidget(self.versions_panel, 1)
        # many settings: they scroll, so Start, the progress and the result stay in sight on a small screen
        scroll = scroll_area(inner)
        outer = QVBoxLayout(self)
        outer.addLayout(form)
        outer.addWidget(self.start_button)
        outer.addWidget(self.controls)
        outer.addWidget(self.decision)
        outer.addWidget(scroll, 1)

    def _update_enabled(self, *_: Any) -> None:
        resuming = self.resume_check.isChecked()
        self.model_combo.setEnabled(not resuming)
        self.settings.set_resuming(resuming)

    def _on_base_changed(self, *_: Any) -> None:
        base = self.model_combo.current_model()
        if base is not None:
            self.settings.follow_base(base)

    # -- refreshing --------------------------------------------------------------------------------------
    def _relay_corrections(self, _root: Any) -> None:
        try:
            self._corrections_changed_qt.emit()
        except RuntimeError:
            corrections_changed.disconnect(self._relay_corrections)

    def refresh_data(self) -> None:
        """Count the corrections available for training (only reviewed ones are)."""
        try:
            entries = self.store.entries()
        except NucsegError as err:
            self.data_label.setText(error_message(err))
            return
        reviewed = [e for e in entries if e.reviewed]
        nuclei = sum(e.n_nuclei for e in reviewed)
        text = f"{len(reviewed)} reviewed corrections ({nuclei} nuclei) in {self.store.root}"
        if len(reviewed) < len(entries):
            left = len(entries) - len(reviewed)
            text += (f"; {left} not marked as reviewed {'is' if left == 1 else 'are'} left out (Corrections "
                     "widget: Mark fully reviewed)")
        self.data_label.setText(text)

    def refresh_versions(self) -> None:
        """Re-list base models, fine-tuned versions and the unfinished run."""
        self.model_combo.refresh()  # then `_versions_listed`

    def _versions_listed(self) -> None:
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

    def _offer_pending_decision(self) -> None:
        """A run left undecided (the viewer was closed before Keep or Discard) asks again."""
        from nucseg.training.verdict import pending_result

        pending = versions.pending_candidates()
        if pending and not self.decision.asking:
            try:
                self.decision.show_result(pending_result(pending[0]))
            except NucsegError as err:
                show_error(error_message(err))

    # -- running -----------------------------------------------------------------------------------------
    def config(self) -> FinetuneConfig:
        """The settings chosen, as a validated config (raises ConfigError)."""
        return self.settings.config(str(self.model_combo.current_model()), self.device_combo.currentText())

    @property
    def plots(self) -> TrainingPlots:
        """The training curves, made when first needed (a run): matplotlib's 49 k objects (docs/VIEWER.md) stay
        out of the viewer's heap until then (every full garbage collection walks them)."""
        if self._plots is None:
            from .plots import TrainingPlots

            self._plots = TrainingPlots(dark=getattr(self.viewer, "theme", "dark") != "light")
        return self._plots

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _runner(self) -> Callable[..., Any]:
        """Where a job that needs torch runs: `run_apart_or_here`, or `run_here` without `train_apart`."""
        return run_apart_or_here if self.train_apart else run_here

    def start(self) -> None:
        """Start (or resume) a fine-tuning run in a worker thread; errors are shown, never raised."""
        if self.running:
            return
        if self.decision.asking:
            show_error(f"first keep or discard {self.decision.result.run_dir.name} (see Result)")
            return
        resume = self.resume_check.isChecked() and self._resumable is not None
        try:
            if resume:
                out = self._resumable
                config = FinetuneConfig.from_dict(saved_config(out / versions.RUN_CONFIG))
                original = None
            else:
                config = self.config()
                original = self.settings.original_dir()
                require_original_data(config, bool(original), "choose a folder of its original data (with images/ "
                                      "and labels/) to mix in")
                require_reviewed(self.store)
                out = versions.new_version_dir(config.base_model)
        except NucsegError as err:
            show_error(error_message(err))
            return
        self._estimate_timer.stop()  # no step is timed for an estimate while the run trains
        self._show_plots()
        self.plots.reset()
        if resume:
            self.plots.set_history(versions.run_history(out))
        stop = threading.Event()
        self.start_button.setEnabled(False)
        self.resume_check.setEnabled(False)
        store = self.store
        def job():  # keeping a better model (files, the versions signal) happens in the worker too
            result = yield from self._runner()(corrections_finetune, store, config, out, original_dir=original,
                                               resume=resume, stop=stop, keep="ask", what="fine-tuning")
            return settle(result)

        self._worker = start_generator_worker(
            job,
            on_yield=self._on_record, on_return=self.decision.show_result, on_finished=self._on_finished,
            stop_event=stop, controls=self.controls, desc="fine-tuning")
        self.controls.status.setText(f"training {out.name}…")

    def stop(self) -> None:
        """Stop after the current step; you then keep or discard the best epoch so far."""
        self.controls.request_stop()

    def _show_plots(self) -> None:
        if self._plots_dock is None and getattr(self.viewer, "window", None) is not None:
            self._plots_dock = self.viewer.window.add_dock_widget(self.plots, name="Fine-tuning curves",
                                                                  area="bottom")
        if self._plots_dock is not None:
            self._plots_dock.setVisible(True)

    def _on_record(self, record: Progress) -> None:
        """The curves follow the steps, the epochs and the base model's scores (the bar and the status line
        show every record's count and stage: `start_generator_worker`)."""
        if record.kind == "progress":
            self.plots.add_step(record.info)
        elif record.kind == "epoch":
            self.plots.add_epoch(record.info)
        elif record.kind == "baseline" and "val_aji" in record.info:
            self.plots.set_baseline(record.info)

    def _on_finished(self) -> None:
        self._worker = None
        self.start_button.setEnabled(True)
        self.refresh_versions()

    # -- time estimate -----------------------------------------------------------------------------------
    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not self.estimates:
            self._schedule_estimate()

    def _schedule_estimate(self, *_: Any) -> None:
        if self.isVisible():
            self._estimate_timer.start()

    def _estimate_key(self, config: FinetuneConfig) -> tuple:
        return (config.base_model, config.batch_size, config.patch_size, config.device, config.num_threads)

    def update_estimate(self) -> None:
        """Say how long a run with the current settings takes; time one training step first (in a worker) when
        these settings were not timed yet. Nothing is measured while a run trains (it would slow it down)."""
        try:
            config = self.config()
        except NucsegError as err:
            self.estimate_label.setText(error_message(err))
            return
        measured = self.estimates.get(self._estimate_key(config))
        if measured is not None:
            self.estimate_label.setText(self.estimate_text(config, measured))
            return
        if self.running or self._estimate_worker is not None:
            return
        from nucseg.training.estimate import measure_step

        key = self._estimate_key(config)
        self.estimate_label.setText("timing one training step to estimate the run…")

        def job():
            return (yield from self._runner()(measure_step, config.base_model, config.batch_size, config.patch_size,
                                              config.device, config.num_threads, what="timing a training step"))

        def done(result: dict[str, Any]) -> None:
            self.estimates[key] = result

        def finished() -> None:
            self._estimate_worker = None
            if self.estimates:
                self.update_estimate()  # the settings may have changed meanwhile

        self._estimate_worker = start_generator_worker(job, on_return=done, on_finished=finished,
                                                       on_error=lambda err: self.estimate_label.setText(
                                                           f"no estimate: {error_message(err)}"),
                                                       desc="timing a training step", progress_of=lambda _: None)

    def estimate_text(self, config: FinetuneConfig, measured: dict[str, Any]) -> str:
        """The run's duration from a measured step and the held-out pixels of the reviewed corrections."""
        from nucseg.training.estimate import heldout_pixels_guess, run_seconds

        try:
            entries = [e for e in self.store.entries() if e.reviewed]
        except NucsegError:
            entries = []
        pixels = heldout_pixels_guess([e.shape[0] * e.shape[1] * (e.reviewed_fraction or 1.0) for e in entries],
                                      config.validation_fraction)
        scoring = pixels * measured["predict_px_s"] * 1.5
        total = run_seconds(config.epochs, config.steps_per_epoch, measured["step_s"], scoring, bool(pixels))
        return (f"A run takes {format_minutes(total)} here: {config.epochs * config.steps_per_epoch} steps of "
                f"{measured['step_s']:.1f} s (one timed just now on the {measured['device'].upper()}, "
                f"{measured['threads']} threads)" + (f", and the held-out regions scored {config.epochs + 1} times"
                                                      if pixels else "") + "; early stopping can end it sooner.")

