"""Models side by side on every validation set we hold: the table that decides whether a new default ships.

    python benchmarks/bench_models.py nucseg-v2 nucseg-v3 [--markdown]

Sets (all at the engine's defaults, as `nucseg predict` runs them, each model with its own post-processing):
- MoNuSeg validation: the 5 tiles scripts/train_default.py keeps out of training (0.25 um/px);
- MoNuSeg validation at 20x: the same tiles shrunk 2x and told 0.5 um/px (the engine enlarges them back), the
  slide-at-20x case;
- TNBC validation patients: scripts/train_v3.py's TNBC_VALIDATION (never trained on; 0.25 um/px). TNBC masks are
  binary, so touching nuclei are one truth object there: F1 / PQ understate every model alike;
- DSB 2018 colour tiles by kind (smears, purple sections, pink H&E; magnification unknown, run at their own pixels).
None of these is a held-out test: the MoNuSeg and TNBC validation sets choose the training step.
Mean over images of AJI, pixel Dice, object F1 and PQ (IoU >= 0.5), and for TNBC the median over tiles of the
median predicted / annotated area of matched nuclei (benchmarks/bench_boundary.py's "area ratio").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _common import MONUSEG, ROOT, emit

sys.path.insert(0, str(ROOT / "scripts"))
TNBC = ROOT.parent / "shared" / "data" / "tnbc"


def sets() -> dict[str, tuple[list[tuple[Path, Path]], float | None, int]]:
    """name -> (image / label pairs, mpp told to the engine, downscale factor applied to the image first)."""
    from bench_finetune import DSB, colour_tiles, stain_kind
    from train_default import VALIDATION
    from train_v3 import TNBC_VALIDATION

    monuseg = [(MONUSEG / "images" / f"{n}.png", MONUSEG / "labels" / f"{n}.png") for n in VALIDATION]
    out = {"monuseg_val": (monuseg, 0.25, 1), "monuseg_val_20x": (monuseg, 0.5, 2)}
    out["tnbc_val"] = ([(p, TNBC / "labels" / p.name) for p in sorted((TNBC / "images").glob("*.png"))
                        if p.stem.split("_")[1] in TNBC_VALIDATION], 0.25, 1)
    kinds: dict[str, list] = {}
    for tile in colour_tiles():
        kinds.setdefault(stain_kind(tile), []).append((DSB / "images" / f"{tile}.png", DSB / "labels" / f"{tile}.png"))
    for kind, pairs in sorted(kinds.items()):
        out[f"dsb_{kind}"] = (pairs, None, 1)
    return out


def shrink(image: np.ndarray, factor: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w // factor, h // factor), Image.Resampling.BILINEAR))


def area_ratio(truth: np.ndarray, pred: np.ndarray, match) -> float:
    if not match.tp:
        return float("nan")
    t_area = np.bincount(truth.ravel())
    p_area = np.bincount(pred.ravel())
    return float(np.median(p_area[match.pairs[:, 1]] / t_area[match.pairs[:, 0]]))


def score_set(model: str, pairs, mpp, factor) -> dict[str, float]:
    from nucseg.config import InferenceConfig, PostprocessConfig, TilingConfig
    from nucseg.inference.predict import predict
    from nucseg.io.masks import read_labels
    from nucseg.io.slides import read_image
    from nucseg.metrics.matching import match_instances
    from nucseg.metrics.pixel import confusion_counts
    from nucseg.models.registry import resolve_model

    spec = resolve_model(model)
    cfg = InferenceConfig(model=model, device="cpu", tiling=TilingConfig(512, 64, 2),
                          postprocess=PostprocessConfig(**spec.postprocess_defaults))
    rows = []
    for image_path, labels_path in pairs:
        truth = read_labels(labels_path)
        image = read_image(image_path)
        if factor != 1:
            image = shrink(np.asarray(image), factor)
        pred = predict(image, cfg, mpp=mpp).labels
        if pred.shape != truth.shape:  # the 20x case: labels come back at the image's (shrunk) size
            from nucseg.training.dataset import _rescale_nearest

            pred = _rescale_nearest(pred, truth.shape)
        m = match_instances(truth, pred, 0.5)
        rows.append((m.aji, confusion_counts(truth, pred).dice, m.f1, m.pq, area_ratio(truth, pred, m)))
    a = np.array(rows)
    return {"aji": float(a[:, 0].mean()), "dice": float(a[:, 1].mean()), "f1": float(a[:, 2].mean()),
            "pq": float(a[:, 3].mean()), "area_ratio": float(np.nanmedian(a[:, 4])), "n": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--sets", nargs="*", help="only these sets")
    parser.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    args = parser.parse_args()
    chosen = {k: v for k, v in sets().items() if not args.sets or k in args.sets}
    result: dict[str, dict] = {}
    for model in args.models:
        result[model] = {}
        for name, (pairs, mpp, factor) in chosen.items():
            result[model][name] = s = score_set(model, pairs, mpp, factor)
            print(f"{model} {name} ({s['n']}): AJI {s['aji']:.3f} Dice {s['dice']:.3f} F1 {s['f1']:.3f} "
                  f"PQ {s['pq']:.3f} area {s['area_ratio']:.2f}", file=sys.stderr, flush=True)
    if args.markdown:
        print("| set | images | " + " | ".join(f"{m} AJI / Dice / F1 / PQ" for m in args.models) + " |")
        print("|---|---|" + "---|" * len(args.models))
        for name in chosen:
            cells = [" / ".join(f"{result[m][name][k]:.3f}" for k in ("aji", "dice", "f1", "pq")) for m in args.models]
            print(f"| {name} | {result[args.models[0]][name]['n']} | " + " | ".join(cells) + " |")
    emit("models", result)


if __name__ == "__main__":
    main()
