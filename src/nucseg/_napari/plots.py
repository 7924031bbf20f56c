"""Live training curves for the fine-tune widget: loss, IoU and F-score per epoch, training vs validation, and the
training loss of every step (a faint line on the loss panel, redrawn at most every `STEP_REDRAW_S` seconds, so the
curves move within half a minute of Start and keep moving between the epochs' points).

Drawing a three-panel matplotlib figure takes from a few hundred milliseconds to a second on a busy CPU, far
more than the GUI thread can spare, so the figure never touches Qt: a plotting thread renders it with Agg to an
image (`QImage` is safe off the GUI thread) and a queued signal hands the image to a `QLabel`. The GUI thread
only appends numbers and swaps a pixmap. Requests that arrive while a render runs are merged into one.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

#: (axis title, [(record key, legend label, line style)])
PANELS = (
    ("loss", [("train_loss", "train", "-"), ("val_loss", "validation", "--")]),
    ("IoU (foreground)", [("train_iou", "train", "-"), ("val_iou", "validation", "--"),
                          ("val_aji", "validation AJI", ":"), ("val_score", "held-out score", "-.")]),
    ("F-score (Dice)", [("train_f1", "train", "-"), ("val_f1", "validation", "--")]),
)
TRAIN_COLOUR, VAL_COLOUR, AJI_COLOUR, SCORE_COLOUR = "#4fc3f7", "#ffb74d", "#ce93d8", "#81c784"
#: the key of the per-step training loss line (not a per-epoch series)
STEP_KEY = "step_loss"
#: seconds between two redraws caused by step losses alone (an epoch's point redraws at once)
STEP_REDRAW_S = 10.0
DPI = 90
MIN_HEIGHT = 200


class TrainingPlots(QWidget):
    """Three panels of per-epoch curves, plus the base model's validation scores as faint dotted lines.

    Args:
        dark: draw on a dark background (napari's default theme).
        parent: parent widget.

    Attributes:
        epochs: the epochs shown; values: their series by record key; baseline: the base model's scores.
        draws: renders finished so far.
    """

    _rendered = Signal(object)

    def __init__(self, dark: bool = True, parent: QWidget | None = None):
        super().__init__(parent)
        self.dark = dark
        self.label = QLabel()
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.setMinimumHeight(MIN_HEIGHT)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        self.epochs: list[int] = []
        self.values: dict[str, list[float]] = {key: [] for _, series in PANELS for key, _, _ in series}
        self.baseline: dict[str, float] = {}
        self.step_x: list[float] = []  # fractional epochs: epoch - 1 + step / steps
        self.step_loss: list[float] = []
        self._last_step_draw = -math.inf
        self.draws = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._running = self._dirty = False
        self._target = (640, MIN_HEIGHT)
        self._figure, self._lines, self._before = _make_figure(dark)
        self._rendered.connect(self._show_image)
        self._request()

    # -- data (GUI thread) -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all curves (a new run)."""
        with self._lock:
            self.epochs.clear()
            for series in self.values.values():
                series.clear()
            self.baseline = {}
            self.step_x.clear()
            self.step_loss.clear()
        self._request()

    def add_step(self, record: dict[str, Any]) -> bool:
        """Append one training step's loss (the info of an `iter_finetune` "progress" record); redraws when
        `STEP_REDRAW_S` passed since the last such redraw (returns whether it asked for one)."""
        import time

        with self._lock:
            self.step_x.append(record["epoch"] - 1 + record["step"] / record["steps"])
            self.step_loss.append(float(record["loss"]))
        now = time.monotonic()
        if now - self._last_step_draw < STEP_REDRAW_S:
            return False
        self._last_step_draw = now
        self._request()
        return True

    def set_baseline(self, record: dict[str, Any]) -> None:
        """The base model's validation scores (the info of a "baseline" record), drawn as faint horizontal lines."""
        with self._lock:  # a baseline record also says what was held out ("val_kind": "regions"): numbers only
            self.baseline = {k: float(v) for k, v in record.items()
                             if k.startswith("val_") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._request()

    def set_history(self, history: list[dict[str, Any]]) -> None:
        """Show a whole history at once (a resumed run's earlier epochs)."""
        with self._lock:
            self.epochs.clear()
            for series in self.values.values():
                series.clear()
            for record in history:
                self._append(record)
        self._request()

    def add_epoch(self, record: dict[str, Any]) -> None:
        """Append one epoch's record (the info of an `iter_finetune` "epoch" record) and schedule a repaint."""
        with self._lock:
            self._append(record)
        self._request()

    def _append(self, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        if self.epochs and epoch <= self.epochs[-1]:  # a re-run epoch (resume) replaces the earlier one
            keep = [i for i, e in enumerate(self.epochs) if e < epoch]
            self.epochs[:] = [self.epochs[i] for i in keep]
            for key in self.values:
                self.values[key][:] = [self.values[key][i] for i in keep]
        self.epochs.append(epoch)
        for key in self.values:
            self.values[key].append(float(record.get(key, math.nan)))

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._request()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no render is pending (tests); the image still arrives through the event loop."""
        return self._idle.wait(timeout)

    # -- rendering (plotting thread) ---------------------------------------------------------------------
    def _request(self) -> None:
        with self._lock:
            self._target = (max(self.width(), 320), max(self.height(), MIN_HEIGHT))
            self._dirty = True
            if self._running:
                return  # the running render starts another round with the newest data
            self._running = True
            self._idle.clear()
        threading.Thread(target=self._render_loop, name="nucseg-plots", daemon=True).start()

    def _render_loop(self) -> None:
        while True:
            with self._lock:
                if not self._dirty:  # decided under the lock, so a request cannot slip in unseen
                    self._running = False
                    self._idle.set()
                    return
                self._dirty = False
                epochs = list(self.epochs)
                values = {k: list(v) for k, v in self.values.items()}
                baseline = dict(self.baseline)
                steps = (list(self.step_x), list(self.step_loss))
                width, height = self._target
            try:
                image = self._render(epochs, values, baseline, width, height, steps)
                self.draws += 1
                self._rendered.emit(image)
            except Exception:  # noqa: BLE001 - a deleted widget or a failed draw: curves are not worth a crash
                with self._lock:
                    self._running = False
                    self._idle.set()
                return

    def _render(self, epochs: list[int], values: dict[str, list[float]], baseline: dict[str, float],
                width: int, height: int, steps: tuple[list[float], list[float]] = ([], [])) -> QImage:
        figure = self._figure
        figure.set_size_inches(width / DPI, height / DPI)
        for key, line in self._lines.items():
            if key == STEP_KEY:
                line.set_data(*steps)
                continue
            line.set_data(epochs, values[key])
        for key, line in self._before.items():
            value = baseline.get(key, math.nan)
            line.set_ydata([value, value])
        for ax in figure.axes:
            ax.relim()
            ax.autoscale_view()
            last = max([*epochs, *(math.ceil(x) for x in steps[0][-1:])], default=0)
            if last:
                ax.set_xlim(0 if steps[0] else 0.5, last + 0.5)
        canvas = figure.canvas
        canvas.draw()
        w, h = canvas.get_width_height()
        return QImage(bytes(canvas.buffer_rgba()), w, h, 4 * w, QImage.Format.Format_RGBA8888)

    def _show_image(self, image: QImage) -> None:
        self.label.setPixmap(QPixmap.fromImage(image))


def _make_figure(dark: bool) -> tuple[Figure, dict[str, Any], dict[str, Any]]:
    face, fore = ("#262930", "#d0d0d0") if dark else ("white", "black")
    figure = Figure(figsize=(7.5, 2.4), dpi=DPI, facecolor=face)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.06, right=0.99, bottom=0.2, top=0.88, wspace=0.22)
    lines: dict[str, Any] = {}
    before: dict[str, Any] = {}
    for ax, (title, series) in zip(figure.subplots(1, len(PANELS)), PANELS):
        ax.set_facecolor(face)
        ax.set_title(title, color=fore, fontsize=9)
        ax.set_xlabel("epoch", color=fore, fontsize=8)
        ax.tick_params(colors=fore, labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#606060")
        ax.grid(True, color="#444444" if dark else "#dddddd", linewidth=0.5)
        for key, label, style in series:
            colour = (AJI_COLOUR if key == "val_aji" else SCORE_COLOUR if key == "val_score"
                      else TRAIN_COLOUR if key.startswith("train") else VAL_COLOUR)
            (lines[key],) = ax.plot([], [], style, color=colour, marker="o", markersize=3, label=label)
            if key.startswith("val"):
                before[key] = ax.axhline(math.nan, color=colour, linestyle=":", linewidth=1, alpha=0.6)
        if title == "loss":
            (lines[STEP_KEY],) = ax.plot([], [], "-", color=TRAIN_COLOUR, linewidth=0.8, alpha=0.45,
                                         label="train (each step)")
        ax.legend(fontsize=7, loc="best", facecolor=face, edgecolor="#606060", labelcolor=fore)
    return figure, lines, before
