"""CPU post-processing throughput (what bounds a GPU run): `finish_block` on real probabilities of one 2048-px
block, in one process and spread over a pool of worker processes.

    python benchmarks/bench_postprocess.py [WORKERS] [PROBS.npy]

PROBS.npy: (n, 3, H, W) probabilities the shipped network gave for MoNuSeg tiles (e.g. saved by a validation
run); without it, the first four MoNuSeg training tiles are predicted first (minutes on a CPU). Four tiles are
mirrored into a 2112 x 2112 map (a 2048-px block and its halo).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
import time

import numpy as np

from _common import emit, he_tile

BLOCK = 2048


def block_probabilities(path: str | None) -> np.ndarray:
    if path:
        tiles = np.load(path)[:4]
    else:
        from nucseg.config import InferenceConfig
        from nucseg.inference.predict import iter_probabilities, load_predictor
        from nucseg.progress import drive

        predictor = load_predictor(InferenceConfig(device="cpu"))
        tiles = []
        for k in range(4):
            tiles.append(drive(iter_probabilities(predictor, he_tile(k), InferenceConfig().tiling)))
        tiles = np.stack(tiles)
    top = np.concatenate([tiles[0], tiles[1][:, :, ::-1]], axis=2)
    bottom = np.concatenate([tiles[2][:, ::-1], tiles[3][:, ::-1, ::-1]], axis=2)
    probs = np.concatenate([top, bottom], axis=1)
    probs = np.pad(probs, ((0, 0), (0, BLOCK + 64 - probs.shape[1]), (0, BLOCK + 64 - probs.shape[2])), mode="reflect")
    return np.ascontiguousarray(probs, dtype=np.float32)


def job(probs: np.ndarray):
    from nucseg.config import PostprocessConfig
    from nucseg.inference.plan import BlockPlan
    from nucseg.inference.source import LevelGeometry
    from nucseg.inference.tiling import Tile
    from nucseg.models.registry import resolve_model

    shape = probs.shape[1:]
    block = BlockPlan(0, (0, 0, BLOCK, BLOCK), (0, 0, *shape), (Tile(0, 0, *shape),))
    post = PostprocessConfig().resolved(resolve_model("nucseg-default").postprocess_defaults)
    return block, probs, post, LevelGeometry((0, 0, *shape), 1.0), np.uint8, 0, False


def finish(args):
    from nucseg.inference.blocks import finish_block

    return finish_block(*args).n


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    args = job(block_probabilities(sys.argv[2] if len(sys.argv) > 2 else None))
    px = BLOCK * BLOCK
    finish(args)
    t0 = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        nuclei = finish(args)
    per_process = repeats * px / (time.perf_counter() - t0) / 1e6
    print(f"one process: {per_process:.2f} MP/s ({nuclei} nuclei per block)", flush=True)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(finish, [args] * workers))
        n = 3 * workers
        t0 = time.perf_counter()
        list(pool.map(finish, [args] * n))
        pooled = n * px / (time.perf_counter() - t0) / 1e6
    print(f"pool of {workers}: {pooled:.2f} MP/s", flush=True)
    emit("postprocess", {"block": BLOCK, "workers": workers, "mp_s_one_process": round(per_process, 2),
                         "mp_s_pool": round(pooled, 2), "nuclei_per_block": nuclei})


if __name__ == "__main__":
    main()
