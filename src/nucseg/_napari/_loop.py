"""Whether code runs inside the GUI's event loop: a click, a menu, a drag and drop in napari's window.

There, slow work goes to a worker and its result arrives later (opening a slide, exporting, side by side); called
from a script, a notebook or a test outside any event loop (``viewer.open(...)`` before ``napari.run()``), the same
calls finish before they return, as napari's API promises them to.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import sys
import threading
from collections.abc import Callable, Iterator


def in_event_loop() -> bool:
    """True on the GUI thread while an event loop runs (Qt's loop level above 0)."""
    from qtpy.QtCore import QCoreApplication, QThread

    app = QCoreApplication.instance()
    thread = QThread.currentThread()
    return app is not None and thread is app.thread() and thread.loopLevel() > 0


class StepQueue:
    """Callables run one per turn of the GUI's event loop, or all at once outside it (a script, a test).

    Adding or removing a napari layer costs its GUI thread up to a few hundred ms on a slow machine; run one at a
    time, with the window's own work (painting, the user's clicks) in between, no single stall adds them up. The
    steps are `GAP_MS` apart: a zero-delay timer is a posted event, which Qt handles before its timers, so
    back-to-back steps would still join into one long stall. `done` runs after the last step.
    """

    GAP_MS = 15

    def __init__(self, done: Callable[[], None] | None = None):
        self.steps: collections.deque[Callable[[], None]] = collections.deque()
        self.done = done

    def __bool__(self) -> bool:
        return bool(self.steps)

    def extend(self, steps: list[Callable[[], None]]) -> None:
        from qtpy.QtCore import QTimer

        idle = not self.steps
        self.steps.extend(steps)
        if not in_event_loop():
            while self.steps:
                self.steps.popleft()()
            if self.done is not None:
                self.done()
        elif idle:
            QTimer.singleShot(self.GAP_MS, self._next)

    def then(self, steps: list[Callable[[], None]]) -> None:
        """From inside a step: run `steps` next, before whatever else is queued."""
        self.steps.extendleft(reversed(steps))

    def _next(self) -> None:
        from qtpy.QtCore import QTimer

        try:
            if self.steps:
                self.steps.popleft()()
        finally:
            if self.steps:
                QTimer.singleShot(self.GAP_MS, self._next)
            elif self.done is not None:
                self.done()


def collect_garbage() -> None:
    """The first step of a run of layer steps, in a turn of its own: a full garbage collection now (napari's heap,
    0.11-0.15 s here), so that one the interpreter starts by itself does not land inside a layer step and add up
    with it (result layers: 260-285 ms, docs/VIEWER.md). The next one then waits until the heap has grown by a quarter (CPython's rule),
    more than a run of steps adds. Outside the event loop (a script, a test) there is no window to keep moving:
    nothing is done."""
    if in_event_loop():
        gc.collect()


#: the interpreter's thread switch interval while a worker of ours computes in Python (CPython's default: 5 ms)
FAIR_SWITCH_S = 0.001
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.005


@contextlib.contextmanager
def fair_to_the_gui() -> Iterator[None]:
    """Around a worker's Python-heavy work (tracing and measuring nuclei): a shorter GIL switch interval.

    The GUI thread gives the GIL up and takes it back hundreds of times a frame (each Qt and OpenGL call); while a
    worker computes in Python, each take-back waits up to the switch interval: at CPython's 5 ms a GeoJSON save's
    outline tracing froze the window for 0.19 s in one go, at 1 ms for 0.06 s (docs/VIEWER.md). Counted, so
    overlapping jobs restore the old interval once, when the last ends, and only if nobody changed it meanwhile.
    """
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(FAIR_SWITCH_S, _switch_saved))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0 and sys.getswitchinterval() == min(FAIR_SWITCH_S, _switch_saved):
                sys.setswitchinterval(_switch_saved)
