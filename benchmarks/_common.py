"""Shared helpers for the benchmark scripts: real H&E pixels, a model, timing, JSON lines."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MONUSEG = ROOT.parent / "shared" / "data" / "monuseg-train"
RESULTS = ROOT / "benchmarks" / "results"


def he_tile(index: int = 0) -> np.ndarray:
    """A real 1000x1000 H&E tile from MoNuSeg (needs ../shared/data)."""
    from PIL import Image

    paths = sorted((MONUSEG / "images").glob("*.png"))
    if not paths:
        raise SystemExit(f"benchmarks need the MoNuSeg tiles in {MONUSEG}")
    return np.asarray(Image.open(paths[index % len(paths)]).convert("RGB"))


def he_mosaic(size: int, seed: int = 0) -> np.ndarray:
    """A size x size RGB mosaic of real H&E tiles (randomly flipped so it is not periodic)."""
    rng = np.random.default_rng(seed)
    out = np.empty((size, size, 3), np.uint8)
    for y in range(0, size, 1000):
        for x in range(0, size, 1000):
            tile = he_tile(int(rng.integers(30)))
            if rng.random() < 0.5:
                tile = tile[::-1]
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            h, w = min(1000, size - y), min(1000, size - x)
            out[y : y + h, x : x + w] = tile[:h, :w]
    return out


def default_model_name() -> str:
    from nucseg.models.registry import shipped_models

    return "nucseg-default" if "nucseg-default" in shipped_models() else "unet-efficientnet-b0"


def best_of(fn, repeats: int = 3) -> float:
    """Fastest wall time of `repeats` calls (the least disturbed by other work on a shared machine)."""
    return interleaved_best({"fn": fn}, repeats)["fn"]


def interleaved_times(fns: dict, repeats: int = 5) -> dict[str, list[float]]:
    """Wall times of each function over `repeats` rounds that call them in turn, so that a slow spell of a shared
    machine hits all of them rather than whichever was running at the time (round i of each is comparable)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_best(fns: dict, repeats: int = 5) -> dict[str, float]:
    """Fastest wall time of each function over `repeats` interleaved rounds (see `interleaved_times`)."""
    return {name: min(t) for name, t in interleaved_times(fns, repeats).items()}


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of num's time / den's time in the same round: steadier on a noisy machine than a
    ratio of two minima, which can come from different rounds."""
    return float(np.median(np.array(times[num]) / np.array(times[den])))


def emit(name: str, record: dict) -> None:
    """Print a JSON line and append it to benchmarks/results/<name>.jsonl."""
    import torch

    record = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "machine": platform.machine(), **record}
    line = json.dumps(record)
    print(line, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{name}.jsonl", "a") as fh:
        fh.write(line + "\n")
