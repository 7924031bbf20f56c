"""`nucseg demo`: the default model on the bundled H&E sample, scored against its ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nucseg.cli.common import add_model_options, drive, new_output_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment the bundled sample and score it",
                       description="Segment the bundled H&E tile (MoNuSeg breast crop, not used in training), print "
                       "pixel and object metrics against its ground truth, and write image | truth | prediction | "
                       "TP/FP/FN overlay as a PNG.")
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="folder for the PNG, labels and metrics")
    add_model_options(p)
    p.add_argument("--tta", action="store_true", help="average over flips")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's files")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from nucseg.config import InferenceConfig, PostprocessConfig
    from nucseg.inference.predict import iter_predict
    from nucseg.io.export import write_labels_ome_tiff
    from nucseg.io.masks import read_labels
    from nucseg.io.sample import sample_paths
    from nucseg.io.slides import read_image
    from nucseg.metrics.figure import side_by_side_figure
    from nucseg.metrics.report import evaluate_labels
    from nucseg.models.registry import resolve_model

    image_path, labels_path = sample_paths()
    image, truth = read_image(image_path), read_labels(labels_path)
    spec = resolve_model(args.model)
    config = InferenceConfig(model=args.model, device=args.device, tta=args.tta,
                             postprocess=PostprocessConfig(**spec.postprocess_defaults))
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {name: new_output_path(args.out / name, args.overwrite)
             for name in ("demo_side_by_side.png", "demo_labels.tif", "demo_metrics.json")}
    if args.overwrite:
        for p in paths.values():
            p.unlink(missing_ok=True)
    result = drive(iter_predict(image, config, mpp=spec.mpp), desc="demo")
    metrics = evaluate_labels(truth, np.asarray(result.labels), prob=np.asarray(result.probabilities[0]))
    write_labels_ome_tiff(result.labels, paths["demo_labels.tif"], mpp=spec.mpp)
    side_by_side_figure(image, truth, np.asarray(result.labels), paths["demo_side_by_side.png"], metrics)
    paths["demo_metrics.json"].write_text(json.dumps(
        {"model": result.model_info, "seconds": round(result.seconds, 2), "metrics": metrics}, indent=2, default=float))
    print(f"model {spec.name} on {image_path.name} ({image.shape[1]} x {image.shape[0]} px, {result.seconds:.1f} s)")
    for key in ("dice", "iou", "precision", "recall", "accuracy", "auc", "f1", "aji", "pq", "tp", "fp", "fn"):
        if key in metrics:
            value = metrics[key]
            print(f"  {key:<10} {value:.4f}" if isinstance(value, float) else f"  {key:<10} {value}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
