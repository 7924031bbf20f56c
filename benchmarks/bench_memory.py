"""(c) Peak memory vs slide size: an 8192^2 slide should need about what a 2048^2 one does (target <= 1.3x).

Each size runs in a fresh subprocess (peak RSS is per process) that segments the whole slide, streaming
probabilities and labels into zarr.

    python benchmarks/bench_memory.py [--stand-in] [SIZES...]

With --stand-in the network is the tests' cheap stand-in (tests/fake_models.BlobNet): the engine's own memory
(tile store, blend canvas, post-processing, outputs) in minutes of CPU instead of the real network's hour on a
loaded 2-core machine; the real network adds a fixed amount (weights, runtime arenas) to both sizes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, default_model_name, emit
from make_slides import slide_with_tissue

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(2)
from nucseg.config import InferenceConfig
if sys.argv[4] == "stand-in":
    sys.path.insert(0, sys.argv[5])
    from fake_models import BlobNet
    from nucseg.models import build
    net = BlobNet().eval()
    build.load_network = lambda spec, device="cpu", runtime="auto": net
from nucseg.inference.predict import predict
from nucseg.io.slides import open_slide
slide = open_slide(sys.argv[1])
t0 = time.perf_counter()
res = predict(slide, InferenceConfig(model=sys.argv[2], device="cpu"), out=sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t0, "nuclei": res.n_nuclei,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(size: int, model: str, stand_in: bool = False) -> dict:
    slide = slide_with_tissue(size)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, str(slide), model, str(Path(tmp) / "p.zarr"),
                              "stand-in" if stand_in else "network", str(ROOT / "tests")],
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    stand_in = "--stand-in" in sys.argv[1:]
    model = "nucseg-default" if stand_in else default_model_name()
    sizes = [int(s) for s in sys.argv[1:] if s != "--stand-in"] or [2048, 8192]
    runs = {size: run(size, model, stand_in) for size in sizes}
    small, large = runs[min(sizes)], runs[max(sizes)]
    emit("memory", {"model": "stand-in" if stand_in else model, "runs": {str(k): {kk: round(vv, 1) for kk, vv in v.items()} for k, v in runs.items()},
                    "peak_ratio_largest_vs_smallest": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
                    "pixels_ratio": (max(sizes) / min(sizes)) ** 2})


if __name__ == "__main__":
    main()
