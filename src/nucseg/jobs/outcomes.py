"""How the inputs of a batch went, and the `Progress` records a batch yields: shared by the in-process runner
(`nucseg.jobs.batch`), the Dask runner (`nucseg.jobs.distributed`) and its tasks (`nucseg.jobs.block_tasks`), which
all import them from here (none imports another's runner)."""

from __future__ import annotations

import dataclasses
import traceback
from typing import Any

from nucseg.errors import NucsegError
from nucseg.io.outputs import is_disk_full, write_failure
from nucseg.jobs.predict_file import BatchItem
from nucseg.progress import Progress

__all__ = ["DENSITY_COLUMNS", "InputOutcome", "done_outcome", "failed_outcome", "input_ended", "tiles_done",
           "worker_label"]


#: the `<stem>_predict.json` "density" figures copied into the batch summary (empty when unknown)
DENSITY_COLUMNS = ("tissue_mm2", "nuclei_per_mm2", "tissue_px2", "nuclei_per_mpx")


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
    #: the input failed because the output disk is full (the batch stops: the other inputs would fail the same way)
    disk_full: bool = False

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
    traceback goes with it). A full disk is ours too (`nucseg.io.outputs.write_failure`), flagged `disk_full`."""
    if is_disk_full(err):
        err = write_failure(item.out, err)  # type: ignore[arg-type]
    if isinstance(err, NucsegError):
        message = str(err)
    else:
        message = f"{type(err).__name__}: {err}"
    outcome = InputOutcome(item, "failed", None, round(seconds, 2), worker_label(worker), message,
                           disk_full=bool(getattr(err, "disk_full", False)))
    if not isinstance(err, NucsegError):
        outcome.summary = {"traceback": "".join(traceback.format_exception(err))}
    return outcome


def tiles_done(item: BatchItem, done: int, total: int) -> Progress:
    """A batch's progress record: `done` of `total` tiles of `item` (``info["item"]``)."""
    return Progress(int(done), int(total), item.stem, info={"item": item})


def input_ended(item: BatchItem, outcome: InputOutcome) -> Progress:
    """A batch's record that `item` ended (kind "input"; ``info["item"]``, ``info["outcome"]``)."""
    return Progress(0, 0, f"{item.stem}: {outcome.status}", kind="input", info={"item": item, "outcome": outcome})
