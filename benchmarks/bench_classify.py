"""Nucleus classification from a few clicks: accuracy and per-class F1 against clicks per class, on other tiles.

Labels: benchmarks/data/classes.csv (our own, made by benchmarks/make_class_labels.py and checked by eye: NOT a
public benchmark). The nuclei are the tiles' truth outlines (as ``nucseg classify train --labels``). Tiles are
split in two folds by patient (TNBC) or tile (MoNuSeg, one patient each); for each number of clicks per class,
clicks are drawn (seeded) from one fold, the classifier is trained on them and scored on every labelled nucleus of
the other fold, both ways, `REPEATS` draws each. Also: which feature groups help (at 20 clicks per class), the
network's own encoder features pooled at each nucleus (``--encoder``), and the two learners.

    python benchmarks/bench_classify.py [--encoder] [--repeats 5] [--cache /tmp/classify_features.npz]

Prints markdown tables and one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "benchmarks" / "data" / "classes.csv"
CLICKS = (5, 10, 20, 50)
#: the features benchmarks/make_class_labels.py's rules proposed the labels by (so scores on them are circular)
RULE_FEATURES = ("area_um2", "eccentricity", "solidity", "brightness", "h_cv", "near_25um", "minor_axis_um",
                 "near_12um")
MPP = 0.25


def load_points() -> dict[Path, list[tuple[float, float, str, int]]]:
    by_tile: dict[Path, list] = {}
    with open(LABELS, newline="") as fh:
        for row in csv.DictReader(fh):
            image = (LABELS.parent / row["image"]).resolve()
            by_tile.setdefault(image, []).append((float(row["x"]), float(row["y"]), row["class"],
                                                  int(row["nucleus_id"])))
    return by_tile


def tile_features(image: Path, points, groups) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    from nucseg.classify.examples import Point, examples_from_labels

    rgb = np.asarray(Image.open(image).convert("RGB"))
    labels = np.asarray(Image.open(image.parent.parent / "labels" / image.name)).astype(np.int64)
    pts = [Point(image, x, y, k) for x, y, k, _ in points]
    examples, features, skipped = examples_from_labels(labels, lambda a, b, c, d: rgb[a:b, c:d], pts, MPP, groups)
    assert not skipped, skipped
    return features, [e.klass for e in examples]


def encoder_features(image: Path, points) -> np.ndarray:
    """The default model's encoder maps (strides 8 and 16) sampled at each nucleus centre (mean of 3 x 3)."""
    import torch
    from PIL import Image

    from nucseg.models.build import load_network
    from nucseg.models.registry import DEFAULT_MODEL, resolve_model

    spec = resolve_model(DEFAULT_MODEL)
    net = load_network(spec, "cpu", runtime="pytorch")
    rgb = np.asarray(Image.open(image).convert("RGB")).astype(np.float32) / 255
    x = (rgb - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    h, w = x.shape[:2]
    ph, pw = -(-h // 32) * 32 - h, -(-w // 32) * 32 - w
    x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    with torch.no_grad():
        maps = net.encoder(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))
    out = []
    for stride, fmap in ((8, maps[3][0].numpy()), (16, maps[4][0].numpy())):
        rows = []
        for px, py, _, _ in points:
            r, c = int(py // stride), int(px // stride)
            win = fmap[:, max(0, r - 1):r + 2, max(0, c - 1):c + 2]
            rows.append(win.reshape(win.shape[0], -1).mean(axis=1))
        out.append(np.array(rows))
    return np.concatenate(out, axis=1)


def fold_of(image: Path) -> int:
    name = image.stem
    key = name.split("_")[1] if name.startswith("tnbc_") else name
    return hash_key(key) % 2


def hash_key(key: str) -> int:
    import hashlib

    return int(hashlib.sha1(key.encode()).hexdigest(), 16)


def score(features, labels, folds, k, groups_idx, settings, repeats, rng_seed=0):
    from sklearn.metrics import accuracy_score, f1_score

    from nucseg.classify.classes import DEFAULT_CLASSES
    from nucseg.classify.learner import ClassifierData, Example, train

    classes = sorted(set(labels))
    accs, f1s, per = [], [], {c: [] for c in classes}
    for rep in range(repeats):
        rng = np.random.default_rng(rng_seed + rep)
        for train_fold in (0, 1):
            idx = []
            for c in classes:
                pool = np.flatnonzero((labels == c) & (folds == train_fold))
                idx += list(rng.choice(pool, min(k, pool.size), replace=False))
            test = np.flatnonzero(folds != train_fold)
            X = features[:, groups_idx]
            data = ClassifierData(list(DEFAULT_CLASSES), settings, {"name": None},
                                  [Example("", 0, 0, labels[i]) for i in idx], X[idx])
            model = train(data)
            pred = np.array(model.classes)[model.probabilities(X[test]).argmax(axis=1)]
            accs.append(accuracy_score(labels[test], pred))
            f1s.append(f1_score(labels[test], pred, average="macro"))
            for c, f in zip(classes, f1_score(labels[test], pred, average=None, labels=classes), strict=True):
                per[c].append(f)
    return float(np.mean(accs)), float(np.mean(f1s)), {c: float(np.mean(v)) for c, v in per.items()}, \
        float(np.std(accs))


def main() -> None:
    from nucseg.classify.features import FEATURE_GROUPS, feature_names
    from nucseg.classify.learner import ClassifierSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", action="store_true", help="also the network's encoder features")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", type=Path, help="keep the features in this .npz (a rerun skips computing them)")
    args = parser.parse_args()
    groups = tuple(FEATURE_GROUPS)
    names = feature_names(groups)
    t0 = time.perf_counter()
    if args.cache and args.cache.exists():
        cached = np.load(args.cache)
        features, labels, folds = cached["features"], cached["labels"], cached["folds"]
        encoded = cached["encoded"] if "encoded" in cached and args.encoder else None
    else:
        feats, labels, folds, enc = [], [], [], []
        for image, points in sorted(load_points().items()):
            f, lab = tile_features(image, points, groups)
            feats.append(f)
            labels += lab
            folds += [fold_of(image)] * len(lab)
            if args.encoder:
                enc.append(encoder_features(image, points))
        features, labels, folds = np.concatenate(feats), np.array(labels), np.array(folds)
        encoded = np.concatenate(enc) if args.encoder else None
        if args.cache:
            np.savez(args.cache, features=features, labels=labels, folds=folds,
                     **({"encoded": encoded} if encoded is not None else {}))
    t_features = time.perf_counter() - t0
    n_enc = 0
    if encoded is not None:
        n_enc = encoded.shape[1]
        features = np.concatenate([features, encoded], axis=1)
    counts = {str(c): {f: int(((labels == c) & (folds == f)).sum()) for f in (0, 1)} for c in sorted(set(labels))}
    print(f"{len(labels)} labelled nuclei in {len(load_points())} tiles; per class and fold: {counts}; features "
          f"{t_features:.1f} s")
    cheap = list(range(len(names)))
    settings = ClassifierSettings()
    results: dict = {"clicks": {}, "groups": {}, "learners": {}}
    print("\n| clicks per class | accuracy | macro F1 | " + " | ".join(f"F1 {c}" for c in counts) + " |")
    print("|---|---|---|" + "---|" * len(counts))
    for k in CLICKS:
        acc, f1, per, sd = score(features, labels, folds, k, cheap, settings, args.repeats)
        results["clicks"][k] = {"accuracy": acc, "macro_f1": f1, "per_class_f1": per, "accuracy_sd": sd}
        print(f"| {k} | {acc:.3f} ± {sd:.3f} | {f1:.3f} | " + " | ".join(f"{per[c]:.3f}" for c in counts) + " |")
    subsets = {"shape": ("shape",), "shape+stain": ("shape", "stain"), "shape+stain+texture":
               ("shape", "stain", "texture"), "no neighbours": ("shape", "stain", "texture", "context"),
               "all (product)": groups}
    print("\n| feature groups (20 clicks per class) | accuracy | macro F1 |\n|---|---|---|")
    rows = {label: [names.index(n) for n in feature_names(subset)] for label, subset in subsets.items()}
    rows["none of the rules' features"] = [i for i, n in enumerate(names) if n not in RULE_FEATURES]
    rows["context + neighbours, less the rules'"] = [
        names.index(n) for n in feature_names(("context", "neighbours")) if n not in RULE_FEATURES]
    for label, idx in rows.items():
        acc, f1, _, _ = score(features, labels, folds, 20, idx, settings, args.repeats)
        results["groups"][label] = {"accuracy": acc, "macro_f1": f1}
        print(f"| {label} | {acc:.3f} | {f1:.3f} |")
    if n_enc:
        for label, idx in (("encoder only", list(range(len(names), len(names) + n_enc))),
                           ("all + encoder", list(range(len(names) + n_enc)))):
            acc, f1, _, _ = score(features, labels, folds, 20, idx, settings, args.repeats)
            results["groups"][label] = {"accuracy": acc, "macro_f1": f1}
            print(f"| {label} | {acc:.3f} | {f1:.3f} |")
    print("\n| learner (20 clicks per class) | accuracy | macro F1 | train s |\n|---|---|---|---|")
    for learner in ("random_forest", "gradient_boosting"):
        s = ClassifierSettings(learner=learner)
        t = time.perf_counter()
        acc, f1, _, _ = score(features, labels, folds, 20, cheap, s, args.repeats)
        seconds = (time.perf_counter() - t) / (2 * args.repeats)
        results["learners"][learner] = {"accuracy": acc, "macro_f1": f1, "train_and_score_s": seconds}
        print(f"| {learner} | {acc:.3f} | {f1:.3f} | {seconds:.2f} |")
    print(json.dumps({"bench": "classify", "n": int(len(labels)), **results}))


if __name__ == "__main__":
    main()
