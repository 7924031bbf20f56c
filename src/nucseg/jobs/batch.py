"""Batches of inputs: unique output names, skipping finished inputs (resume), running them, a summary CSV.

`plan_batch` turns input files into `BatchItem`s with unique stems and sorts out what is already done;
`iter_batch` runs the rest in-process or on a Dask cluster (`nucseg.jobs.distributed`), yielding `Progress` records
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
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from nucseg.errors import NucsegError, StoreError
from nucseg.io.names import KNOWN_SUFFIXES, plain_stem  # the one stem rule (re-exported)
from nucseg.io.outputs import (
    BATCH_SUMMARY,
    check_output_folder,
    check_replaceable,
)
from nucseg.jobs.outcomes import (
    DENSITY_COLUMNS,
    InputOutcome,
    done_outcome,
    failed_outcome,
    input_ended,
    tiles_done,
)
from nucseg.jobs.predict_file import (
    FORMATS,
    SUMMARY_VERSION,
    BatchItem,
    BatchSettings,
    input_fingerprint,
    iter_predict_file,
    leftovers,
    local_worker,
    remove_path,
)
from nucseg.progress import Progress, relay

__all__ = ["KNOWN_SUFFIXES", "SUMMARY_NAME", "BatchItem", "BatchPlan", "BatchReport", "BatchSettings",
           "InputOutcome", "finished_summary", "iter_batch", "plan_batch", "unique_stems", "write_batch_summary"]

SUMMARY_NAME = BATCH_SUMMARY
SUMMARY_COLUMNS = ("input", "stem", "status", "nuclei", *DENSITY_COLUMNS, "seconds", "worker", "error")


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


def resume_mismatch(item: BatchItem, settings: BatchSettings, summary: Any) -> str | None:
    """Why `summary` (an item's <stem>_predict.json) does not record a finished run of this input, with its
    content as it is now and these settings, with all the asked outputs present; None when it does."""
    if not isinstance(summary, dict) or summary.get("summary_version") != SUMMARY_VERSION:
        return "they were made by another version of nucseg"
    if summary.get("input") != str(item.input):
        return f"they were made from another input ({summary.get('input')})"
    try:
        changed = summary.get("input_fingerprint") != input_fingerprint(item.input)
    except NucsegError as err:
        return str(err)
    if changed:
        return f"{item.input.name} changed since they were made (its content differs)"
    if summary.get("request") != settings.request():
        return "they were made with other settings (model, tiling, thresholds, --mpp or --region)"
    outputs = summary.get("outputs") or {}
    missing = [f for f in settings.formats if f not in outputs or not Path(outputs[f]).exists()]
    if missing:
        return f"the {', '.join(missing)} output asked for is missing"
    return None


def finished_summary(item: BatchItem, settings: BatchSettings) -> dict[str, Any] | None:
    """The item's <stem>_predict.json when it records a finished run of this input (the same content) with these
    settings and its outputs are all there (`resume_mismatch`), else None."""
    try:
        summary = json.loads(item.summary_path.read_text())
    except (OSError, ValueError):
        return None
    return summary if resume_mismatch(item, settings, summary) is None else None


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
    unfinished ones are replaced; a JSON made with other settings still needs `overwrite`. Temporary files of
    earlier runs are removed, so call it while holding `nucseg.io.outputs.output_lock` on `out` (as the command
    line does): then no other run is writing them.

    Raises:
        StoreError: existing outputs that the flags do not allow to replace.
    """
    out = check_output_folder(Path(out).absolute())  # a folder we cannot write fails now, before any work
    paths, seen = [], set()
    for path in inputs:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            paths.append(Path(path).absolute())
    plan = BatchPlan([], [], [], out, duplicates=len(inputs) - len(paths))
    blocked: list[Path] = []
    why: str | None = None
    for path, (stem, note) in zip(paths, unique_stems(paths)):
        item = BatchItem(path, stem, out, note)
        plan.items.append(item)
        existing = [p for p in [*item.outputs(FORMATS).values(), item.summary_path] if p.exists()]
        done = finished_summary(item, settings) if resume else None
        if done is not None:
            for path_ in leftovers(item):  # a killed run's temporary files, also of an input finished since
                remove_path(path_)
            plan.skipped.append((item, done))
            continue
        if existing and not overwrite:
            if not resume or item.summary_path.exists():  # a JSON with other settings: a finished result
                if resume and why is None:
                    try:
                        why = resume_mismatch(item, settings, json.loads(item.summary_path.read_text()))
                    except (OSError, ValueError):
                        why = f"{item.summary_path.name} cannot be read"
                blocked.append(existing[0])
                continue
            plan.replacing += 1
        zarr_output = item.outputs(("zarr",))["zarr"]
        for path_ in existing:  # --overwrite never destroys a folder nucseg did not write
            check_replaceable(path_, folder=path_ == zarr_output)
        for path_ in leftovers(item):  # temporary files of a run that was killed
            remove_path(path_)
        plan.todo.append(dataclasses.replace(item, replace=bool(existing) or overwrite))
    if not blocked:
        # a summary a killed run was writing (atomic_output's temporary; .partial: of older versions)
        for path_ in [*out.glob(f".{SUMMARY_NAME}.*.tmp"), *out.glob(f".{SUMMARY_NAME}.*.partial")]:
            remove_path(path_)
    if blocked:
        more = f" (and {len(blocked) - 1} more inputs' outputs)" if len(blocked) > 1 else ""
        hint = (f"they do not match this run ({why or 'another input, model, tiling, --mpp, --region or --format'})"
                ": pass --overwrite to replace them, or choose another --out" if resume else
                "pass --resume to skip the finished inputs, --overwrite to replace them, or choose another --out")
        raise StoreError(f"{blocked[0]} already exists{more}; {hint}")
    return plan


@dataclasses.dataclass
class BatchReport:
    """The outcome of every input, in input order, and where the summary CSV went."""

    outcomes: list[InputOutcome]
    #: the summary CSV, or None when it could not be written (`summary_error` says why)
    summary_csv: Path | None
    interrupted: bool = False
    summary_error: str | None = None

    @property
    def disk_full(self) -> InputOutcome | None:
        """The input whose outputs met a full disk (the batch stopped there), or None."""
        return next((o for o in self.outcomes if o.disk_full), None)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[InputOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def _class_cells(outcome: InputOutcome) -> dict[str, Any]:
    """The nuclei per class (``class:NAME``) and per mm² (``per_mm2:NAME``, when the pixel size is known)."""
    classes = (outcome.summary or {}).get("classes") or {}
    cells = {f"class:{k}": v for k, v in (classes.get("counts") or {}).items()}
    return {**cells, **{f"per_mm2:{k}": v for k, v in (classes.get("per_mm2") or {}).items()}}


def write_batch_summary(out: Path, outcomes: Sequence[InputOutcome]) -> Path:
    """`out/batch_summary.csv`: input, stem, status, nuclei, the density figures (mm² ones only when the pixel
    size is known), seconds, worker, error (replaced at each run); with a classifier, ``class:NAME`` and
    ``per_mm2:NAME`` per class. Written under a temporary name that is removed when the write fails.

    Raises:
        StoreError: the file cannot be written (a full disk says so).
    """
    from nucseg.io.export import atomic_output  # the one temp-then-rename write

    path = Path(out) / SUMMARY_NAME
    classes = {name: None for o in outcomes for name in ((o.summary or {}).get("classes") or {}).get("counts", {})}
    extra = [f"{kind}:{name}" for name in classes for kind in ("class", "per_mm2")]
    with atomic_output(path, overwrite=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*SUMMARY_COLUMNS, *extra])
        writer.writeheader()
        writer.writerows({**o.row(), **_class_cells(o)} for o in outcomes)
    return path


def _from_disk(item: BatchItem, settings: BatchSettings) -> InputOutcome:
    summary = finished_summary(item, settings)
    return done_outcome(item, summary) if summary is not None else InputOutcome(item, "not run")


def iter_local(items: Sequence[BatchItem], settings: BatchSettings) -> Generator[Progress, None, None]:
    """Run items one after the other in this process."""
    worker = local_worker()
    for item in items:
        t0 = time.perf_counter()
        try:
            summary = yield from relay(iter_predict_file(item, settings, worker),
                                       lambda r, item=item: tiles_done(item, r.done, r.total))
            outcome = done_outcome(item, summary)
        except Exception as err:  # noqa: BLE001 - one failing input must not stop the batch; reported in full
            outcome = failed_outcome(item, err, time.perf_counter() - t0, worker)
        yield input_ended(item, outcome)


def iter_batch(plan: BatchPlan, settings: BatchSettings, *, workers: int | None = None, scheduler: str | None = None,
               threads_per_worker: int | None = None) -> Generator[Progress, None, BatchReport]:
    """Run a planned batch: in-process, on a new local Dask cluster of `workers` processes, or on the Dask
    scheduler at `scheduler`. The summary CSV is written when the generator ends, is closed early (Ctrl-C in the
    caller) or raises; unfinished inputs are listed as "not run".

    Yields:
        `Progress` records: an input's tiles (``info["item"]``), and kind "input" when one ended
        (``info["outcome"]``, an `InputOutcome`).

    Returns:
        `BatchReport`.
    """
    outcomes: dict[str, InputOutcome] = {item.stem: done_outcome(item, summary, "skipped")
                                        for item, summary in plan.skipped}
    finished = False
    check_output_folder(plan.out)
    events: Generator[Progress, None, None] | None = None
    try:
        if workers or scheduler:
            from nucseg.jobs.distributed import iter_distributed

            events = iter_distributed(plan.todo, settings, workers=workers, scheduler=scheduler,
                                      threads_per_worker=threads_per_worker)
        else:
            events = iter_local(plan.todo, settings)
        for event in events:
            if event.kind == "input":
                outcomes[event.info["item"].stem] = event.info["outcome"]
            yield event
            if event.kind == "input" and event.info["outcome"].disk_full:
                break  # every other input would meet the same full disk: stop, the rest stays "not run"
        finished = True
    finally:
        if events is not None:
            events.close()  # cancels what has not finished and releases a cluster
        # an input whose outputs a worker committed before the client heard of it (Ctrl-C) is done all the same
        rows = [outcomes.get(item.stem) or _from_disk(item, settings) for item in plan.items]
        path: Path | None = plan.out / SUMMARY_NAME
        summary_error = None
        try:
            path = write_batch_summary(plan.out, rows)
        except StoreError as err:
            path, summary_error = None, str(err)
    return BatchReport(rows, path, interrupted=not finished, summary_error=summary_error)
