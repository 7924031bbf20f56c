"""Network passes (tiles + gate measurements) per slide of benchmarks/bench_tissue.py: what the time follows.

    python benchmarks/bench_tissue_passes.py

A deterministic count, free of a shared machine's noise: the network is replaced by a cheap stand-in that
counts the tiles (and their pixels: the last tiles of the grid stop where the tissue ends) of every batch and every
gate measurement (one encoder pass over at most 16 windows of 256 px per image since the gates became the
image's; one full pass of a 512 px window per block before).
"""

from __future__ import annotations

import sys

from _common import ROOT, emit
from make_slides import slide_with_tissue

sys.path.insert(0, str(ROOT / "tests"))
SIZE = 4096


def main() -> None:
    from fake_models import BlobNet
    from nucseg.config import InferenceConfig
    from nucseg.inference import forward
    from nucseg.inference import tile_store as loop
    from nucseg.io.slides import open_slide
    from nucseg.models import build

    counts = {"tiles": 0, "calibrations": 0, "tile_mp": 0.0}
    net = BlobNet().eval()
    build.load_network = lambda spec, device="cpu", runtime="auto": net

    def gates(net, *args):
        counts["calibrations"] += 1
        return net

    def batch(net, tiles, spec, device, tta=False):
        counts["tiles"] += len(tiles)
        counts["tile_mp"] += len(tiles) * tiles.shape[1] * tiles.shape[2] / 1e6  # the last tiles may be shorter
        return forward.predict_batch(net, tiles, spec, device, tta=tta)

    loop.image_network, loop.predict_batch = gates, batch
    from nucseg.inference.predict import predict

    rows = {}
    for fraction in (0.1, 0.25, 0.5, 1.0):
        counts.update(tiles=0, calibrations=0, tile_mp=0.0)
        with open_slide(slide_with_tissue(SIZE, fraction)) as slide:
            predict(slide, InferenceConfig(model="nucseg-default", device="cpu"))
        rows[str(fraction)] = {**counts, "tile_mp": round(counts["tile_mp"], 2),
                               "passes": counts["tiles"] + counts["calibrations"]}
        print(fraction, rows[str(fraction)], flush=True)
    full, full_mp = rows["1.0"]["passes"], rows["1.0"]["tile_mp"]
    emit("tissue_passes", {"size": SIZE, "engine": loop.__name__, "runs": rows,
                           "passes_ratio_vs_full": {k: round(v["passes"] / full, 3) for k, v in rows.items()},
                           "tile_pixels_ratio_vs_full": {k: round(v["tile_mp"] / full_mp, 3) for k, v in rows.items()}})


if __name__ == "__main__":
    main()
