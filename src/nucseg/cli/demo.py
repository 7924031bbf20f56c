"""`nucseg demo`: the default model on the bundled H&E sample, scored against its ground truth.

The sample is a crop of MoNuSeg tile TCGA-E2-A14V, one of the five validation tiles of the default model: never
trained on, but those tiles chose its training step and thresholds, so the demo's scores are validation scores,
not those of a held-out test (the output says so)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nucseg.cli.common import add_model_options, drive_with_bar, new_output_path

#: what the demo's numbers are: the sample is not independent of the default model's choices
SAMPLE_NOTE = ("the sample is a crop of a MoNuSeg validation tile (never trained on, but it chose the default model's "
               "training step and thresholds): validation scores, not a held-out test; objects match at IoU >= 0.5")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment the bundled sample and score it",
                       description="Segment the bundled H&E tile (a crop of a MoNuSeg breast tile from the default "
                       "model's validation split: never trained on, but it helped choose the model, so the scores "
                       "are not a held-out test), print pixel and object metrics against its ground truth, and "
                       "write image | truth | prediction | TP/FP/FN overlay as a PNG.")
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="folder for the PNG, labels and metrics")
    add_model_options(p)
    p.add_argument("--tta", action="store_true", help="average over flips")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's files")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from nucseg.config import InferenceConfig
    from nucseg.inference.predict import iter_predict
    from nucseg.io.export import write_labels_ome_tiff
    from nucseg.io.masks import read_labels
    from nucseg.io.outputs import check_output_folder
    from nucseg.io.sample import sample_info, sample_paths
    from nucseg.io.slides import read_image
    from nucseg.metrics.figure import side_by_side_figure
    from nucseg.metrics.report import evaluate_labels
    from nucseg.models.registry import resolve_model

    image_path, labels_path = sample_paths()
    image, truth = read_image(image_path), read_labels(labels_path)
    mpp = float(sample_info()["mpp"])  # MoNuSeg's documented 40x, 0.25 µm/px: the sample's own, not the model's
    spec = resolve_model(args.model)  # an unknown model is reported before anything is read
    config = InferenceConfig(model=args.model, device=args.device, tta=args.tta)  # the model's own thresholds
    check_output_folder(args.out)
    paths = {name: new_output_path(args.out / name, args.overwrite)
             for name in ("demo_side_by_side.png", "demo_labels.tif", "demo_metrics.json")}
    if args.overwrite:
        for p in paths.values():
            p.unlink(missing_ok=True)
    result = drive_with_bar(iter_predict(image, config, mpp=mpp), desc="demo")
    metrics = evaluate_labels(truth, np.asarray(result.labels), prob=np.asarray(result.probabilities[0]))
    write_labels_ome_tiff(result.labels, paths["demo_labels.tif"], mpp=mpp)
    side_by_side_figure(image, truth, np.asarray(result.labels), paths["demo_side_by_side.png"], metrics)
    paths["demo_metrics.json"].write_text(json.dumps(
        {"model": result.model_info, "seconds": round(result.seconds, 2), "sample": "crop of a MoNuSeg validation "
         "tile (never trained on; it chose the training step and thresholds)", "mpp": mpp, "metrics": metrics},
        indent=2, default=float))
    print(f"model {spec.name} on {image_path.name} ({image.shape[1]} x {image.shape[0]} px, {result.seconds:.1f} s)")
    print(f"  {SAMPLE_NOTE}")
    for key in ("dice", "iou", "precision", "recall", "accuracy", "auc", "f1", "aji", "pq", "tp", "fp", "fn"):
        if key in metrics:
            value = metrics[key]
            print(f"  {key:<10} {value:.4f}" if isinstance(value, float) else f"  {key:<10} {value}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
