"""Accuracy of the defaults on the benchmarks' MoNuSeg mosaics, whose truth tiles the same way as their pixels.

    python benchmarks/score_mosaics.py [--tile-size N]

Two inputs, each segmented as `nucseg predict` would (`predict`, default settings, ONNX Runtime when available):
the 2000 px mosaic of four organs of `bench_cpu_speed.py` (one block: one calibration window for four tissues) and
the 4096 px full-tissue slide of `bench_tissue.py` (`he_mosaic`, 16 blocks). The tiles are MoNuSeg training tiles,
so the scores compare settings with each other, not the model with others. One JSON line.
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_cpu_speed import MOSAIC
from PIL import Image

from _common import MONUSEG, emit
from make_slides import slide_with_tissue


def _labels(name: str) -> np.ndarray:
    return np.asarray(Image.open(MONUSEG / "labels" / f"{name}.png")).astype(np.uint32)


def _renumbered(parts: list[np.ndarray]) -> list[np.ndarray]:
    out, offset = [], 0
    for part in parts:
        ids = np.unique(part[part > 0])
        lut = np.zeros(int(part.max()) + 1, np.uint32)
        lut[ids] = np.arange(offset + 1, offset + 1 + len(ids), dtype=np.uint32)
        out.append(lut[part])
        offset += len(ids)
    return out


def four_organ_mosaic() -> tuple[np.ndarray, np.ndarray]:
    images = [np.asarray(Image.open(MONUSEG / "images" / f"{n}.png").convert("RGB")) for n in MOSAIC]
    truth = _renumbered([_labels(n) for n in MOSAIC])
    stack = lambda t: np.concatenate([np.concatenate(t[:2], 1), np.concatenate(t[2:], 1)], 0)  # noqa: E731
    return stack(images), stack(truth)


def slide_truth(size: int = 4096, seed: int = 0) -> np.ndarray:
    """The labels of `_common.he_mosaic(size, seed)`: the same draws of tiles and flips."""
    rng = np.random.default_rng(seed)
    paths = sorted((MONUSEG / "images").glob("*.png"))
    truth, offset = np.zeros((size, size), np.uint32), 0
    for y in range(0, size, 1000):
        for x in range(0, size, 1000):
            part = _labels(paths[int(rng.integers(30)) % len(paths)].stem)
            if rng.random() < 0.5:
                part = part[::-1]
            if rng.random() < 0.5:
                part = part[:, ::-1]
            h, w = min(1000, size - y), min(1000, size - x)
            (part,) = _renumbered([part[:h, :w]])
            truth[y : y + h, x : x + w] = np.where(part > 0, part + offset, 0)
            offset = int(truth.max())
    return truth


def scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from nucseg.metrics.matching import aji, match_instances

    both = np.count_nonzero((truth > 0) & (pred > 0))
    return {"aji": round(aji(truth, pred), 4), "f1": round(match_instances(truth, pred).f1, 4), "nuclei": int(pred.max()),
            "dice": round(2 * both / (np.count_nonzero(truth) + np.count_nonzero(pred)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tile-size", type=int, help="tile side (default: TilingConfig's)")
    args = parser.parse_args()
    from nucseg.config import InferenceConfig, TilingConfig
    from nucseg.inference.predict import predict
    from nucseg.io.slides import open_slide

    tiling = TilingConfig(args.tile_size) if args.tile_size else TilingConfig()
    config = InferenceConfig(device="cpu", tiling=tiling)
    image, truth = four_organ_mosaic()
    record = {"tile_size": tiling.tile_size,
              "four_organs_2000": scores(truth, np.asarray(predict(image, config, mpp=0.25).labels))}
    with open_slide(slide_with_tissue(4096, 1.0)) as slide:
        record["slide_4096"] = scores(slide_truth(), np.asarray(predict(slide, config).labels[:]))
    emit("mosaics", record)


if __name__ == "__main__":
    main()
