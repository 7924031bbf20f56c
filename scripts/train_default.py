"""Train the shipped default model from random initialisation on MoNuSeg 2018 (reproducible, resumable).

    python scripts/train_default.py train [--run NAME]   # runs (or resumes) ~/.nucseg/train/NAME
    python scripts/train_default.py export [--run NAME | --run-dir DIR]
                                              # tunes post-processing on the validation tiles and writes
                                              # src/nucseg/models/weights/nucseg-v2 (fp16 safetensors);
                                              # DIR: a run of scripts/train_accelerated.py (GPU, time budget)
    python scripts/train_default.py replay    # writes the replay set (training-tile crops) fine-tuning rehearses
    python scripts/train_default.py constant-se --base MODEL --run NAME
                                              # MODEL with its squeeze-excitation gates frozen to their mean over
                                              # training patches: a model folder ~/.nucseg/train/NAME to train on

Five tiles, one per organ group and one of them breast, never enter training; they choose the best epoch
and the post-processing thresholds, and their scores go into the model's config.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg-train"
# outside the work tree: a later session gets a fresh checkout but may keep this machine, and the run resumes
TRAIN_ROOT = Path(os.environ.get("NUCSEG_TRAIN_DIR", Path.home() / ".nucseg" / "train"))
SHIPPED = ROOT / "src" / "nucseg" / "models" / "weights" / "nucseg-v2"  # version 2, the default until version 3

#: validation tiles, never trained on but they choose the step and thresholds (so not a held-out test): breast,
#: kidney, liver, prostate, bladder (organ groups of the MoNuSeg training set)
VALIDATION = ["TCGA-E2-A14V-01Z-00-DX1", "TCGA-B0-5710-01Z-00-DX1", "TCGA-21-5786-01Z-00-DX1",
              "TCGA-G9-6362-01Z-00-DX1", "TCGA-DK-A2I6-01A-01-TS1"]

# settings of a new run; a run that resumes keeps its own (the shipped v1 is run "default", EfficientNet-B0)
CONFIG = dict(
    base_model="unet-mobilenet_v2", epochs=400, steps_per_epoch=50, learning_rate=1e-3, batch_size=8,
    patch_size=256, loss="focal+jaccard", augmentations=("flips", "rot90", "stain", "color", "scale", "blur"),
    early_stopping_patience=0, plateau_patience=3, seed=2018, device="auto",
    mix_original=0.0,  # the training tiles themselves are the original data
)


def run_config(args) -> dict:
    """CONFIG with the command line's choices, or the settings a run was started with when it resumes."""
    from nucseg.config import read_config_json

    saved = TRAIN_ROOT / args.run / "finetune_config.json"
    if saved.is_file():
        return {**read_config_json(saved), "epochs": args.epochs}
    chosen = {"base_model": args.base, "learning_rate": args.lr, "seed": args.seed}
    return {**CONFIG, "epochs": args.epochs, **{k: v for k, v in chosen.items() if v is not None}}


def load_split():
    from PIL import Image

    from nucseg.training.dataset import TrainingPair

    # the MoNuSeg folder is known pairs of PNGs (images also lossless WebP, smaller to carry to a GPU machine):
    # read them directly so training does not wait on anything else
    pairs = [TrainingPair(np.asarray(Image.open(p).convert("RGB")),
                          np.asarray(Image.open(DATA / "labels" / f"{p.stem}.png")).astype(np.uint32), p.stem, str(p))
             for p in sorted((DATA / "images").iterdir()) if p.suffix in (".png", ".webp")]
    val = [p for p in pairs if p.name in VALIDATION]
    train = [p for p in pairs if p.name not in VALIDATION]
    assert len(val) == len(VALIDATION), "validation tiles missing from the data folder"
    return train, val


def train(args) -> None:
    from nucseg.config import FinetuneConfig
    from nucseg.progress import drive
    from nucseg.training.finetune import iter_finetune

    torch.set_num_threads(args.threads)
    train_pairs, val_pairs = load_split()
    config = FinetuneConfig(**run_config(args))
    run = TRAIN_ROOT / args.run
    gen = iter_finetune(train_pairs, val_pairs, config, run, resume=run.exists(),
                        info={"description": "default nuclei model"})

    def show(record) -> None:  # every record but the training steps, as a JSON line
        if record.kind != "progress":
            facts = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.info.items()}
            print(json.dumps({"kind": record.kind, "stage": record.stage, **facts}), flush=True)

    drive(gen, show)


def tune_postprocess(probs, val, current: dict):
    """The post-processing thresholds with the best mean AJI on the validation tiles (grid around `current`, the
    model's own thresholds, which are kept unless another setting beats them by MIN_GAIN: five tiles cannot
    justify changing what users get for noise)."""
    from nucseg.config import PostprocessConfig
    from nucseg.training import postprocess_tuning

    start = PostprocessConfig(**current) if current else PostprocessConfig(0.5, 0.4, 40, 15)
    result = postprocess_tuning.tune_postprocess(probs, [p.labels for p in val], start,
                                                 min_gain=postprocess_tuning.MIN_GAIN if current else 0.0)
    print(f"  post-processing: {json.dumps(result.to_dict())}", flush=True)
    return result.config


def export(args) -> None:
    from safetensors.torch import load_file

    from nucseg.inference.postprocess import probabilities_to_instances
    from nucseg.inference.predict import predict_probabilities
    from nucseg.metrics.report import evaluate_many
    from nucseg.models.build import build_network, load_weights, save_model
    from nucseg.models.device import select_device
    from nucseg.models.registry import resolve_model
    from nucseg.training.validation import VALIDATION_TILING

    torch.set_num_threads(args.threads)
    _, val = load_split()
    if args.model:  # a model folder as it is (e.g. written by constant-se), not a run's best epoch
        base = resolve_model(args.model)
        net = build_network(base)
        load_weights(net, base)
        training = {**base.info.get("training", {}), "lineage": base.info.get("lineage")}
    else:  # a run folder of `train` (epochs, checkpoints/) or of scripts/train_accelerated.py (steps, run.json)
        run = args.run_dir or TRAIN_ROOT / args.run
        config = json.loads((run / "finetune_config.json").read_text())
        base = resolve_model(config["base_model"])
        net = build_network(base)
        net.load_state_dict(load_file(str(run / "best.safetensors")))  # fp16 files are cast to the net's fp32
        if (run / "run.json").is_file():
            state = json.loads((run / "run.json").read_text())
            progress = {"steps_run": state["steps_run"], "best_step": state["best_step"]}
        else:
            progress = {"epochs_run": json.loads((run / "checkpoints" / "latest.json").read_text())["epoch"]}
        training = {"data": "MoNuSeg 2018 training set (Kumar et al. 2017/2019), CC BY-NC-SA 4.0",
                    "train_tiles": 30 - len(VALIDATION), "validation_tiles": VALIDATION,
                    "config": config, **progress,
                    "log_tail": (run / "log.csv").read_text().splitlines()[-3:],
                    "script": config.get("script", "scripts/train_default.py"), "base": base.info.get("training"),
                    "lineage": base.info.get("lineage")}
    net.eval()
    device = select_device("cpu")
    results = {}
    post = None
    if args.postprocess:  # chosen with other evidence than the validation tiles (e.g. benchmarks/bench_domains.py)
        from nucseg.config import PostprocessConfig

        fg, marker, area, marker_area = args.postprocess.split(",")
        post = PostprocessConfig(float(fg), float(marker), int(area), int(marker_area))
    for tta in (False, True):
        t0 = time.perf_counter()
        with torch.inference_mode():
            probs = [predict_probabilities(net, p.image, base, device, VALIDATION_TILING, tta=tta) for p in val]
        seconds = time.perf_counter() - t0
        if post is None:
            post = tune_postprocess(probs, val, base.postprocess_defaults)
        rows, summary = evaluate_many([(p.name, p.labels, probabilities_to_instances(pr, post), pr[0])
                                       for pr, p in zip(probs, val)])
        results["tta" if tta else "plain"] = {
            "mean_over_tiles": {k: round(float(v), 4) for k, v in summary.items() if isinstance(v, (int, float))},
            "pooled": {k: round(float(v), 4) for k, v in summary["pooled"].items()},
            "per_tile": {r["image"]: {k: round(float(r[k]), 4) for k in ("aji", "dice", "f1", "pq")} for r in rows},
            "seconds": round(seconds, 1)}
        print(("TTA " if tta else "plain ") + json.dumps(results["tta" if tta else "plain"]), flush=True)
    dest = args.dest or SHIPPED
    if dest.exists():
        if not args.replace:
            sys.exit(f"{dest} exists; pass --replace to ship a better model (git keeps the old one)")
        shutil.rmtree(dest)
    info = {
        "name": "nucseg-v2",
        "version": args.version,
        "description": f"UNet ({base.encoder} encoder) for H&E nuclei at 40x (0.25 um/px): foreground, contour and "
                       "distance heads with marker-controlled watershed; trained from scratch on MoNuSeg 2018",
        "training": {k: v for k, v in training.items() if v is not None},
        "postprocess": post.to_dict(),
        "validation": results,
        "license": "weights: CC BY-NC-SA 4.0 (trained on MoNuSeg data)",
    }
    save_model(net, base, dest, info=info, half=True)
    print(f"wrote {dest}", flush=True)
    replay(args)


#: training patches whose mean squeeze-excitation gates become the constant ones (batches of 4, 256 px)
GATE_BATCHES = 64


def constant_se(args) -> None:
    """Freeze the gates of `--base` (the shipped v1 by default) into a new model folder TRAIN_ROOT/<run>."""
    import dataclasses

    from nucseg.inference.forward import to_input_tensor
    from nucseg.models.build import build_network, load_weights, save_model
    from nucseg.models.registry import resolve_model
    from nucseg.models.squeeze_excitation import freeze_gates, mean_gates

    torch.set_num_threads(args.threads)
    base = resolve_model(args.base or "nucseg-default")
    net = build_network(base)
    load_weights(net, base)
    train_pairs, _ = load_split()
    rng = np.random.default_rng(2020)
    side = CONFIG["patch_size"]

    def batches():
        for _ in range(GATE_BATCHES):
            crops = []
            for _ in range(4):
                pair = train_pairs[int(rng.integers(len(train_pairs)))]
                y, x = (int(rng.integers(0, n - side + 1)) for n in pair.labels.shape)
                crops.append(pair.image[y : y + side, x : x + side])
            yield to_input_tensor(np.stack(crops), base, torch.device("cpu"))

    freeze_gates(net, mean_gates(net, batches()))
    spec = dataclasses.replace(base, squeeze_excitation="constant",
                               info={"postprocess": base.postprocess_defaults, "training": base.info.get("training")})
    lineage = {"from": f"{base.name} version {base.info.get('version', '?')}",
               "squeeze_excitation": f"gates frozen to their mean over {GATE_BATCHES * 4} training patches of "
                                     f"{side} px (scripts/train_default.py constant-se)"}
    out = save_model(net, spec, TRAIN_ROOT / args.run, info={"lineage": lineage})
    print(f"wrote {out.folder}; train on with: train --run NEW --base {out.folder}", flush=True)


#: rehearsal sample shipped with the model: crops per training tile and their side
REPLAY_CROPS, REPLAY_SIDE = 2, 320


def replay(args) -> None:
    """Write the replay set (random crops of the training tiles) into the shipped model folder.

    Fine-tuning mixes it into every batch so a model tuned on a lab's corrections keeps what it learned here.
    Images are JPEG (quality 90) to stay small; labels are 16-bit PNG instance labels.
    """
    from PIL import Image

    from nucseg.models.registry import REPLAY_DIR

    dest = args.dest or SHIPPED
    out = dest / REPLAY_DIR
    if out.exists():
        sys.exit(f"{out} exists; remove it first to write a new replay set")
    train_pairs, _ = load_split()
    rng = np.random.default_rng(2018)
    tmp = dest / f".{REPLAY_DIR}.tmp"
    for sub in ("images", "labels"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    for pair in train_pairs:
        h, w = pair.labels.shape
        for _ in range(REPLAY_CROPS):
            y, x = int(rng.integers(0, h - REPLAY_SIDE + 1)), int(rng.integers(0, w - REPLAY_SIDE + 1))
            crop = np.s_[y : y + REPLAY_SIDE, x : x + REPLAY_SIDE]
            name = f"{pair.name}_{y}_{x}"
            Image.fromarray(pair.image[crop]).save(tmp / "images" / f"{name}.jpg", quality=90)
            Image.fromarray(pair.labels[crop].astype(np.uint16)).save(tmp / "labels" / f"{name}.png")
    (tmp / "README.md").write_text(
        "# Replay set\n\nRandom crops of the MoNuSeg 2018 training tiles this model was trained on (Kumar et al. "
        "2017, 2019; CC BY-NC-SA 4.0), written by `scripts/train_default.py replay`. Fine-tuning mixes them into "
        "every batch (`mix_original`) so a model tuned on a lab's corrections does not forget the original data.\n")
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {len(train_pairs) * REPLAY_CROPS} crops to {out} ({size / 1e6:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["train", "export", "replay", "constant-se"])
    parser.add_argument("--epochs", type=int, default=CONFIG["epochs"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--replace", action="store_true")
    parser.add_argument("--version", default="1")
    parser.add_argument("--base", help="architecture to train, or a trained model to go on from (default: CONFIG's)")
    parser.add_argument("--lr", type=float, help="learning rate of a new run (default: CONFIG's)")
    parser.add_argument("--seed", type=int, help="seed of a new run (default: CONFIG's)")
    parser.add_argument("--model", help="export: this model folder instead of a run's best epoch")
    parser.add_argument("--run", default="default", help="run folder under $NUCSEG_TRAIN_DIR (~/.nucseg/train)")
    parser.add_argument("--run-dir", type=Path, help="export: this run folder instead of --run's")
    parser.add_argument("--postprocess", metavar="FG,MARKER,AREA,MARKER_AREA",
                        help="export: these watershed thresholds instead of tuning them on the validation tiles")
    parser.add_argument("--dest", type=Path, help="export / replay: write the model here instead of shipping it")
    args = parser.parse_args()
    {"train": train, "export": export, "replay": replay, "constant-se": constant_se}[args.action](args)


if __name__ == "__main__":
    main()
