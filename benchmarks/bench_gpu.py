"""GPU pipeline throughput: network only, post-processing only (one process and a pool), and end to end.

    python benchmarks/bench_gpu.py [--device auto] [--size 12288] [--workers N] [--batch 16] [--tile 512]

Input: the bundled H&E sample (512 x 512, 0.25 um/px) mirrored into a size x size mosaic (no shared data needed,
so it runs on a bare GPU machine). Prints MP/s (megapixels of input per second, at the model's resolution):

- network: `predict_batch` on batches of tiles with fixed gates, the device synchronised by the copy back;
- post-processing: `finish_block` (watershed, nuclei kept by centre, probabilities of the core) on real
  probabilities of one block, in this process, and spread over a pool of `--workers` processes;
- end to end: `predict` on the mosaic (planning, reading, network, blending, post-processing in the pool, label
  writing), with the GPU's utilisation sampled by nvidia-smi every 0.2 s when there is one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import subprocess
import threading
import time

import numpy as np


def mosaic(size: int) -> np.ndarray:
    from nucseg.io.sample import sample_paths
    from nucseg.io.slides import read_image

    tile = read_image(sample_paths()[0])
    t = tile.shape[0]
    reps = -(-size // t)
    rows = []
    for i in range(reps):
        row = [tile[:: (-1) ** i, :: (-1) ** j] for j in range(reps)]  # mirrored: no seams, not periodic in one
        rows.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


class GpuSampler:
    """Samples `nvidia-smi`'s GPU utilisation every `interval` s in a thread (nothing without nvidia-smi)."""

    def __init__(self, interval: float = 0.2):
        self.samples: list[float] = []
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.split()
                if out:
                    self.samples.append(float(out[0]))
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        s = np.array(self.samples)
        return {"mean_pct": round(float(s.mean()), 1), "median_pct": round(float(np.median(s)), 1),
                "samples": len(s)}


def _finish(job):
    from nucseg.inference.blocks import finish_block

    return finish_block(*job).n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=12288, help="side of the end-to-end mosaic (model pixels)")
    parser.add_argument("--workers", type=int, default=None, help="post-processing processes (default: auto)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--network-batches", type=int, default=20)
    args = parser.parse_args()

    import torch

    from nucseg.config import InferenceConfig, TilingConfig
    from nucseg.inference.calibration import network_for_image
    from nucseg.inference.forward import predict_batch
    from nucseg.inference.plan import plan_prediction
    from nucseg.inference.predict import iter_probabilities, load_predictor, postprocess_workers, predict
    from nucseg.models.registry import shipped_models
    from nucseg.progress import drive

    model = "nucseg-default" if "nucseg-default" in shipped_models() else "unet-efficientnet-b0"
    tiling = TilingConfig(args.tile, 64, args.batch)
    config = InferenceConfig(model=model, device=args.device, tiling=tiling, block_size=args.block)
    predictor = load_predictor(config)
    device = predictor.device
    workers = postprocess_workers(device) if args.workers is None else args.workers
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    record = {"device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
              "cpus": os.cpu_count(), "model": model, "runtime": predictor.runtime, "tile": args.tile,
              "batch": args.batch, "workers": workers}

    # network only
    image = mosaic(max(args.block, 2048))
    net = network_for_image(predictor.net, image, predictor.spec, device)
    t = args.tile
    H, W = image.shape[:2]
    batch = np.stack([image[y : y + t, x : x + t] for y, x in ((i * 256 % (H - t), i * 384 % (W - t))
                                                               for i in range(args.batch))])
    for _ in range(3):
        predict_batch(net, batch, predictor.spec, device)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.network_batches):
        predict_batch(net, batch, predictor.spec, device)
    sync()
    seconds = time.perf_counter() - t0
    record["network_mp_s"] = round(args.network_batches * batch.shape[0] * t * t / seconds / 1e6, 2)
    print("network only", record["network_mp_s"], "MP/s", flush=True)

    # post-processing only, on one block's real probabilities (block + halo)
    block_image = image[: args.block + 64, : args.block + 64]
    probs = drive(iter_probabilities(predictor, block_image, tiling))
    plan = plan_prediction(block_image, InferenceConfig(model=model, tiling=tiling, block_size=args.block))
    blocks = [b for b in plan.blocks if b.tiles]
    big = max(blocks, key=lambda b: b.box[2] * b.box[3])
    ry, rx, rh, rw = big.read
    job = (big, np.ascontiguousarray(probs[:, ry : ry + rh, rx : rx + rw]), plan.config.postprocess,
           plan.source.geometry, np.uint8, 0, False)
    px = big.box[2] * big.box[3]
    _finish(job)
    t0 = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        _finish(job)
    record["postprocess_mp_s_per_process"] = round(repeats * px / (time.perf_counter() - t0) / 1e6, 2)
    print("post-processing, one process", record["postprocess_mp_s_per_process"], "MP/s", flush=True)
    if workers > 0:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_finish, [job] * workers))  # start the workers
            n = 3 * workers
            t0 = time.perf_counter()
            list(pool.map(_finish, [job] * n))
            record["postprocess_mp_s_pool"] = round(n * px / (time.perf_counter() - t0) / 1e6, 2)
        print(f"post-processing, pool of {workers}", record["postprocess_mp_s_pool"], "MP/s", flush=True)

    # end to end
    big_image = mosaic(args.size)
    t0 = time.perf_counter()
    with GpuSampler() as sampler:
        result = predict(big_image, config, workers=workers)
    seconds = time.perf_counter() - t0
    record.update({"end_to_end_size": args.size, "end_to_end_s": round(seconds, 2),
                   "end_to_end_mp_s": round(args.size**2 / seconds / 1e6, 2), "nuclei": result.n_nuclei,
                   "gpu_utilisation": sampler.summary()})
    print("end to end", record["end_to_end_mp_s"], "MP/s", flush=True)
    print(json.dumps(record), flush=True)
    try:
        from _common import emit
    except ImportError:
        return
    emit("gpu", record)


if __name__ == "__main__":
    main()
