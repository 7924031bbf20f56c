"""The segment widget's post-processing box: thresholds that re-apply live, and the contour switch."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox

from nucseg.config import PostprocessConfig

from ._forms import _dspin, _spin

#: milliseconds after the last threshold change before `ThresholdsBox.changed` fires
REAPPLY_DELAY_MS = 300


class ThresholdsBox(QGroupBox):
    """Foreground / marker thresholds and the minimum area, with the chosen model's defaults.

    Signals:
        changed(): a threshold changed and stayed for `REAPPLY_DELAY_MS` (one signal for a run of key presses).
    """

    changed = Signal()

    def __init__(self):
        super().__init__("Post-processing (re-applied live; your edits are kept)")
        self.fg_spin = _dspin(0.01, 0.99, 0.5)
        self.otsu_check = QCheckBox("Otsu (per image)")
        self.otsu_check.setToolTip("cut each image's foreground map at Otsu's threshold instead of the fixed one: "
                                   "fuller nuclei where the model is unsure at their rims (docs/MODEL.md)")
        self.otsu_check.toggled.connect(lambda on: self.fg_spin.setEnabled(not on))
        self.otsu_check.toggled.connect(self._timer_start)
        self.marker_spin = _dspin(-0.99, 0.99, 0.4)
        self.min_area_spin = _spin(0, 100000, 30)
        self.contours_check = QCheckBox("show contours only")
        self.contours_check.setChecked(True)
        form = QFormLayout(self)
        form.addRow("foreground threshold", self.fg_spin)
        form.addRow("", self.otsu_check)
        form.addRow("marker threshold", self.marker_spin)
        form.addRow("min area (px)", self.min_area_spin)
        form.addRow("", self.contours_check)
        self._min_marker_area = PostprocessConfig().resolved().min_marker_area
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REAPPLY_DELAY_MS)
        self._timer.timeout.connect(self.changed.emit)
        for spin in self.spins:
            spin.valueChanged.connect(self._timer.start)

    def _timer_start(self, *_: Any) -> None:
        self._timer.start()

    @property
    def spins(self) -> tuple[Any, ...]:
        return self.fg_spin, self.marker_spin, self.min_area_spin

    def set_defaults(self, model_defaults: dict[str, Any]) -> None:
        """Show a model's defaults (its config.json "postprocess"), without re-applying anything."""
        defaults = PostprocessConfig().resolved(model_defaults).to_dict()
        for spin, key in zip(self.spins, ("foreground_threshold", "marker_threshold", "min_area")):
            spin.blockSignals(True)
            spin.setValue(defaults[key])
            spin.blockSignals(False)
        self._min_marker_area = int(defaults["min_marker_area"])
        self.otsu_check.blockSignals(True)
        self.otsu_check.setChecked(defaults.get("foreground_method") == "otsu")
        self.fg_spin.setEnabled(not self.otsu_check.isChecked())
        self.otsu_check.blockSignals(False)

    def config(self) -> PostprocessConfig:
        """The thresholds as a validated config (raises ConfigError)."""
        return PostprocessConfig(foreground_threshold=self.fg_spin.value(), marker_threshold=self.marker_spin.value(),
                                 min_area=self.min_area_spin.value(), min_marker_area=self._min_marker_area,
                                 foreground_method="otsu" if self.otsu_check.isChecked() else "fixed")
