"""Tile-size invariance through the CLI: `nucseg predict --tile-size 256 --overlap 64` against
`--tile-size 1024 --overlap 0` on 1000 x 1000 MoNuSeg training tiles: object F1 (IoU >= 0.5) and pixel Dice.

    python benchmarks/bench_tile_invariance.py [N_TILES]      (default 1: the first tile)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import tifffile
from compare_labels import agreement

from _common import MONUSEG, ROOT, emit

RUNS = {"256/64": ["--tile-size", "256", "--overlap", "64"], "1024/0": ["--tile-size", "1024", "--overlap", "0"]}


def cli_labels(image: Path, out: Path, args: list[str]):
    subprocess.run([sys.executable, "-c", "import sys; from nucseg.cli import main; sys.exit(main(sys.argv[1:]))",
                    "predict", str(image), "--out", str(out), "--device", "cpu",
                    "--format", "tif", "--quiet", *args], check=True, cwd=ROOT)
    return tifffile.imread(out / f"{image.name.split('.')[0]}_labels.tif")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    rows = {}
    for image in sorted((MONUSEG / "images").glob("*.png"))[:n]:
        with tempfile.TemporaryDirectory() as tmp:
            labels = {name: cli_labels(image, Path(tmp) / name.replace("/", "_"), args) for name, args in RUNS.items()}
        rows[image.stem] = agreement(labels["1024/0"], labels["256/64"])
        print(image.stem, rows[image.stem], flush=True)
    emit("tile_invariance", {"runs": rows})


if __name__ == "__main__":
    main()
