"""One progress record, one driver (nucseg.progress): every long job is driven by `drive` / `relay`."""

from __future__ import annotations

from pathlib import Path

import pytest

from nucseg.progress import Progress, Throttle, drive, must_show, relay

SRC = Path(__file__).resolve().parents[1] / "src" / "nucseg"


def job(n: int, closed: list):
    try:
        for k in range(1, n + 1):
            yield Progress(k, n, "working")
        yield Progress(n, n, "done", kind="summary", info={"n": n})
        return "result"
    finally:
        closed.append(True)


def test_drive_returns_the_result_and_shows_the_records():
    seen: list = []
    assert drive(job(3, []), seen.append) == "result"
    assert [r.done for r in seen] == [1, 2, 3, 3] and seen[-1].info == {"n": 3}


def test_the_throttle_keeps_the_last_count_and_every_event():
    seen: list = []
    assert drive(job(1000, []), seen.append, interval_s=60.0) == "result"
    assert [(r.done, r.kind) for r in seen] == [(1, "progress"), (1000, "progress"), (1000, "summary")]
    throttle = Throttle(60.0)
    assert throttle.due() and not throttle.due() and throttle.due(always=True)
    assert must_show(Progress(5, 5)) and not must_show(Progress(4, 5)) and must_show(Progress(kind="input"))


def test_an_interrupted_drive_closes_the_job():
    closed: list = []

    def interrupt(record):
        if record.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive(job(5, closed), interrupt)
    assert closed == [True]


def test_relay_rewrites_drops_and_returns():
    closed: list = []

    def outer():
        result = yield from relay(job(3, closed), lambda r: Progress(r.done * 10, 30) if r.kind == "progress" else None)
        return result.upper()

    seen: list = []
    assert drive(outer(), seen.append) == "RESULT"
    assert [r.done for r in seen] == [10, 20, 30] and closed == [True]
    gen = outer()
    next(gen)
    gen.close()  # closing the caller closes the relayed job
    assert closed == [True, True]


def test_no_job_is_driven_by_hand():
    """Every loop over a job's records goes through `drive` or `relay` (there were 11 hand-written ones)."""
    by_hand = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py") if p.name != "progress.py"
               for n, line in enumerate(p.read_text().splitlines(), 1) if "except StopIteration" in line]
    assert by_hand == []


def test_the_engines_records_keep_their_block_positionally():
    """The engine writes ``PredictProgress(done, total, stage, block, blocks)``: block and blocks, not the kind (a
    record whose kind were a number would pass every throttle and lose its block)."""
    from nucseg.inference.predict import PredictProgress

    record = PredictProgress(3, 9, "separating nuclei", 2, 5)
    assert (record.block, record.blocks, record.kind) == (2, 5, "progress")
    assert not must_show(record) and must_show(PredictProgress(9, 9, "separating nuclei", 5, 5))
