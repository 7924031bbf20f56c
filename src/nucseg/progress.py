"""Long jobs and their progress, in one place (DESIGN.md rule 2).

Every long job of the core is a generator that yields `Progress` records and returns its result: predicting an
image (`iter_predict`), a batch (`iter_batch`), fine-tuning (`iter_finetune`), scoring (`iter_evaluate`). Nothing
drives one by hand:

* `drive` runs a job to its end and returns its result, calling ``on_progress`` with its records (throttled by a
  `Throttle`: a job yielding hundreds of records a second must not repaint a bar hundreds of times); the CLI's bars,
  the Dask tasks' progress events and the tests use it, and so does the widgets' worker (`nucseg._napari._workers`)
  through `Throttle`;
* `relay` passes a job's records on from inside another job, rewritten (a batch's tiles, a region among several),
  and returns the job's result, as ``yield from`` does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["PROGRESS_INTERVAL_S", "Progress", "Throttle", "drive", "must_show", "relay"]

R = TypeVar("R")

#: seconds between two progress displays or messages (the last record of a job is always shown)
PROGRESS_INTERVAL_S = 0.25


@dataclasses.dataclass
class Progress:
    """One progress record of a long job.

    Attributes:
        done: steps done (tiles, training steps, images scored); total: steps in all (0 while unknown).
        stage: what is happening, for a person ("predicting", "calibrating", "epoch 3 of 7"...).
        block, blocks: the block of a slide being run, of how many (after `stage`, as the engine's records
            give them: ``Progress(done, total, "separating nuclei", 2, 5)``).
        kind: what the record reports, for a program: "progress" (steps done), or a job's own events
            (a batch: "input", an input ended).
        info: the record's facts beyond the count (an epoch's losses and scores, an input's outcome...).
    """

    done: int = 0
    total: int = 0
    stage: str = ""
    block: int = 0
    blocks: int = 1
    kind: str = "progress"
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def finished(self) -> bool:
        """Whether every step is done (a throttle always lets this record through)."""
        return self.total > 0 and self.done >= self.total


class Throttle:
    """Says whether to show a record now: at most every `interval_s` seconds, and always when asked with
    ``always=True`` (a record that `must_show`: a job's last count, an epoch's scores, an input's outcome)."""

    def __init__(self, interval_s: float = PROGRESS_INTERVAL_S):
        self.interval_s = interval_s
        self._last = float("-inf")

    def due(self, always: bool = False) -> bool:
        now = time.monotonic()
        if always or now - self._last >= self.interval_s:
            self._last = now
            return True
        return False


def must_show(record: Any) -> bool:
    """Whether a throttle must let `record` through: it is not a plain count (``kind != "progress"``) or it is a
    job's last (`Progress.finished`)."""
    return getattr(record, "kind", "progress") != "progress" or bool(getattr(record, "finished", False))


def drive(job: Generator[Any, Any, R], on_progress: Callable[[Any], None] | None = None, *,
          interval_s: float = 0.0) -> R:
    """Run `job` to its end and return its result; `on_progress` gets its records (through a `Throttle` of
    `interval_s`). When the caller is interrupted (an exception, Ctrl-C), the job is closed, so its own clean-up
    runs (a batch writes its summary, a run removes its temporary files)."""
    throttle = Throttle(interval_s)

    def show(record: Any) -> None:
        if on_progress is not None and throttle.due(must_show(record)):
            on_progress(record)

    # `show` returns None: the relay yields nothing, so one step runs the job to its end (and closes it if the
    # caller is interrupted)
    try:
        next(relay(job, show))
    except StopIteration as finished:
        return finished.value
    raise AssertionError("a relay that drops every record yielded one")


def relay(job: Generator[Any, Any, R], rewrite: Callable[[Any], Any]) -> Generator[Any, None, R]:
    """Yield each of `job`'s records rewritten by `rewrite` (None: dropped) and return `job`'s result; use it as
    ``result = yield from relay(job, rewrite)`` (closing the caller closes `job`)."""
    try:
        while True:
            try:
                record = next(job)
            except StopIteration as finished:
                return finished.value
            out = rewrite(record)
            if out is not None:
                yield out
    finally:
        job.close()
