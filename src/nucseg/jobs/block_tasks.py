"""A large slide split into block tasks: workers run its blocks, the client writes them in block order.

The client plans the slide (`nucseg.inference.plan.plan_prediction`: blocks, tiles, calibration windows: cheap,
a low-resolution tissue mask at most); each worker re-opens the slide from its path, plans again (the same plan:
it is a pure function of the file and the settings; kept per worker for the slide's next blocks), runs its block
(`run_block`) and returns the `BlockOutput`. `BlockAssembly` writes the outputs in block order with `write_block`,
which numbers the nuclei as a serial run does: the labels are those of `iter_predict`, bit for bit.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import socket
import threading
import time
import traceback
from typing import Any

from nucseg.errors import NucsegError
from nucseg.jobs.outcomes import worker_label
from nucseg.jobs.predict_file import BatchItem, BatchSettings, OutputSet, input_units, is_big, local_worker

#: slides (and their plans) a worker keeps open for the next blocks of the same slide
PLANS_PER_WORKER = 2
_plans: collections.OrderedDict = collections.OrderedDict()
_plans_lock = threading.Lock()
#: seconds between two tile-progress events a task sends to the client (its `nucseg.progress.Throttle`)
PROGRESS_INTERVAL = 0.5


@dataclasses.dataclass
class BlockResult:
    """What a block task sends back: the block's output, or its error (as text: not every exception pickles)."""

    output: Any = None
    worker: dict[str, Any] | None = None
    runtime: str = "pytorch"
    error: str | None = None
    traceback: str | None = None


def worker_identity(settings: BatchSettings) -> dict[str, Any]:
    """The worker running this task: Dask name and address, host, process, device (recorded in the JSON)."""
    from distributed import get_worker

    worker = get_worker()
    info: dict[str, Any] = {"name": worker.name, "address": worker.address, "host": socket.gethostname(),
                            "pid": os.getpid()}
    with contextlib.suppress(Exception):
        import torch

        from nucseg.models.device import select_device

        device = select_device(settings.config.device)
        info["device"] = f"cuda:{torch.cuda.current_device()}" if device.type == "cuda" else device.type
    return info


def worker_plan(item: BatchItem, settings: BatchSettings):
    """The plan of `item` on this worker: planned once per slide, the slide kept open for its other blocks."""
    from nucseg.inference.plan import plan_prediction
    from nucseg.io.slides import open_slide

    key = (str(item.input), repr(settings))
    with _plans_lock:
        if key in _plans:
            _plans.move_to_end(key)
            return _plans[key][1]
    slide = open_slide(item.input)
    mpp, _ = input_units(slide, settings)
    plan = plan_prediction(slide, settings.config, mpp=mpp, region=settings.region)
    with _plans_lock:
        _plans[key] = (slide, plan)
        while len(_plans) > PLANS_PER_WORKER:
            _plans.popitem(last=False)[1][0].close()
    return plan


def forget_plans() -> None:
    """Close the slides kept for block tasks (when the worker's batch ends)."""
    with _plans_lock:
        while _plans:
            with contextlib.suppress(Exception):
                _plans.popitem()[1][0].close()


def run_block_task(item: BatchItem, settings: BatchSettings, index: int, topic: str) -> BlockResult:
    """The task of block `index` of a slide, on a worker; tile progress goes out under `topic`."""
    import numpy as np
    from distributed import get_worker

    from nucseg.inference.blocks import load_predictor, run_block

    worker = get_worker()
    who = worker_identity(settings)

    def send(record) -> None:
        worker.log_event(topic, {"stem": item.stem, "block": index, "done": int(record.done),
                                 "total": int(record.total)})

    try:
        plan = worker_plan(item, settings)
        predictor = load_predictor(settings.config)
        output = run_block(plan, index, predictor, on_progress=send, interval_s=PROGRESS_INTERVAL,
                           probs_dtype=np.uint8)
        return BlockResult(output, who, predictor.runtime)
    except Exception as err:  # noqa: BLE001 - reported as the input's failure; the batch goes on
        if isinstance(err, NucsegError):
            return BlockResult(worker=who, error=str(err))
        return BlockResult(worker=who, error=f"{type(err).__name__}: {err}",
                           traceback="".join(traceback.format_exception(err)))


class BlockAssembly:
    """One slide being segmented as block tasks: its plan, its temporary outputs, the blocks written so far.

    `BlockAssembly.open` returns None for an input that is not worth splitting (a PNG / JPEG tile, read whole
    anyway, or a region of at most one block with tissue); it then runs as one task.
    """

    def __init__(self, item: BatchItem, settings: BatchSettings, plan, mpp: float | None, mpp_from: str,
                 outputs: OutputSet):
        from nucseg.inference.result_store import create_result_store

        self.item, self.settings, self.plan = item, settings, plan
        self.mpp, self.mpp_from, self.outputs = mpp, mpp_from, outputs
        self.t0 = time.perf_counter()
        # the layout `iter_predict` streams into
        self.labels, self.probs = create_result_store(outputs.store(True), plan.label_shape, plan.shape)
        self.indices = [b.index for b in plan.blocks if b.tiles]
        self.waiting: dict[int, BlockResult] = {}
        self.written, self.next_id = 0, 1
        self.block_workers: collections.Counter = collections.Counter()
        self.tiles_done: dict[int, int] = {}
        self.runtime = "pytorch"

    @classmethod
    def open(cls, item: BatchItem, settings: BatchSettings) -> BlockAssembly | None:
        from nucseg.inference.plan import plan_prediction
        from nucseg.io.slides import PIL_FORMATS, open_slide, require_brightfield, suffix_of

        if suffix_of(item.input) in PIL_FORMATS:
            return None
        with open_slide(item.input) as slide:
            require_brightfield(slide, settings.allow_fluorescence)  # as iter_predict_file does
            mpp, mpp_from = input_units(slide, settings)
            if not is_big(slide, settings, mpp):
                return None
            plan = plan_prediction(slide, settings.config, mpp=mpp, region=settings.region)
        if sum(bool(b.tiles) for b in plan.blocks) < 2:
            return None
        outputs = OutputSet(item, settings)
        try:
            return cls(item, settings, plan, mpp, mpp_from, outputs)
        except BaseException:
            outputs.__exit__(None, None, None)
            raise

    @property
    def total(self) -> int:
        return self.plan.total

    @property
    def complete(self) -> bool:
        return self.written == len(self.indices)

    def progress(self, block: int, done: int) -> int:
        """Record tiles done in a block; returns the tiles done over the slide."""
        self.tiles_done[block] = done
        return sum(self.tiles_done.values())

    def add(self, result: BlockResult) -> None:
        """Keep a finished block and write every block that is now next in order."""
        from nucseg.inference.blocks import write_block

        output = result.output
        self.waiting[output.index] = result
        self.tiles_done[output.index] = output.tiles_done
        self.block_workers[worker_label(result.worker) or "?"] += 1
        self.runtime = result.runtime
        while self.written < len(self.indices) and self.indices[self.written] in self.waiting:
            ready = self.waiting.pop(self.indices[self.written]).output
            self.next_id = write_block(self.plan, ready, self.labels, self.probs, self.next_id)
            self.written += 1

    def finish(self) -> dict[str, Any]:
        """Write the exports and the JSON of the assembled slide; returns the summary."""
        from nucseg.inference.predict import PredictionResult

        spec = self.plan.spec
        seconds = time.perf_counter() - self.t0
        result = PredictionResult(
            labels=self.labels, probabilities=self.probs, region=self.plan.source.region0, mpp=self.mpp,
            model_mpp=spec.mpp, n_nuclei=self.next_id - 1, config=self.plan.config, seconds=seconds,
            model_info={"name": spec.name, "sha256": spec.sha256, "runtime": self.runtime})
        client = {**local_worker(), "name": "client", "role": "planned the slide and wrote its blocks in order"}
        extra = {"blocks": len(self.indices), "block_workers": dict(sorted(self.block_workers.items()))}
        from nucseg.io.slides import open_slide

        with open_slide(self.item.input) as slide:  # for the H&E intensity columns, as in-process
            return self.outputs.finish(result, mpp=self.mpp, mpp_from=self.mpp_from, image=slide, slide=slide,
                                       worker=client,
                                       seconds=seconds, extra=extra)

    def close(self) -> None:
        """Remove whatever was not committed (temporary outputs of a failed or interrupted slide)."""
        self.waiting.clear()
        self.outputs.__exit__(None, None, None)
