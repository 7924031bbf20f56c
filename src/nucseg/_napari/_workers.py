"""Run a long job (a generator) off the GUI thread, with a progress bar, a Stop button and readable errors.

The core's long jobs are generators (`iter_predict`, `iter_finetune`, DESIGN.md rule 2): they yield small
progress records and return a result. `start_generator_worker` runs one in a
`napari.qt.threading.thread_worker` and calls back on the GUI thread:

* ``on_yield(record)`` after every yield (cheap: update a label or a plot),
* ``on_return(result)`` with the generator's return value,
* ``on_error(exc)`` when it raised (default: `show_error` with the message; the viewer keeps running),
* ``on_finished()`` always, last (re-enable buttons here).

Exceptions never escape the worker thread: the generator is wrapped so that an exception is caught in the
thread and handed to ``on_error`` on the GUI thread. That keeps napari from also raising its own traceback
notification, and lets a widget re-enable its buttons whatever happened.

Stopping: pass a `threading.Event` that the generator watches (``stop=`` of `iter_predict` / `iter_finetune`);
Stop sets it and the job ends cleanly after its current step, returning what it has. Without an event Stop
falls back to `GeneratorWorker.quit`, which abandons the generator at its next yield (no result).

`JobControls` is a small reusable widget (progress bar, status text, Stop button) that
`start_generator_worker` drives when given one; on request a napari `progress` bar in the activity dock is
updated too.

Example::

    stop = threading.Event()
    worker = start_generator_worker(
        lambda: iter_finetune(store, config, stop=stop),
        on_yield=self._plot_losses, on_return=self._add_model, stop_event=stop,
        controls=self.controls, desc="fine-tuning",
    )
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import traceback
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from nucseg.errors import NucsegError
from nucseg.progress import PROGRESS_INTERVAL_S, Throttle, must_show

__all__ = ["JobControls", "default_progress_of", "error_message", "start_generator_worker"]

log = logging.getLogger(__name__)


ProgressOf = Callable[[Any], "tuple[int, int, str] | None"]


@dataclasses.dataclass
class _Failure:
    """An exception caught in the worker thread, carried to the GUI thread as a return value."""

    error: BaseException
    traceback: str


def _guarded(gen_factory: Callable[[], Generator[Any, Any, Any]]) -> Generator[Any, Any, Any]:
    """Run the generator made by `gen_factory` (in the worker thread); an exception becomes a `_Failure`."""
    try:
        return (yield from gen_factory())
    except Exception as err:  # noqa: BLE001 - every error is shown to the user on the GUI thread
        return _Failure(err, traceback.format_exc())


def error_message(err: BaseException) -> str:
    """One line for a person: the package's own errors as they are, others with their type."""
    if isinstance(err, NucsegError):
        return str(err)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def default_progress_of(record: Any) -> tuple[int, int, str] | None:
    """(done, total, text) from a record with ``done`` / ``total`` (and optional ``stage``) attributes."""
    done, total = getattr(record, "done", None), getattr(record, "total", None)
    if done is None or total is None:
        return None
    return int(done), int(total), str(getattr(record, "stage", ""))


class JobControls(QWidget):
    """A progress bar, a status line and a Stop button for one running job at a time.

    Args:
        parent: the owning widget.
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current batch and keep what is done")
        self.stop_button.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        # room for two lines from the start: a label that grows relayouts the dock, and the window around the
        # OpenGL canvas repaints (tens of milliseconds of GUI time with software rendering)
        self.status.setMinimumHeight(2 * self.status.fontMetrics().lineSpacing() + 2)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.progress_bar, 1)
        row.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)
        self._stop: Callable[[], None] | None = None
        self.stop_button.clicked.connect(self.request_stop)

    def job_started(self, stop: Callable[[], None] | None, text: str = "starting…") -> None:
        """Show a busy bar and enable Stop (which calls `stop`)."""
        self._stop = stop
        # not Qt's animated "busy" mode: every repaint of a window holding the OpenGL canvas costs the GUI thread
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.stop_button.setEnabled(stop is not None)
        self.stop_button.setText("Stop")
        self.status.setText(text)

    def set_progress(self, done: int, total: int, text: str = "") -> None:
        """Show `done` out of `total` steps."""
        if total > 0:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(done, total))
        if text:
            self.status.setText(text)

    def request_stop(self) -> None:
        """Ask the running job to stop (the job itself decides when: after its current step)."""
        if self._stop is not None:
            self._stop()
            self.stop_button.setEnabled(False)
            self.stop_button.setText("Stopping…")

    def job_finished(self, text: str | None = None) -> None:
        """Reset the bar and disable Stop."""
        self._stop = None
        self.stop_button.setEnabled(False)
        self.stop_button.setText("Stop")
        if text is not None:
            self.status.setText(text)


def start_generator_worker(
    gen_factory: Callable[[], Generator[Any, Any, Any]],
    *,
    on_yield: Callable[[Any], None] | None = None,
    on_return: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    stop_event: threading.Event | None = None,
    controls: JobControls | None = None,
    desc: str = "nucseg",
    progress_of: ProgressOf = default_progress_of,
    napari_progress: bool = False,
    min_interval_s: float = PROGRESS_INTERVAL_S,
) -> GeneratorWorker:
    """Start ``gen_factory()`` in a napari thread worker and call back on the GUI thread.

    `gen_factory` is called in the worker thread, so everything the generator does before its first yield
    (loading a model, reading an image) happens off the GUI thread too.

    Args:
        gen_factory: makes the generator to run, e.g. ``lambda: iter_predict(image, config, stop=event)``.
        on_yield: called with every yielded record.
        on_return: called with the generator's return value (not called after an error or a `quit`).
        on_error: called with the exception the generator raised; default shows it with `show_error`.
        on_finished: called last, whatever happened.
        stop_event: set by the Stop button; the generator should check it between steps.
        controls: a `JobControls` widget to drive (progress, status text, Stop).
        desc: description of the napari progress bar (activity dock).
        progress_of: maps a record to (done, total, text) or None.
        napari_progress: also show a napari progress bar in the activity dock. Off by default: napari then
            animates a busy indicator in the status bar, which repaints the main window tens of times a second;
            with software OpenGL (remote desktops, VMs, CI) each repaint costs the GUI thread 30-80 ms.
        min_interval_s: shortest time between two progress displays (the last record is always shown);
            each repaint of a window that holds the OpenGL canvas costs the GUI thread time, so a job yielding
            hundreds of records per second must not repaint hundreds of times.

    Returns:
        The started `GeneratorWorker` (keep a reference while it runs).
    """
    pbar = progress(total=0, desc=desc) if napari_progress else None

    def stop() -> None:
        if stop_event is not None:
            stop_event.set()
        else:
            worker.quit()

    throttle = Throttle(min_interval_s)

    def yielded(record: Any) -> None:
        info = progress_of(record)
        if info is not None and throttle.due(must_show(record) or info[0] >= info[1]):
            done, total, text = info
            if controls is not None:
                controls.set_progress(done, total, text)
            if pbar is not None and total > 0:
                if pbar.total != total:
                    pbar.total = total
                pbar.update(done - pbar.n)
        if on_yield is not None:
            on_yield(record)

    def returned(value: Any) -> None:
        if isinstance(value, _Failure):
            log.error("job %s failed:\n%s", desc, value.traceback)
            (on_error or _show)(value.error)
        elif on_return is not None:
            try:
                on_return(value)
            except Exception as err:  # noqa: BLE001 - turning a result into layers must not kill the viewer
                log.exception("showing the result of %s failed", desc)
                (on_error or _show)(err)

    def finished() -> None:
        if pbar is not None:
            pbar.close()
        if controls is not None:
            controls.job_finished()
        if on_finished is not None:
            on_finished()

    worker = create_worker(_guarded, gen_factory, _start_thread=False, _ignore_errors=True)
    worker.yielded.connect(yielded)
    worker.returned.connect(returned)
    worker.finished.connect(finished)
    if controls is not None:
        controls.job_started(stop)
    worker.start()
    return worker


def _show(err: BaseException) -> None:
    show_error(error_message(err))
