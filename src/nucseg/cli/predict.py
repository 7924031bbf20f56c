"""`nucseg predict`: segment nuclei in tiles and slides, headless, for batches."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from nucseg.cli import EXIT_USER_ERROR
from nucseg.cli.common import (
    add_model_options,
    add_tiling_options,
    drive,
    expand_inputs,
    new_output_path,
    parse_region,
)
from nucseg.config import RUNTIMES
from nucseg.errors import InvalidInputError, NucsegError

FORMATS = ("tif", "zarr", "geojson", "csv")
#: `mpp_from` in <stem>_predict.json for inputs that did not say their pixel size
MPP_ASSUMED = "assumed: the model's"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment nuclei in images or slides",
        description="Segment nuclei in each INPUT (SVS, OME-TIFF, TIFF, PNG, JPG, or folders of them). Writes "
        "DIR/<stem>_labels.tif (uint32 instance labels at the input's resolution) or the other --format choices, "
        "and DIR/<stem>_predict.json with the settings and counts.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if needed)")
    add_model_options(p)
    add_tiling_options(p)
    p.add_argument("--format", default="tif",
                   help=f"comma-separated outputs among {', '.join(FORMATS)} (default tif)")
    p.add_argument("--region", help="y,x,height,width in level-0 pixels (default: everything)")
    p.add_argument("--mpp", type=float, help="microns per pixel of inputs without that metadata (default: the model's)")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what runs the network: auto (ONNX Runtime on the CPU, else PyTorch), pytorch, onnxruntime")
    p.add_argument("--tta", action="store_true", help="average over flips: ~4x slower, slightly more accurate")
    p.add_argument("--all-tiles", action="store_true", help="do not skip background tiles on slides")
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs of the same name")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    formats = ["tif" if f in ("tiff", "ome-tiff", "ome.tif") else f for f in formats]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InvalidInputError(f"--format {text!r}: choose among {', '.join(FORMATS)}")
    return formats


def output_paths(out: Path, stem: str, formats: list[str]) -> dict[str, Path]:
    names = {"tif": f"{stem}_labels.tif", "zarr": f"{stem}_labels.zarr", "geojson": f"{stem}_nuclei.geojson",
             "csv": f"{stem}_nuclei.csv"}
    return {f: out / names[f] for f in formats}


def predict_file(path: Path, args: argparse.Namespace, config, formats: list[str]) -> dict:
    """Segment one input and write its outputs; returns the summary written to <stem>_predict.json."""
    import numpy as np

    from nucseg.inference.predict import iter_predict
    from nucseg.io import export
    from nucseg.io.slides import open_slide

    stem = path.name.split(".")[0]
    targets = output_paths(args.out, stem, formats)
    summary_path = args.out / f"{stem}_predict.json"
    for target in [*targets.values(), summary_path]:
        new_output_path(target, args.overwrite)
        if args.overwrite and target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    with open_slide(path) as slide:
        mpp = slide.mpp or args.mpp
        mpp_from = "file" if slide.mpp else "--mpp" if args.mpp else MPP_ASSUMED
        region = parse_region(args.region)
        big = (region[2] * region[3] if region else slide.shape[0] * slide.shape[1]) > config.block_size**2
        store = targets.get("zarr") or (args.out / f".{stem}.partial.zarr" if big else None)
        if store is not None and store.exists():
            shutil.rmtree(store)  # a previous crashed run's partial output
        gen = iter_predict(slide, config, mpp=mpp, region=region, out=store)
        result = drive(gen, desc=path.name, quiet=args.quiet)
        labels = result.labels
        offset = result.region[:2]
        if "tif" in targets:
            export.write_labels_ome_tiff(labels, targets["tif"], mpp=result.mpp)
        if "geojson" in targets:
            export.write_geojson(labels, targets["geojson"], offset=offset)
        if "csv" in targets:
            image = slide.read_region(0, *result.region) if not big else None
            export.write_measurements_csv(labels, targets["csv"], image=image, mpp=result.mpp, offset=offset)
        if store is not None and "zarr" not in targets:
            shutil.rmtree(store, ignore_errors=True)
    summary = {
        "input": str(path), "outputs": {k: str(v) for k, v in targets.items()}, "nuclei": result.n_nuclei,
        "region": list(result.region), "mpp": result.mpp, "mpp_from": mpp_from, "model": result.model_info,
        "seconds": round(result.seconds, 2),
        "config": config.to_dict(), "labels_dtype": str(np.dtype(labels.dtype)),
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def build_config(args: argparse.Namespace):
    from nucseg.config import InferenceConfig, PostprocessConfig, TilingConfig
    from nucseg.models.registry import resolve_model

    spec = resolve_model(args.model)
    return InferenceConfig(
        model=args.model, device=args.device, runtime=args.runtime, tta=args.tta, skip_background=not args.all_tiles,
        tiling=TilingConfig(args.tile_size, args.overlap, args.batch_size),
        postprocess=PostprocessConfig(**spec.postprocess_defaults),
    )


def run(args: argparse.Namespace) -> int:
    formats = parse_formats(args.format)
    inputs = expand_inputs(args.inputs)
    config = build_config(args)
    args.out.mkdir(parents=True, exist_ok=True)
    failed, unsized = 0, []
    for path in inputs:
        try:
            summary = predict_file(path, args, config, formats)
        except NucsegError as err:  # one bad slide must not stop a batch: report it and go on
            if len(inputs) == 1:
                raise
            print(f"nucseg predict: error: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: {summary['nuclei']} nuclei in {summary['seconds']} s -> "
              f"{', '.join(summary['outputs'].values())}", file=sys.stdout)
        if summary["mpp_from"] == MPP_ASSUMED:
            unsized.append(path.name)
    if unsized:  # a 20x tile taken for 40x gets nuclei half their size: say so once, not per tile
        from nucseg.models.registry import resolve_model

        names = unsized[0] if len(unsized) == 1 else f"{len(unsized)} inputs (e.g. {unsized[0]})"
        mpp = resolve_model(config.model).mpp
        print(f"nucseg predict: note: {names} did not say their pixel size and were segmented as {mpp:g} µm/px "
              f"(the model's own, about {10 / mpp:.0f}x); pass --mpp if they are another magnification (20x is "
              "about 0.5)", file=sys.stderr)
    if failed:
        print(f"nucseg predict: {failed} of {len(inputs)} inputs failed (see above)", file=sys.stderr)
    return EXIT_USER_ERROR if failed else 0
