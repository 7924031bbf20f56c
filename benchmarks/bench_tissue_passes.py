"""Network passes (tiles + calibration passes) per slide of benchmarks/bench_tissue.py: what the time follows.

    python benchmarks/bench_tissue_passes.py

A deterministic count, free of a shared machine's noise: the network is replaced by a cheap stand-in that
counts the tiles of every batch and every calibration pass (and, like a network with squeeze-excitation gates,
lets a tile that is the calibration window reuse that pass). Works on this engine and on the one before the tile
store (commit 79cb8f5: nucseg.inference.predict held the loop), for a side-by-side count.
"""

from __future__ import annotations

import sys

import numpy as np

from _common import ROOT, emit
from make_slides import slide_with_tissue

sys.path.insert(0, str(ROOT / "tests"))
SIZE = 4096


def main() -> None:
    from fake_models import BlobNet
    from nucseg.config import InferenceConfig
    from nucseg.inference import forward
    from nucseg.io.slides import open_slide
    from nucseg.models import build

    try:
        from nucseg.inference import tile_store as loop  # this engine
    except ImportError:
        from nucseg.inference import predict as loop  # the engine before it
    counts = {"tiles": 0, "calibrations": 0}
    net = BlobNet().eval()
    build.load_network = lambda spec, device="cpu": net

    def gates(net, window, spec, device):
        counts["calibrations"] += 1
        return net, forward.predict_batch(net, np.ascontiguousarray(window)[None], spec, device)[0]

    def batch(net, tiles, spec, device, tta=False):
        counts["tiles"] += len(tiles)
        return forward.predict_batch(net, tiles, spec, device, tta=tta)

    loop.with_image_gates, loop.predict_batch = gates, batch
    from nucseg.inference.predict import predict

    rows = {}
    for fraction in (0.1, 0.25, 0.5, 1.0):
        counts.update(tiles=0, calibrations=0)
        with open_slide(slide_with_tissue(SIZE, fraction)) as slide:
            predict(slide, InferenceConfig(model="nucseg-default", device="cpu"))
        rows[str(fraction)] = {**counts, "passes": counts["tiles"] + counts["calibrations"]}
        print(fraction, rows[str(fraction)], flush=True)
    full = rows["1.0"]["passes"]
    emit("tissue_passes", {"size": SIZE, "engine": loop.__name__, "runs": rows,
                           "passes_ratio_vs_full": {k: round(v["passes"] / full, 3) for k, v in rows.items()}})


if __name__ == "__main__":
    main()
