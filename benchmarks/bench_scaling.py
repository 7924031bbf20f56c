"""Scaling of `nucseg predict` over Dask workers: the same batch on 1 and on 2 worker processes.

Both clusters are started first and run the batch once (start-up and that first batch, which also pays each
worker's import of torch, are reported apart: paid once per batch, not per input), then the batch runs on each in
turn, `--rounds` times (interleaved, so a busy spell of a shared machine hits both). Every batch loads the model
into each worker (the worker plugin) and frees it at the end, as `nucseg predict` does. The
cores are the same for both: 1 worker x C torch threads against 2 workers x C/2 threads, so the figure says
whether splitting the batch over processes beats splitting each tile's convolutions over threads.

    python benchmarks/bench_scaling.py [--inputs 6] [--size 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import default_model_name, emit, he_tile


def make_inputs(folder: Path, n: int, size: int) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(n):
        tile = he_tile(i)
        y = x = 500 - size // 2
        path = folder / f"he{i}.png"
        Image.fromarray(np.ascontiguousarray(tile[y : y + size, x : x + size])).save(path)
        paths.append(path)
    return paths


def run_batch(inputs: list[Path], out: Path, settings, scheduler: str, threads: int) -> tuple[float, int, float]:
    """Wall seconds of the batch, nuclei found, and the mean seconds one input took on its worker."""
    from nucseg.jobs.batch import iter_batch, plan_batch
    from nucseg.progress import drive

    plan = plan_batch(inputs, out, settings)
    t0 = time.perf_counter()
    report = drive(iter_batch(plan, settings, scheduler=scheduler, threads_per_worker=threads))
    seconds = time.perf_counter() - t0
    if report.failed:
        raise SystemExit(f"inputs failed: {[o.error for o in report.failed]}")
    per_input = float(np.mean([o.seconds for o in report.outcomes]))
    return seconds, sum(o.nuclei or 0 for o in report.outcomes), per_input


#: (workers, torch threads per worker) run on each round: the same cores two ways, and one thread per worker
CONFIGS = ((1, 0), (2, 0), (1, 1))  # 0 threads: cores / workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=6)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from nucseg.config import InferenceConfig, TilingConfig
    from nucseg.jobs.batch import BatchSettings

    cores = os.cpu_count() or 1
    model = default_model_name()
    settings = BatchSettings(InferenceConfig(model=model, device="cpu", tiling=TilingConfig(256, 32, 4)))
    configs = {f"{n}x{t or max(1, cores // n)}": (n, t or max(1, cores // n)) for n, t in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp), args.inputs, args.size)
        clusters, clients, startup = {}, [], {}
        for n in (1, 2):
            t0 = time.perf_counter()
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
            clients.append(Client(cluster))
            clients[-1].wait_for_workers(n)
            clusters[n], startup[n] = cluster, round(time.perf_counter() - t0, 2)
        times: dict[str, list[float]] = {name: [] for name in configs}
        per_input: dict[str, list[float]] = {name: [] for name in configs}
        nuclei: dict[str, int] = {}
        first = {}  # the first batch on a fresh cluster also pays each worker's import of torch: reported apart
        for n in (1, 2):
            first[n] = round(run_batch(inputs, Path(tmp) / f"warm-{n}", settings, clusters[n].scheduler_address,
                                       max(1, cores // n))[0], 2)
        for r in range(args.rounds):
            for name, (n, threads) in configs.items():
                seconds, nuclei[name], each = run_batch(inputs, Path(tmp) / f"out-{name}-{r}", settings,
                                                        clusters[n].scheduler_address, threads)
                times[name].append(round(seconds, 2))
                per_input[name].append(round(each, 2))
                print(f"round {r + 1}: {n} worker(s) x {threads} torch threads: {seconds:.1f} s "
                      f"({each:.1f} s per input on its worker)", flush=True)
        for client in clients:
            client.close()
        for cluster in clusters.values():
            cluster.close()
    if len(set(nuclei.values())) != 1:
        raise SystemExit(f"the configurations found different nuclei: {nuclei}")
    same_cores = f"1x{cores}", f"2x{max(1, cores // 2)}"
    speedup = [round(a / b, 3) for a, b in zip(times[same_cores[0]], times[same_cores[1]])]
    per_worker = [round(a / b, 3) for a, b in zip(times["1x1"], times[f"2x{max(1, cores // 2)}"])]
    print(f"2 workers over 1 on the same {cores} cores ({same_cores[1]} vs {same_cores[0]}), per round: {speedup}")
    print(f"2 workers over 1 at {max(1, cores // 2)} thread(s) each ({same_cores[1]} vs 1x1), per round: {per_worker}")
    print(f"(machine shared with other jobs: load average {os.getloadavg()[0]:.1f} on {cores} cores)")
    emit("scaling", {"model": model, "inputs": args.inputs, "size": args.size, "cores": cores, "seconds": times, "seconds_per_input": per_input,
                     "speedup_same_cores": speedup, "speedup_one_thread_per_worker": per_worker,
                     "startup_seconds": startup, "first_batch_seconds": first, "nuclei": nuclei[same_cores[0]],
                     "load_average": round(os.getloadavg()[0], 2),
                     "note": "machine shared with other jobs: times vary from run to run"})


if __name__ == "__main__":
    main()
