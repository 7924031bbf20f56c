"""The settings of the Fine-tune widget (data mixing, validation split, training), read into a `FinetuneConfig`."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from nucseg.config import AUGMENTATIONS, LOSSES, FinetuneConfig
from nucseg.errors import NucsegError
from nucseg.models.registry import resolve_model


def int_spin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(lo, hi)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin


def float_spin(lo: float, hi: float, value: float, decimals: int = 2, step: float = 0.05) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(lo, hi)
    spin.setDecimals(decimals)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin


class FinetuneSettings(QWidget):
    """Data and training settings; `config` turns them (with the base model and device) into a config."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        d = FinetuneConfig()
        self.mix_check = QCheckBox("mix in original data (against forgetting)")
        self.mix_check.setChecked(d.mix_original > 0)
        self.original_edit = QLineEdit()
        self.original_edit.setPlaceholderText("a folder with images/ and labels/")
        self.browse_button = QPushButton("…")
        self.mix_spin = float_spin(0.05, 0.9, d.mix_original)
        self.val_spin = float_spin(0.0, 0.9, d.validation_fraction)
        self.epochs_spin = int_spin(1, 1000, d.epochs)
        self.steps_spin = int_spin(1, 10000, d.steps_per_epoch)
        self.lr_spin = float_spin(1e-6, 1.0, d.learning_rate, decimals=6, step=1e-5)
        self.batch_spin = int_spin(1, 256, d.batch_size)
        self.patch_spin = int_spin(64, 1024, d.patch_size, step=32)
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
        self.threads_spin = int_spin(0, 256, 0)
        self.threads_spin.setToolTip("CPU threads for torch (0 = all cores)")
        self._build_layout()
        self.browse_button.clicked.connect(self._browse_original)
        self.mix_check.toggled.connect(lambda *_: self.set_resuming(self._resuming))
        self._resuming = False

    def _build_layout(self) -> None:
        data = QGroupBox("Data")
        dform = QFormLayout(data)
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
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(data)
        layout.addWidget(train)

    def changed_signals(self) -> list[Any]:
        """The signals of the settings a run's duration depends on."""
        return [spin.valueChanged for spin in (self.epochs_spin, self.steps_spin, self.batch_spin, self.patch_spin,
                                               self.val_spin, self.threads_spin)]

    def set_resuming(self, resuming: bool) -> None:
        """A resumed run keeps its saved settings: they are shown but cannot be changed."""
        self._resuming = resuming
        for widget in (self.epochs_spin, self.steps_spin, self.lr_spin, self.batch_spin, self.patch_spin,
                       self.loss_combo, self.val_spin, self.mix_check, self.freeze_norm_check, self.tune_check,
                       *self.aug_checks.values()):
            widget.setEnabled(not resuming)
        mixing = self.mix_check.isChecked() and not resuming
        for widget in (self.original_edit, self.browse_button, self.mix_spin):
            widget.setEnabled(mixing)

    def follow_base(self, base_model: str) -> None:
        """Rehearsal is on by default where the base model carries a replay set, off where it carries none."""
        try:
            spec = resolve_model(base_model)
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

    def original_dir(self) -> str | None:
        return self.original_edit.text().strip() or None

    def config(self, base_model: str, device: str) -> FinetuneConfig:
        """The settings chosen, as a validated config (raises ConfigError)."""
        mix = self.mix_spin.value() if self.mix_check.isChecked() else 0.0
        values: dict[str, Any] = dict(
            base_model=base_model, epochs=self.epochs_spin.value(), steps_per_epoch=self.steps_spin.value(),
            learning_rate=self.lr_spin.value(), batch_size=self.batch_spin.value(),
            patch_size=self.patch_spin.value(), loss=self.loss_combo.currentText(),
            validation_fraction=self.val_spin.value(), mix_original=mix,
            augmentations=tuple(n for n, c in self.aug_checks.items() if c.isChecked()),
            freeze_norm=self.freeze_norm_check.isChecked(), tune_postprocess=self.tune_check.isChecked(),
            device=device, num_threads=self.threads_spin.value())
        return FinetuneConfig(**values)
