"""Batches of inputs: unique output names, skipping finished inputs (resume), running them, a summary CSV.

`plan_batch` turns input files into `BatchItem`s with unique stems and sorts out what is already done;
`iter_batch` runs the rest in-process or on a Dask cluster (`nucseg.jobs.distributed`), yielding `BatchEvent`s
for a progress bar, and returns a `BatchReport`; `batch_summary.csv` is written at the end, also when the batch
is interrupted. One failing input never stops the others.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import time
import traceback
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from nucseg.errors import NucsegError, StoreError
from nucseg.jobs.predict_file import (
    FORMATS,
    SUMMARY_VERSION,
    BatchItem,
    BatchSettings,
    iter_predict_file,
    leftovers,
    local_worker,
    remove_path,
)

__all__ = ["KNOWN_SUFFIXES", "SUMMARY_NAME", "BatchEvent", "BatchItem", "BatchPlan", "BatchReport", "BatchSettings",
           "InputOutcome", "finished_summary", "iter_batch", "plan_batch", "unique_stems", "write_batch_summary"]

#: file name endings stripped to make an output stem (longest first, case-insensitive); other dots are kept
KNOWN_SUFFIXES = tuple(sorted((".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".svs", ".ndpi", ".scn", ".mrxs",
                               ".bif", ".vms", ".vmu", ".svslide", ".dcm", ".zarr", ".png", ".jpg", ".jpeg"),
                              key=len, reverse=True))
SUMMARY_NAME = "batch_summary.csv"
SUMMARY_COLUMNS = ("input", "stem", "status", "nuclei", "tissue_mm2", "nuclei_per_mm2", "tissue_px2",
                   "nuclei_per_mpx", "seconds", "worker", "error")
#: the `<stem>_predict.json` "density" figures copied into the batch summary (empty when unknown)
DENSITY_COLUMNS = ("tissue_mm2", "nuclei_per_mm2", "tissue_px2", "nuclei_per_mpx")


def plain_stem(path: Path) -> str:
    """The file name without its image or slide suffix: `a.1.png` -> `a.1`, `x.ome.tif` -> `x`."""
    lower = path.name.lower()
    for suffix in KNOWN_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _candidates(path: Path, stem: str) -> list[str]:
    """Ever more specific names for an input whose stem collides: parent folders, then its suffix, then a hash."""
    parents = [p.name for p in path.parents if p.name][:3]
    suffix = path.name[len(stem):].lstrip(".").replace(".", "_")
    names = []
    for depth in range(len(parents) + 1):
        base = "_".join([*reversed(parents[:depth]), stem])
        names += [base] if depth else []
        names += [f"{base}_{suffix}"] if suffix else []
    return [*names, f"{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"]


def unique_stems(paths: Sequence[Path]) -> list[tuple[str, str | None]]:
    """One output stem per input (absolute, distinct paths), unique even on case-insensitive file systems.

    Inputs whose plain stems collide (`x/a.png`, `y/a.png`; `a.png`, `a.tif`) all get a longer name, the same
    kind for the whole group: `x_a` / `y_a`, else `a_png` / `a_tif`, else a hash of the path. Deterministic:
    the same inputs give the same names, whatever else is in the batch.

    Returns:
        (stem, note) per input; note says why the stem is not the plain one (None when it is).
    """
    plain = [plain_stem(p) for p in paths]
    groups: dict[str, list[int]] = {}
    for i, stem in enumerate(plain):
        groups.setdefault(stem.lower(), []).append(i)
    result: list[tuple[str, str | None]] = [(s, None) for s in plain]
    taken = {s.lower() for s in plain}
    for members in groups.values():
        if len(members) == 1:
            continue
        options = [_candidates(paths[i], plain[i]) for i in members]
        for level in range(max(len(o) for o in options)):
            names = [o[min(level, len(o) - 1)] for o in options]
            lowered = [n.lower() for n in names]
            if len(set(lowered)) == len(names) and not (set(lowered) & (taken - {plain[members[0]].lower()})):
                break
        shared = ", ".join(paths[i].name if len({paths[j].name for j in members}) > 1 else str(paths[i])
                           for i in members)
        for i, name in zip(members, names):
            result[i] = (name, f"inputs {shared} share the name {plain[i]!r}: this one's outputs are named {name!r}")
            taken.add(name.lower())
    return result


def finished_summary(item: BatchItem, settings: BatchSettings) -> dict[str, Any] | None:
    """The item's <stem>_predict.json when it records a finished run of this input with these settings (and its
    outputs are all there), else None."""
    try:
        summary = json.loads(item.summary_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("summary_version") != SUMMARY_VERSION:
        return None
    outputs = summary.get("outputs") or {}
    same = (summary.get("input") == str(item.input) and summary.get("request") == settings.request()
            and summary.get("input_bytes") == item.input.stat().st_size)
    if not same or any(f not in outputs or not Path(outputs[f]).exists() for f in settings.formats):
        return None
    return summary


@dataclasses.dataclass
class BatchPlan:
    """What a batch will do: `todo` to run, `skipped` already finished (with their summaries)."""

    items: list[BatchItem]
    todo: list[BatchItem]
    skipped: list[tuple[BatchItem, dict[str, Any]]]
    out: Path
    #: inputs given more than once (segmented once)
    duplicates: int = 0
    #: unfinished inputs whose earlier outputs (no JSON: the run did not finish) will be replaced
    replacing: int = 0


def plan_batch(inputs: Sequence[Path], out: Path, settings: BatchSettings, *, resume: bool = False,
               overwrite: bool = False) -> BatchPlan:
    """Give each input a unique stem and decide what to run.

    Without `resume` or `overwrite`, any existing output refuses the whole batch up front (nothing is ever
    written over silently). With `resume`, inputs with a finished, consistent JSON are skipped and leftovers of
    unfinished ones are replaced; a JSON made with other settings still needs `overwrite`.

    Raises:
        StoreError: existing outputs that the flags do not allow to replace.
    """
    out = Path(out).absolute()
    paths, seen = [], set()
    for path in inputs:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            paths.append(Path(path).absolute())
    plan = BatchPlan([], [], [], out, duplicates=len(inputs) - len(paths))
    blocked: list[Path] = []
    for path, (stem, note) in zip(paths, unique_stems(paths)):
        item = BatchItem(path, stem, out, note)
        plan.items.append(item)
        existing = [p for p in [*item.outputs(FORMATS).values(), item.summary_path] if p.exists()]
        done = finished_summary(item, settings) if resume else None
        if done is not None:
            plan.skipped.append((item, done))
            continue
        if existing and not overwrite:
            if not resume or item.summary_path.exists():  # a JSON with other settings: a finished result
                blocked.append(existing[0])
                continue
            plan.replacing += 1
        for path_ in leftovers(item):  # temporary files of a run that was killed
            remove_path(path_)
        plan.todo.append(dataclasses.replace(item, replace=bool(existing)))
    if blocked:
        more = f" (and {len(blocked) - 1} more inputs' outputs)" if len(blocked) > 1 else ""
        hint = ("they do not match this run (another input, model, tiling, --mpp, --region or --format): pass "
                "--overwrite to replace them, or choose another --out" if resume else "pass --resume to skip the finished inputs, --overwrite to replace them, "
                "or choose another --out")
        raise StoreError(f"{blocked[0]} already exists{more}; {hint}")
    return plan


@dataclasses.dataclass
class InputOutcome:
    """How one input of a batch went: status "done", "skipped" (finished earlier), "failed" or "not run"."""

    item: BatchItem
    status: str
    nuclei: int | None = None
    seconds: float | None = None
    worker: str | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        density = (self.summary or {}).get("density") or {}
        return {"input": str(self.item.input), "stem": self.item.stem, "status": self.status,
                "nuclei": "" if self.nuclei is None else self.nuclei,
                **{k: "" if density.get(k) is None else density[k] for k in DENSITY_COLUMNS},
                "seconds": "" if self.seconds is None else self.seconds, "worker": self.worker or "",
                "error": self.error or ""}


def worker_label(worker: dict[str, Any] | None) -> str | None:
    if not worker:
        return None
    return str(worker.get("name") if worker.get("name") is not None else worker.get("address"))


def done_outcome(item: BatchItem, summary: dict[str, Any], status: str = "done") -> InputOutcome:
    """A finished input; its worker, or for a slide split into blocks the workers of its blocks ("0+1")."""
    blocks = summary.get("block_workers")
    worker = "+".join(blocks) if blocks else worker_label(summary.get("worker"))
    return InputOutcome(item, status, summary.get("nuclei"), summary.get("seconds"), worker, summary=summary)


def failed_outcome(item: BatchItem, err: BaseException, seconds: float, worker: dict[str, Any] | None
                   ) -> InputOutcome:
    """An input that raised: our own errors by their one-line message, anything else with its type (a bug: the
    traceback goes with it)."""
    if isinstance(err, NucsegError):
        message = str(err)
    else:
        message = f"{type(err).__name__}: {err}"
    outcome = InputOutcome(item, "failed", None, round(seconds, 2), worker_label(worker), message)
    if not isinstance(err, NucsegError):
        outcome.summary = {"traceback": "".join(traceback.format_exception(err))}
    return outcome


@dataclasses.dataclass
class BatchEvent:
    """Progress of a batch. kind: "tiles" (an input's tiles done / total) or "input" (an input ended: `outcome`)."""

    kind: str
    item: BatchItem
    done: int = 0
    total: int = 0
    outcome: InputOutcome | None = None


@dataclasses.dataclass
class BatchReport:
    """The outcome of every input, in input order, and where the summary CSV went."""

    outcomes: list[InputOutcome]
    summary_csv: Path
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[InputOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def write_batch_summary(out: Path, outcomes: Sequence[InputOutcome]) -> Path:
    """`out/batch_summary.csv`: input, stem, status, nuclei, the density figures (mm² ones only when the pixel
    size is known), seconds, worker, error (replaced at each run)."""
    path = Path(out) / SUMMARY_NAME
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(o.row() for o in outcomes)
    os.replace(tmp, path)
    return path


def _from_disk(item: BatchItem, settings: BatchSettings) -> InputOutcome:
    summary = finished_summary(item, settings)
    return done_outcome(item, summary) if summary is not None else InputOutcome(item, "not run")


def iter_local(items: Sequence[BatchItem], settings: BatchSettings) -> Generator[BatchEvent, None, None]:
    """Run items one after the other in this process."""
    worker = local_worker()
    for item in items:
        t0 = time.perf_counter()
        gen = iter_predict_file(item, settings, worker)
        try:
            while True:
                record = next(gen)
                yield BatchEvent("tiles", item, record.done, record.total)
        except StopIteration as stop:
            outcome = done_outcome(item, stop.value)
        except Exception as err:  # noqa: BLE001 - one failing input must not stop the batch; reported in full
            outcome = failed_outcome(item, err, time.perf_counter() - t0, worker)
        yield BatchEvent("input", item, outcome=outcome)


def iter_batch(plan: BatchPlan, settings: BatchSettings, *, workers: int | None = None, scheduler: str | None = None,
               threads_per_worker: int | None = None) -> Generator[BatchEvent, None, BatchReport]:
    """Run a planned batch: in-process, on a new local Dask cluster of `workers` processes, or on the Dask
    scheduler at `scheduler`. The summary CSV is written when the generator ends, is closed early (Ctrl-C in the
    caller) or raises; unfinished inputs are listed as "not run".

    Yields:
        `BatchEvent` records.

    Returns:
        `BatchReport`.
    """
    outcomes: dict[str, InputOutcome] = {item.stem: done_outcome(item, summary, "skipped")
                                        for item, summary in plan.skipped}
    finished = False
    plan.out.mkdir(parents=True, exist_ok=True)
    try:
        if workers or scheduler:
            from nucseg.jobs.distributed import iter_distributed

            events = iter_distributed(plan.todo, settings, workers=workers, scheduler=scheduler,
                                      threads_per_worker=threads_per_worker)
        else:
            events = iter_local(plan.todo, settings)
        for event in events:
            if event.outcome is not None:
                outcomes[event.item.stem] = event.outcome
            yield event
        finished = True
    finally:
        # an input whose outputs a worker committed before the client heard of it (Ctrl-C) is done all the same
        rows = [outcomes.get(item.stem) or _from_disk(item, settings) for item in plan.items]
        path = write_batch_summary(plan.out, rows) if plan.out.is_dir() else plan.out / SUMMARY_NAME
    return BatchReport(rows, path, interrupted=not finished)

