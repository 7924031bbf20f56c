"""Accuracy out of the training domain: models scored on the DSB 2018 colour tiles they never saw, by kind.

    python benchmarks/bench_domains.py [MODEL ...]     # default: nucseg-default

The kinds are bench_finetune's (cell smears 37, purple tissue sections 66, pink H&E 4; 256 x 320 px, magnification
unknown, so the model runs at the pixels' own size), plus the five MoNuSeg validation tiles at 0.25 um/px. A new
default model must not buy its MoNuSeg gain with a loss on these. Mean AJI and Dice per kind, one JSON line.
"""

from __future__ import annotations

import argparse
import sys

from bench_finetune import DSB, colour_tiles, score, stain_kind

from _common import MONUSEG, emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=["nucseg-default"])
    args = parser.parse_args()
    if not DSB.is_dir():
        raise SystemExit(f"needs the DSB 2018 tiles in {DSB}")
    from train_default import VALIDATION  # bench_finetune put scripts/ on the path

    kinds: dict[str, list] = {}
    for tile in colour_tiles():
        kinds.setdefault(stain_kind(tile), []).append((DSB / "images" / f"{tile}.png", DSB / "labels" / f"{tile}.png"))
    monuseg = [(MONUSEG / "images" / f"{n}.png", MONUSEG / "labels" / f"{n}.png") for n in VALIDATION]
    result = {}
    for model in args.models:
        scores = {kind: score(model, pairs, None) for kind, pairs in sorted(kinds.items())}
        scores["monuseg_val"] = score(model, monuseg, 0.25)
        result[model] = scores
        print(model + ": " + ", ".join(f"{k} AJI {v['aji']:.3f} Dice {v['dice']:.3f} ({v['n']})"
                                       for k, v in scores.items()), file=sys.stderr, flush=True)
    emit("domains", result)


if __name__ == "__main__":
    main()
