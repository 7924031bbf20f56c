"""(d) Time vs tissue fraction: background tiles are skipped, so time should follow the tissue, not the slide.

    python benchmarks/bench_tissue.py [--save-labels TAG]

Slides of 4096 x 4096 px at 0.25 um/px (real H&E tiles, a centred square of tissue on glass). The model is loaded
once before the timings (a batch of slides loads it once; its load time is printed on its own). With
--save-labels, the labels of each slide are saved to benchmarks/results/tissue_labels_TAG_<percent>.npy, to compare
two versions of the engine (benchmarks/compare_labels.py). Each run's process CPU seconds are printed beside its
wall seconds (on a machine shared with other work, the CPU time follows the work done more closely).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import RESULTS, default_model_name, emit
from make_slides import slide_with_tissue
from nucseg.config import InferenceConfig
from nucseg.inference.predict import predict
from nucseg.io.slides import open_slide

SIZE = 4096


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--save-labels", metavar="TAG")
    parser.add_argument("--fractions", default="0.1,0.25,0.5,1.0")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = default_model_name()
    config = InferenceConfig(model=model, device="cpu")
    from nucseg.models.build import load_network
    from nucseg.models.registry import resolve_model

    t0 = time.perf_counter()
    load_network(resolve_model(model), "cpu")
    load_s = time.perf_counter() - t0
    rows = {}
    for fraction in [float(f) for f in args.fractions.split(",")]:
        slide = open_slide(slide_with_tissue(SIZE, fraction))
        t0, c0 = time.perf_counter(), time.process_time()
        res = predict(slide, config)
        rows[str(fraction)] = {"seconds": round(time.perf_counter() - t0, 2), "nuclei": res.n_nuclei,
                               "cpu_seconds": round(time.process_time() - c0, 2)}
        print(fraction, rows[str(fraction)], flush=True)
        if args.save_labels:
            np.save(RESULTS / f"tissue_labels_{args.save_labels}_{int(fraction * 100)}.npy", np.asarray(res.labels))
    full = rows.get("1.0", {}).get("seconds")
    full_cpu = rows.get("1.0", {}).get("cpu_seconds")
    emit("tissue", {"model": model, "size": SIZE, "model_load_s": round(load_s, 2), "runs": rows,
                    "time_ratio_vs_full": {k: round(v["seconds"] / full, 3) for k, v in rows.items()} if full else None,
                    "cpu_ratio_vs_full": ({k: round(v["cpu_seconds"] / full_cpu, 3) for k, v in rows.items()}
                                          if full_cpu else None)})


if __name__ == "__main__":
    main()
