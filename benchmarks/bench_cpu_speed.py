"""`nucseg predict IMAGE --out DIR --device cpu` with its defaults: this tree against a baseline commit, side by side.

The image is 4 MP of real 40x H&E: a 2000 x 2000 mosaic of four MoNuSeg training tiles (none of the default
model's validation tiles). Each round runs the baseline's CLI and this tree's CLI, one after the other, as fresh
processes (start-up, reading, network, blending, post-processing and writing all count, as for a user), with the
same interpreter and the baseline's sources first on PYTHONPATH (a temporary `git worktree` of `--baseline`).
This tree's ONNX export is made before the rounds in a cache of its own and timed separately (a one-off per model
and ONNX Runtime version). Printed: both times per round, their paired ratio, the agreement of the labels
(object F1 at IoU 0.5, pixel Dice; this tree vs the baseline, and this tree's ONNX Runtime vs its own PyTorch
path), and the network alone in MP/s, PyTorch vs ONNX Runtime, on one default tile with fixed gates.
With --validation, the five validation tiles of the default model go through both CLIs too: agreement, and each
one's object F1 / AJI against the annotations.

    PYTHONPATH=src:benchmarks python benchmarks/bench_cpu_speed.py [--rounds 3] [--baseline 2e4e978]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import MONUSEG, ROOT, emit, interleaved_times, paired_ratio

MOSAIC = ["TCGA-18-5592-01Z-00-DX1", "TCGA-38-6178-01Z-00-DX1", "TCGA-49-4488-01Z-00-DX1", "TCGA-A7-A13E-01Z-00-DX1"]
VALIDATION = ["TCGA-E2-A14V-01Z-00-DX1", "TCGA-B0-5710-01Z-00-DX1", "TCGA-21-5786-01Z-00-DX1",
              "TCGA-G9-6362-01Z-00-DX1", "TCGA-DK-A2I6-01A-01-TS1"]


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def make_mosaic(folder: Path) -> Path:
    t = [read_rgb(MONUSEG / "images" / f"{n}.png") for n in MOSAIC]
    image = np.concatenate([np.concatenate(t[:2], 1), np.concatenate(t[2:], 1)], 0)
    from PIL import Image

    path = folder / "mosaic_4mp.png"
    Image.fromarray(image).save(path)
    return path


def cli(src: Path, inputs: list[Path], out: Path, env: dict, *extra: str) -> float:
    """Wall time of one `nucseg predict` process (defaults but --device cpu)."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "nucseg", "predict", *map(str, inputs), "--out", str(out), "--device", "cpu",
           "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**env, "PYTHONPATH": str(src)}, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return elapsed


def labels_of(out: Path, stem: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(out / f"{stem}_labels.tif")


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from nucseg.metrics.matching import object_metrics
    from nucseg.metrics.pixel import pixel_metrics

    return {"f1": round(float(object_metrics(a, b)["f1"]), 4),
            "dice": round(float(pixel_metrics(a > 0, b > 0)["dice"]), 4)}


def network_mps(repeats: int) -> dict[str, float]:
    """MP/s of the network alone (the image's gates fixed, one default tile per pass), interleaved rounds."""
    import torch

    from nucseg.config import TilingConfig
    from nucseg.inference.calibration import network_for_image
    from nucseg.inference.forward import predict_batch
    from nucseg.models.build import load_network
    from nucseg.models.registry import resolve_model

    spec = resolve_model("nucseg-default")
    cpu = torch.device("cpu")
    tile = TilingConfig().tile_size
    image = read_rgb(MONUSEG / "images" / f"{MOSAIC[0]}.png")
    if tile <= 1000:  # one default tile of it
        image = np.ascontiguousarray(image[:tile, :tile])[None]
    else:
        image = np.pad(image, ((0, tile - 1000), (0, tile - 1000), (0, 0)), constant_values=255)[None]
    nets = {}
    for runtime in ("pytorch", "onnxruntime"):
        net = load_network(spec, cpu, runtime=runtime)
        nets[runtime] = network_for_image(net, image[0], spec, cpu)
        predict_batch(nets[runtime], image, spec, cpu)  # warm-up: first-call allocations
    times = interleaved_times({r: (lambda r=r: predict_batch(nets[r], image, spec, cpu)) for r in nets}, repeats)
    mp = tile * tile / 1e6
    return {r: round(mp / min(t), 3) for r, t in times.items()} | {
        "onnxruntime_over_pytorch": round(paired_ratio(times, "pytorch", "onnxruntime"), 2), "tile": tile}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", default="2e4e978", help="commit to compare with (default 2e4e978)")
    p.add_argument("--validation", action="store_true", help="also the 5 validation tiles: agreement and accuracy")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_cpu_speed."))
    base = work / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline], check=True,
                   capture_output=True)
    try:
        env = {**os.environ, "NUCSEG_CACHE": str(work / "cache")}
        env.pop("PYTHONPATH", None)
        os.environ["NUCSEG_CACHE"] = env["NUCSEG_CACHE"]
        ours = ROOT / "src"
        image = make_mosaic(work)
        first = cli(ours, [image], work / "first", env)  # exports the ONNX model into the empty cache
        cli(base / "src", [image], work / "warm", env)  # the same warm file cache for both
        times = interleaved_times({
            "baseline": lambda: cli(base / "src", [image], work / "base_out", env),
            "current": lambda: cli(ours, [image], work / "cur_out", env),
        }, args.rounds)
        torch_path = cli(ours, [image], work / "cur_pytorch", env, "--runtime", "pytorch")
        stem = image.name.split(".")[0]
        cur, old, cur_pt = (labels_of(work / d, stem) for d in ("cur_out", "base_out", "cur_pytorch"))
        record = {
            "image": f"{image.name} ({cur.shape[0]}x{cur.shape[1]}, MoNuSeg training tiles {', '.join(MOSAIC)})",
            "baseline_commit": args.baseline,
            "baseline_s": [round(t, 2) for t in times["baseline"]], "current_s": [round(t, 2) for t in times["current"]],
            "speedup_paired": round(paired_ratio(times, "baseline", "current"), 2),
            "speedup_best": round(min(times["baseline"]) / min(times["current"]), 2),
            "current_first_run_with_export_s": round(first, 2), "current_runtime_pytorch_s": round(torch_path, 2),
            "nuclei": {"baseline": int(old.max()), "current": int(cur.max()), "current_pytorch": int(cur_pt.max())},
            "current_vs_baseline": agreement(old, cur), "onnxruntime_vs_pytorch_current": agreement(cur_pt, cur),
            "network_mps": network_mps(args.rounds),
        }
        if args.validation:
            record["validation"] = validation(base, ours, work, env)
        emit("bench_cpu_speed", record)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def validation(base: Path, ours: Path, work: Path, env: dict) -> dict:
    """Both CLIs on the validation tiles: agreement with each other and accuracy against the annotations."""
    from PIL import Image

    from nucseg.metrics.matching import aji, object_metrics

    tiles = [MONUSEG / "images" / f"{n}.png" for n in VALIDATION]
    cli(base / "src", tiles, work / "val_base", env)
    cli(ours, tiles, work / "val_cur", env)
    cli(ours, tiles, work / "val_cur_pt", env, "--runtime", "pytorch")
    rows = {}
    for name in VALIDATION:
        truth = np.asarray(Image.open(MONUSEG / "labels" / f"{name}.png"))
        old, cur, pt = (labels_of(work / d, name) for d in ("val_base", "val_cur", "val_cur_pt"))
        rows[name] = {
            "current_vs_baseline": agreement(old, cur), "onnxruntime_vs_pytorch": agreement(pt, cur),
            "baseline_vs_truth": {"f1": round(float(object_metrics(truth, old)["f1"]), 4),
                                  "aji": round(float(aji(truth, old)), 4)},
            "current_vs_truth": {"f1": round(float(object_metrics(truth, cur)["f1"]), 4),
                                 "aji": round(float(aji(truth, cur)), 4)},
        }
    return rows


if __name__ == "__main__":
    main()
