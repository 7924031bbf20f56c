"""(c) Peak memory vs slide size: an 8192^2 slide should need about what a 2048^2 one does (target <= 1.3x).

Each size runs in a fresh subprocess (peak RSS is per process) that segments the whole slide, streaming
probabilities and labels into zarr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import default_model_name, emit
from make_slides import slide_with_tissue

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(2)
from nucseg.config import InferenceConfig
from nucseg.inference.predict import predict
from nucseg.io.slides import open_slide
slide = open_slide(sys.argv[1])
t0 = time.perf_counter()
res = predict(slide, InferenceConfig(model=sys.argv[2], device="cpu"), out=sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t0, "nuclei": res.n_nuclei,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(size: int, model: str) -> dict:
    slide = slide_with_tissue(size)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, str(slide), model, str(Path(tmp) / "p.zarr")],
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    model = default_model_name()
    sizes = [int(s) for s in sys.argv[1:]] or [2048, 8192]
    runs = {size: run(size, model) for size in sizes}
    small, large = runs[min(sizes)], runs[max(sizes)]
    emit("memory", {"model": model, "runs": {str(k): {kk: round(vv, 1) for kk, vv in v.items()} for k, v in runs.items()},
                    "peak_ratio_largest_vs_smallest": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
                    "pixels_ratio": (max(sizes) / min(sizes)) ** 2})


if __name__ == "__main__":
    main()
