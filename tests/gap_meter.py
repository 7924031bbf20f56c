"""The tests' and benchmarks' one definition of a GUI stall: the gap between ticks of a QTimer on the GUI
thread. Kept free of torch and of the test modules, so that a benchmark importing it measures a viewer's
process as a user has it (torch alone adds 163 k objects to every full garbage collection, docs/VIEWER.md)."""

from __future__ import annotations

import time

from qtpy.QtCore import QTimer


class GapMeter:
    """Intervals between QTimer ticks on the GUI thread."""

    def __init__(self, interval_ms: int = 10):
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.last = 0.0
        self.gaps: list[tuple[float, float]] = []  # (end time, gap) in seconds

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append((now, now - self.last))
        self.last = now

    def start(self) -> None:
        self.last = time.perf_counter()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def longest_ms(self, start: float = 0.0, end: float = float("inf")) -> float:
        """The longest gap that ended in [start, end)."""
        return max((gap for t, gap in self.gaps if start <= t < end), default=0.0) * 1000
