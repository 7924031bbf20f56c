"""Where nucleus area goes: predicted vs annotated area, and the network's foreground probability on the
annotated nuclei's border pixels, with the fixed 0.5 cut and with Otsu's cut, from one network pass per tile.

    python benchmarks/bench_boundary.py [--tnbc-every K] [--skip-dsb]

Sources: the five MoNuSeg validation tiles (they chose the training step and thresholds: not held out), TNBC
(never trained on, chose nothing; every K-th of its 50 tiles, default 1) and the DSB 2018 colour tiles by kind
(never trained on). Per source: mean AJI / Dice / object F1, the median over tiles of the median matched
pred/truth area ratio, and the median foreground probability on the truth's inner border, interior and outer ring.
One JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from bench_finetune import DSB, colour_tiles, stain_kind

from _common import MONUSEG, ROOT, emit

TNBC = ROOT.parent / "shared" / "data" / "tnbc"


def tile_scores(image_path: Path, label_path: Path, mpp: float | None) -> dict[str, dict[str, float]]:
    from skimage.segmentation import find_boundaries

    from nucseg.config import InferenceConfig, PostprocessConfig
    from nucseg.inference.postprocess import foreground_cut, probabilities_to_instances
    from nucseg.inference.predict import predict
    from nucseg.io.masks import read_labels
    from nucseg.io.slides import read_image
    from nucseg.metrics.matching import aji, match_instances

    truth = read_labels(label_path)
    prob = predict(read_image(image_path), InferenceConfig(device="cpu"), mpp=mpp).probabilities
    fg = prob[0].astype(np.float32) / (255.0 if prob.dtype == np.uint8 else 1.0)
    inner = find_boundaries(truth, mode="inner") & (truth > 0)
    outer = find_boundaries(truth, mode="outer") & (truth == 0)
    out: dict[str, dict[str, float]] = {"probability": {
        "border": float(np.median(fg[inner])), "interior": float(np.median(fg[(truth > 0) & ~inner])),
        "outer_ring": float(np.median(fg[outer]))}}
    for method in ("fixed", "otsu"):
        config = PostprocessConfig(foreground_threshold=0.5, marker_threshold=0.4, min_area=40, min_marker_area=15,
                                   foreground_method=method)
        inst = probabilities_to_instances(prob, config)
        match = match_instances(truth, inst)
        at, ap = np.bincount(truth.ravel()), np.bincount(inst.ravel(), minlength=1)
        t_ids, p_ids = match.pairs[:, 0], match.pairs[:, 1]
        both = np.count_nonzero((truth > 0) & (inst > 0))
        out[method] = {
            "aji": aji(truth, inst), "f1": match.f1,
            "dice": float(2 * both) / max(np.count_nonzero(truth) + np.count_nonzero(inst), 1),
            "area_ratio": float(np.median(ap[p_ids] / at[t_ids])) if len(t_ids) else float("nan"),
            "cut": foreground_cut(fg, config)}
    return out


def summarise(rows: list[dict]) -> dict:
    summary = {"tiles": len(rows), "probability": {k: round(statistics.median(r["probability"][k] for r in rows), 3)
                                                   for k in ("border", "interior", "outer_ring")}}
    for method in ("fixed", "otsu"):
        summary[method] = {k: round(statistics.mean(r[method][k] for r in rows), 4) for k in ("aji", "dice", "f1")}
        summary[method]["area_ratio"] = round(statistics.median(r[method]["area_ratio"] for r in rows), 3)
        summary[method]["cut"] = round(statistics.median(r[method]["cut"] for r in rows), 3)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tnbc-every", type=int, default=1, help="score every K-th TNBC tile (default all 50)")
    parser.add_argument("--skip-dsb", action="store_true")
    args = parser.parse_args()
    if not MONUSEG.is_dir():
        raise SystemExit(f"needs ../shared/data (MoNuSeg training tiles in {MONUSEG})")
    from train_default import VALIDATION  # bench_finetune put scripts/ on the path

    sources: dict[str, list[tuple[Path, Path, float | None]]] = {
        "monuseg_validation": [(MONUSEG / "images" / f"{n}.png", MONUSEG / "labels" / f"{n}.png", 0.25)
                               for n in VALIDATION]}
    if TNBC.is_dir():
        images = sorted((TNBC / "images").glob("*.png"))[:: args.tnbc_every]
        sources["tnbc"] = [(p, TNBC / "labels" / p.name, 0.25) for p in images]
    if DSB.is_dir() and not args.skip_dsb:
        for tile in colour_tiles():
            sources.setdefault(f"dsb_{stain_kind(tile)}", []).append(
                (DSB / "images" / f"{tile}.png", DSB / "labels" / f"{tile}.png", None))
    result = {}
    for name, items in sources.items():
        result[name] = summarise([tile_scores(*item) for item in items])
        print(name, result[name], file=sys.stderr, flush=True)
    emit("boundary", result)


if __name__ == "__main__":
    main()
