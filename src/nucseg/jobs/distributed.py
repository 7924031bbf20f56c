"""Run a batch on Dask distributed: a new local cluster of worker processes, or an existing scheduler.

One task per input; each task segments its input on a worker and writes the outputs there (through the same
`iter_predict_file` as the in-process path, so the files are the same), which needs the inputs and the output
folder at the same paths on every worker (one machine, or a shared file system on a cluster). A slide of several
blocks becomes one task per block instead, written here in block order (`nucseg.jobs.block_tasks`).

Each worker loads the model once, when `ModelPlugin` is registered (later tasks find it in the worker's model
cache), and frees it when the batch ends. On a machine with several GPUs, run one worker per GPU: a local cluster's
workers take GPU `worker index % GPUs`; external workers are pinned with ``CUDA_VISIBLE_DEVICES`` (docs/BATCH.md).
Tile progress comes back to the client as worker events (`Worker.log_event` / `Client.subscribe_topic`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import time
import uuid
from collections.abc import Generator, Iterator, Sequence
from typing import Any

from distributed import Client, LocalCluster, WorkerPlugin, get_worker

from nucseg.config import InferenceConfig
from nucseg.errors import ModelError, NucsegError
from nucseg.jobs.block_tasks import (
    PROGRESS_INTERVAL,
    BlockAssembly,
    forget_plans,
    run_block_task,
    worker_identity,
)
from nucseg.jobs.outcomes import (
    InputOutcome,
    done_outcome,
    failed_outcome,
    input_ended,
    tiles_done,
    worker_label,
)
from nucseg.jobs.predict_file import BatchItem, BatchSettings, iter_predict_file, local_worker
from nucseg.progress import Progress, drive

#: how long to wait for the first worker of an existing scheduler
WORKER_WAIT_S = 120
#: an existing scheduler's address: [tcp:// or tls://]HOST:PORT
_SCHEDULER_ADDRESS = re.compile(r"^(?:(tcp|tls)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")
FIX_SCHEDULER = ("start one with `dask scheduler` and workers with `dask worker ADDRESS`, or check the address "
                 "(e.g. tcp://10.0.0.5:8786)")


def handshake_timeout() -> float:
    """Seconds allowed for the whole handshake with an existing scheduler (connect, ask who it is, hear back):
    Dask's own connect timeout (``distributed.comm.timeouts.connect``, 30 s unless configured)."""
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds"))


def check_scheduler(address: str, timeout: float | None = None) -> str:
    """`address` once it has answered as a Dask scheduler within `timeout` seconds, the handshake included (a port
    that accepts but does not speak Dask hung a Client forever: its timeout covers only the TCP connect).

    Raises:
        NucsegError: not an address, nothing there, something that is not a scheduler, or no answer in time; one
            line naming the address.
    """
    import asyncio

    from distributed.comm import connect

    text = address.strip()
    if not _SCHEDULER_ADDRESS.match(text):
        raise NucsegError(f"--scheduler {address!r} is not a Dask scheduler address: give [tcp://]HOST:PORT, e.g. "
                          "tcp://10.0.0.5:8786")
    if "://" not in text:
        text = f"tcp://{text}"
    timeout = handshake_timeout() if timeout is None else timeout

    async def identity() -> Any:
        comm = await connect(text, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    try:
        answer = asyncio.run(asyncio.wait_for(identity(), timeout))
    except (TimeoutError, asyncio.TimeoutError) as err:
        raise NucsegError(f"the Dask scheduler at {address} did not answer within {timeout:g} s (something accepts "
                          f"connections there but does not speak Dask); {FIX_SCHEDULER}") from err
    except Exception as err:  # noqa: BLE001 - refused, unknown host, closed, not Dask's framing: nothing to use there
        raise NucsegError(f"cannot reach the Dask scheduler at {address}: {' '.join(str(err).split())[:160]}; "
                          f"{FIX_SCHEDULER}") from err
    kind = answer.get("type") if isinstance(answer, dict) else None
    if kind != "Scheduler":
        raise NucsegError(f"{address} answered as {kind or 'something else'}, not as a Dask scheduler; "
                          f"{FIX_SCHEDULER}")
    return text


class ModelPlugin(WorkerPlugin):
    """Prepares each worker for segmentation: torch threads, its GPU, and the model loaded once.

    Args:
        config: the batch's settings; the model is loaded as the tasks will load it (`load_predictor`), so they
            find it in the worker's model cache (a model folder must exist at the same path on the workers).
        torch_threads: threads for torch's CPU kernels; None keeps the worker's (Dask sets 1 unless the
            worker's environment sets ``OMP_NUM_THREADS``).
    """

    def __init__(self, config: InferenceConfig, torch_threads: int | None = None):
        self.config, self.torch_threads = config, torch_threads
        self.name = f"nucseg-model-{uuid.uuid4().hex[:8]}"

    def setup(self, worker) -> None:
        import torch

        from nucseg.inference.blocks import load_predictor

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        if (self.config.device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1
                and "CUDA_VISIBLE_DEVICES" not in os.environ and isinstance(worker.name, int)):
            torch.cuda.set_device(worker.name % torch.cuda.device_count())  # local cluster: one GPU per worker
        load_predictor(self.config)

    def teardown(self, worker) -> None:
        from nucseg.models.build import clear_cache

        forget_plans()
        clear_cache()
        with contextlib.suppress(Exception):  # the accelerator may be gone already when a worker shuts down
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def run_file_task(item: BatchItem, settings: BatchSettings, topic: str) -> InputOutcome:
    """The task of one input, on a worker: segment it, write its outputs, send tile progress under `topic`.
    Errors come back as a "failed" outcome (exceptions are not all picklable; the message always is)."""
    worker = get_worker()
    who = worker_identity(settings)
    t0 = time.perf_counter()

    def send(record) -> None:
        worker.log_event(topic, {"stem": item.stem, "done": int(record.done), "total": int(record.total)})

    try:
        return done_outcome(item, drive(iter_predict_file(item, settings, who), send, interval_s=PROGRESS_INTERVAL))
    except Exception as err:  # noqa: BLE001 - one failing input must not stop the batch; reported in full
        return failed_outcome(item, err, time.perf_counter() - t0, who)


def _check_workers(out: str) -> dict[str, Any]:
    """Run on every worker before the batch: can it write the output folder, and which nucseg does it have."""
    import nucseg

    return {"version": nucseg.__version__, "out": os.path.isdir(out) and os.access(out, os.W_OK)}


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Client]:
    """A client of a new local cluster (`workers` processes on 127.0.0.1) or of the scheduler at `scheduler`;
    closed, with the cluster, on exit (also on Ctrl-C).

    Raises:
        NucsegError: the scheduler cannot be reached or has no workers.
    """
    cluster = None
    if scheduler:
        address = check_scheduler(scheduler)  # bounded: connect and handshake
        try:
            client = Client(address, timeout=f"{handshake_timeout():g}s", set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise NucsegError(f"cannot reach the Dask scheduler at {scheduler}: {err}; {FIX_SCHEDULER}") from err
    else:
        if not workers or workers < 1:
            raise NucsegError(f"--workers {workers}: give a number of worker processes of at least 1")
        # one task thread per worker (one model, one input at a time); torch gets the cores (ModelPlugin)
        with _workers_ignore_ctrl_c():
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=_dashboard_address(), silence_logs=logging.ERROR)
        client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):  # closing after Ctrl-C or a lost scheduler must not mask the cause
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (inherited through spawn): Ctrl-C in a terminal reaches the
    whole process group, and it is the client's job to stop them (cancel, close the cluster), not theirs to die
    with a traceback each."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _dashboard_address() -> str:
    """The scheduler's HTTP server (the dashboard when bokeh is installed, health and metrics routes always) on a
    free loopback port: the default 8787 is often taken by another cluster on the machine."""
    return "127.0.0.1:0"


def _prepare(client: Client, settings: BatchSettings, out: str, scheduler: str | None,
             threads_per_worker: int | None) -> str:
    """Check the workers, register the model plugin; returns its name."""
    import nucseg

    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError as err:
        raise NucsegError(f"the Dask scheduler at {scheduler} has no workers after {WORKER_WAIT_S} s; start some "
                          f"with `dask worker {scheduler}`") from err
    for address, facts in client.run(_check_workers, out).items():
        if facts["version"] != nucseg.__version__:
            raise NucsegError(f"worker {address} has nucseg {facts['version']}, this client {nucseg.__version__}: "
                              "install the same version everywhere")
        if not facts["out"]:
            raise NucsegError(f"worker {address} cannot write {out}: workers need the inputs and the output folder "
                              "at the same paths (a shared file system)")
    plugin = ModelPlugin(settings.config, threads_per_worker)
    try:
        client.register_plugin(plugin)
    except NucsegError:
        raise
    except Exception as err:  # a worker failed to set up (e.g. the model folder is missing there)
        raise ModelError(f"the workers could not load model {settings.config.model!r}: {err}") from err
    return plugin.name


def iter_distributed(items: Sequence[BatchItem], settings: BatchSettings, *, workers: int | None = None,
                     scheduler: str | None = None, threads_per_worker: int | None = None
                     ) -> Generator[Progress, None, None]:
    """Run `items` as Dask tasks: one per input, or one per block for a slide of several blocks (written here, in
    block order). Yields tile progress and each input's outcome as it ends. Closing the generator (Ctrl-C in the
    caller) cancels what has not finished, removes its temporary files and releases the cluster."""
    if not items:
        return
    if workers and not scheduler and not threads_per_worker:  # a local cluster shares this machine's cores
        threads_per_worker = max(1, (os.cpu_count() or 1) // workers)
    with dask_client(workers, scheduler) as client:
        plugin = _prepare(client, settings, str(items[0].out), scheduler, threads_per_worker)
        topic = f"nucseg-progress-{uuid.uuid4().hex[:8]}"
        events: queue.SimpleQueue = queue.SimpleQueue()
        client.subscribe_topic(topic, events.put)
        by_stem = {item.stem: item for item in items}
        pending: dict[Any, tuple[BatchItem, int | None]] = {}
        assemblies: dict[str, BlockAssembly] = {}
        try:
            for item in items:  # planning a slide here overlaps with the workers' first tasks
                t0 = time.perf_counter()
                try:
                    assembly = BlockAssembly.open(item, settings)
                except Exception as err:  # noqa: BLE001 - e.g. a broken slide: reported, the batch goes on
                    yield input_ended(item, failed_outcome(item, err, time.perf_counter() - t0, local_worker()))
                    continue
                if assembly is None:
                    future = client.submit(run_file_task, item, settings, topic, pure=False,
                                           key=f"nucseg-{item.stem}-{topic[-8:]}")
                    pending[future] = (item, None)
                    continue
                assemblies[item.stem] = assembly
                for index in assembly.indices:
                    future = client.submit(run_block_task, item, settings, index, topic, pure=False,
                                           key=f"nucseg-{item.stem}-block{index}-{topic[-8:]}")
                    pending[future] = (item, index)
                yield tiles_done(item, 0, assembly.total)
            while pending:
                with contextlib.suppress(queue.Empty):
                    while True:
                        _, msg = events.get(timeout=0.2)
                        item = by_stem[msg["stem"]]
                        if "block" in msg:
                            if item.stem in assemblies:
                                assembly = assemblies[item.stem]
                                yield tiles_done(item, assembly.progress(msg["block"], msg["done"]), assembly.total)
                        else:
                            yield tiles_done(item, msg["done"], msg["total"])
                for future in [f for f in pending if f.done()]:
                    item, index = pending.pop(future)
                    if index is None:
                        yield input_ended(item, _outcome(future, item))
                    elif item.stem in assemblies:
                        outcome = _add_block(assemblies[item.stem], future, item)
                        if outcome is not None:
                            assemblies.pop(item.stem).close()
                            if outcome.status != "done":  # the slide failed: its other blocks are not needed
                                rest = [f for f, (i, _) in pending.items() if i.stem == item.stem]
                                client.cancel(rest)
                                for f in rest:
                                    pending.pop(f)
                            yield input_ended(item, outcome)
        finally:
            if pending:
                with contextlib.suppress(Exception):
                    client.cancel(list(pending))
            for assembly in assemblies.values():
                assembly.close()
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(topic)
                client.unregister_worker_plugin(plugin)  # frees the model on a shared cluster's workers


def _add_block(assembly: BlockAssembly, future, item: BatchItem) -> InputOutcome | None:
    """Take a finished block task; returns the slide's outcome when it is complete or has failed, else None."""
    seconds = time.perf_counter() - assembly.t0
    if future.status != "finished":
        return _outcome(future, item)
    result = future.result()
    if result.error is not None:
        outcome = InputOutcome(item, "failed", seconds=round(seconds, 2), worker=worker_label(result.worker),
                               error=result.error)
        if result.traceback:
            outcome.summary = {"traceback": result.traceback}
        return outcome
    try:
        assembly.add(result)
        return done_outcome(item, assembly.finish()) if assembly.complete else None
    except Exception as err:  # noqa: BLE001 - writing this slide failed (disk full...): reported, the batch goes on
        return failed_outcome(item, err, seconds, local_worker())


def _outcome(future, item: BatchItem) -> InputOutcome:
    if future.status == "finished":
        return future.result()
    if future.status == "cancelled":
        return InputOutcome(item, "failed", error="cancelled: the scheduler or the worker went away")
    # the task itself never raises (run_file_task reports errors): this is the cluster (e.g. KilledWorker after
    # the input killed several workers, usually by running out of memory)
    return failed_outcome(item, future.exception(), 0.0, None)
