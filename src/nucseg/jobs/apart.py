"""A job run in a separate, spawned Python process, seen by its caller as the same generator: what it yields
arrives as it is yielded, its return value is returned, its error is raised, and a stop event set by the caller
is set in the child.

Why: training imports torch and segmentation-models-pytorch, 363 k objects that the garbage collector then walks
at every full collection, and napari forces one on the GUI thread whenever a layer is removed. A viewer session
with the Segment and Fine-tune docks held 795 k objects with them and 390 k without, and a collection took
315-321 ms against 150-195 ms (docs/VIEWER.md). In a child, they are gone with it, and so is the memory training
took.

Everything passed both ways is pickled: a module-level function, its arguments, the records and the result.
"""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import pickle
import queue as queues
import threading
from collections.abc import Callable, Generator
from typing import Any

from nucseg.errors import NucsegError
from nucseg.progress import drive

log = logging.getLogger(__name__)

#: seconds between two looks at the caller's stop event and the child's life while nothing arrives
POLL_S = 0.1
#: seconds a child is given to end by itself once its caller has gone, before it is terminated
GRACE_S = 30.0


class ChildUnavailable(NucsegError):
    """No Python process could be started here (an embedded interpreter, a sandbox, no resources)."""


def run_apart(function: Callable[..., Any], *args: Any, stop: threading.Event | None = None, what: str = "the job",
              **kwargs: Any) -> Generator[Any, None, Any]:
    """``function(*args, **kwargs)`` in a spawned process, started now: a generator that yields what the job
    yields (a generator function) and returns its return value; a plain function's result is returned.

    Args:
        stop: the caller's stop event; when given, the child's function gets ``stop=`` an event that is set as
            soon as this one is.
        what: the job, for a person ("fine-tuning"), in the error of a child that died.

    Raises:
        ChildUnavailable: at once, when the process cannot start.
        the child's exception (as it was, or a `NucsegError` with its type and message where it does not
        pickle), or `NucsegError` when the child ended without an answer (killed, out of memory): from the
        generator.
    """
    context = multiprocessing.get_context("spawn")
    try:
        messages = context.Queue()
        child_stop = context.Event()
        child_kwargs = {**kwargs, "stop": child_stop} if stop is not None else kwargs
        process = context.Process(target=_child, args=(messages, function, args, child_kwargs), daemon=True,
                                  name=f"nucseg {what}")
        process.start()
    except (OSError, RuntimeError, ValueError) as err:
        raise ChildUnavailable(f"{what}: no separate process could start here: {err}") from err
    return _watch(process, messages, child_stop, stop, what)


def run_apart_or_here(function: Callable[..., Any], *args: Any, stop: threading.Event | None = None,
                      what: str = "the job", **kwargs: Any) -> Generator[Any, None, Any]:
    """`run_apart`, or, where no process can start, the same job in this process (`run_here`; the log says so)."""
    try:
        return run_apart(function, *args, stop=stop, what=what, **kwargs)
    except ChildUnavailable as err:
        log.warning("nucseg: %s runs in this process (%s)", what, err)
    return run_here(function, *args, stop=stop, what=what, **kwargs)


def run_here(function: Callable[..., Any], *args: Any, stop: threading.Event | None = None, what: str = "the job",
             **kwargs: Any) -> Generator[Any, None, Any]:
    """The job `run_apart` would run, in this process: the same records and result (`what` is taken so that a
    caller can choose either function)."""
    result = function(*args, **({**kwargs, "stop": stop} if stop is not None else kwargs))
    return result if inspect.isgenerator(result) else _returning(result)


def _returning(value: Any) -> Generator[Any, None, Any]:
    yield from ()
    return value


def _watch(process: Any, messages: Any, child_stop: Any, stop: threading.Event | None,
           what: str) -> Generator[Any, None, Any]:
    """The caller's side of a started child: its messages as records, its result, its error, Stop."""
    finished = False
    try:
        while True:
            if stop is not None and stop.is_set():
                child_stop.set()
            try:
                kind, value = pickle.loads(messages.get(timeout=POLL_S))
            except queues.Empty:
                if process.is_alive():
                    continue
                try:  # what it sent just before it ended
                    kind, value = pickle.loads(messages.get(timeout=1.0))
                except queues.Empty:
                    raise NucsegError(f"{what} ended without finishing (its process exited with code "
                                      f"{process.exitcode}; out of memory?): start it again") from None
            if kind == "yield":
                yield value
            elif kind == "return":
                finished = True
                return value
            else:
                finished = True
                raise value
    finally:
        if not finished:  # the caller stopped listening (closed): the child stops too
            child_stop.set()
        process.join(GRACE_S if not finished else 10.0)
        if process.is_alive():
            process.terminate()
            process.join(5.0)
        messages.close()


def call_apart(function: Callable[..., Any], *args: Any, what: str = "the job", **kwargs: Any) -> Any:
    """`run_apart` of a plain function, waited for: its result (what it yields, if anything, is dropped)."""
    return drive(run_apart(function, *args, what=what, **kwargs))


def _child(messages: Any, function: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """In the child: run `function`, sending each message pickled here (a record that does not pickle is then
    this job's error, not a message lost in the queue's feeder thread)."""
    try:
        result = function(*args, **kwargs)
        if inspect.isgenerator(result):
            result = drive(result, lambda record: messages.put(pickle.dumps(("yield", record))))
        messages.put(pickle.dumps(("return", result)))
    except BaseException as err:  # noqa: BLE001 - every error goes back to the caller, who reports it
        log.debug("nucseg: %s failed in its process", getattr(function, "__name__", function), exc_info=True)
        messages.put(pickle.dumps(("error", _picklable(err))))


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 - any exception type that does not survive the trip
        return NucsegError(f"{type(err).__name__}: {err}")
    return err
