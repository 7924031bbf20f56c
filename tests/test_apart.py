"""`nucseg.jobs.apart.run_apart`: a job in a spawned process, seen as the same generator by its caller (records
as they come, the return value, the error, Stop), and a child that dies is an error, never a hang."""

from __future__ import annotations

import os
import threading
import time

import pytest

from nucseg.errors import NucsegError
from nucseg.jobs.apart import run_apart
from nucseg.progress import drive


def counting(n: int, stop=None):
    for i in range(n):
        yield (i, os.getpid())
    return "done"


def until_stopped(stop):
    yield "started"
    while not stop.is_set():
        time.sleep(0.02)
    return "stopped"


def failing(message: str):
    yield "about to fail"
    raise ValueError(message)


class Unpicklable(Exception):
    def __init__(self, message, handle):
        super().__init__(message)
        self.handle = handle


def failing_unpicklably():
    raise Unpicklable("a lock inside", threading.Lock())


def dying(code: int):
    yield "alive"
    time.sleep(0.5)  # the queue's feeder thread sends "alive"; os._exit would not wait for it
    os._exit(code)


def plain(a: int, b: int) -> int:
    return a * b


def test_records_arrive_in_order_from_another_process_and_the_return_value_comes_back():
    job = run_apart(counting, 3)
    records = []
    with pytest.raises(StopIteration) as end:
        while True:
            records.append(next(job))
    assert [i for i, _ in records] == [0, 1, 2]
    assert {pid for _, pid in records} != {os.getpid()}
    assert end.value.value == "done"


def test_a_plain_function_returns_its_result():
    def consume():
        return (yield from run_apart(plain, 6, b=7))

    job = consume()
    with pytest.raises(StopIteration) as end:
        next(job)
    assert end.value.value == 42


def test_stop_set_by_the_caller_reaches_the_child():
    stop = threading.Event()
    job = run_apart(until_stopped, stop=stop)
    assert next(job) == "started"
    stop.set()
    with pytest.raises(StopIteration) as end:
        next(job)
    assert end.value.value == "stopped"


def test_the_childs_error_is_raised_as_it_was_or_as_a_nucseg_error():
    job = run_apart(failing, "bad pixels in x.tif")
    assert next(job) == "about to fail"
    with pytest.raises(ValueError, match="bad pixels in x.tif"):
        next(job)
    with pytest.raises(NucsegError, match="Unpicklable: a lock inside"):
        next(run_apart(failing_unpicklably))


def test_a_child_that_dies_is_an_error_naming_the_job_not_a_hang():
    job = run_apart(dying, 3, what="fine-tuning")
    assert next(job) == "alive"
    t = time.perf_counter()
    with pytest.raises(NucsegError, match=r"fine-tuning ended without finishing .*code 3"):
        next(job)
    assert time.perf_counter() - t < 30


def test_closing_the_generator_stops_the_child():
    stop = threading.Event()
    job = run_apart(until_stopped, stop=stop)
    assert next(job) == "started"
    t = time.perf_counter()
    job.close()  # the caller went away: the child is told to stop and is waited for
    assert time.perf_counter() - t < 20


def test_where_no_process_can_start_the_job_runs_here_and_the_log_says_so(monkeypatch, caplog):
    import logging
    import multiprocessing

    from nucseg.jobs.apart import ChildUnavailable, run_apart_or_here

    context = multiprocessing.get_context("spawn")

    def refuse(self):
        raise OSError("no fork here")

    monkeypatch.setattr(type(context.Process(target=plain)), "start", refuse)
    with pytest.raises(ChildUnavailable, match="fine-tuning: no separate process could start here: no fork here"):
        run_apart(counting, 2, what="fine-tuning")
    with caplog.at_level(logging.WARNING, logger="nucseg.jobs.apart"):
        job = run_apart_or_here(counting, 2, what="fine-tuning")
        records = []
        with pytest.raises(StopIteration) as end:
            while True:
                records.append(next(job))
    assert {pid for _, pid in records} == {os.getpid()} and end.value.value == "done"
    assert any("fine-tuning runs in this process" in r.getMessage() for r in caplog.records)
    stop = threading.Event()
    stop.set()
    assert drive(run_apart_or_here(until_stopped, stop=stop)) == "stopped"  # Stop reaches it here too
