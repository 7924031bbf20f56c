"""`nucseg predict`: segment nuclei in tiles and slides, headless, for batches (in-process or on Dask workers)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nucseg.cli import EXIT_USER_ERROR
from nucseg.cli.common import REGION_HELP, add_model_options, add_tiling_options, expand_inputs, parse_region
from nucseg.config import RUNTIMES
from nucseg.errors import InvalidInputError
from nucseg.io.base import PLAUSIBLE_MPP
from nucseg.jobs.predict_file import FORMATS, MPP_UNKNOWN


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment nuclei in images or slides",
        description="Segment nuclei in each INPUT (SVS, OME-TIFF, TIFF, PNG, JPG, or folders of them). Writes "
        "DIR/<stem>_labels.tif (uint32 instance labels at the input's resolution) or the other --format choices, "
        "DIR/<stem>_predict.json with the settings, counts and worker, and DIR/batch_summary.csv. Outputs are "
        "renamed into place only when complete, the JSON last.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if needed)")
    add_model_options(p)
    add_tiling_options(p)
    p.add_argument("--format", default="tif",
                   help=f"comma-separated outputs among {', '.join(FORMATS)} (default tif)")
    p.add_argument("--block-size", type=int, metavar="PX",
                   help="side of the blocks (model pixels) post-processed at once; with --workers or --scheduler, "
                   "a slide of several blocks is spread over the workers block by block (default 2048, or the tile "
                   "size when larger)")
    p.add_argument("--region", metavar="X,Y,W,H", help=REGION_HELP)
    p.add_argument("--mpp", type=float, help="microns per pixel of inputs without that metadata, between "
                   f"{PLAUSIBLE_MPP[0]:g} and {PLAUSIBLE_MPP[1]:g}, not much coarser than the model's (default: "
                   "unknown: segmented as the model's resolution, outputs in pixels only)")
    p.add_argument("--foreground-threshold", metavar="P|otsu",
                   help="foreground probability at which a pixel is nucleus: a number in (0, 1), or 'otsu' for Otsu's "
                   "threshold of each image's own map (default: the model's, 0.5 for nucseg-default)")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what runs the network: auto (ONNX Runtime on the CPU, else PyTorch), pytorch, onnxruntime")
    p.add_argument("--tta", action="store_true", help="average over flips: ~4x slower, slightly more accurate")
    p.add_argument("--all-tiles", action="store_true", help="do not skip background tiles on slides")
    p.add_argument("--allow-fluorescence", action="store_true", help="segment a slide that looks like fluorescence")
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs of the same name")
    p.add_argument("--resume", action="store_true",
                   help="skip inputs whose outputs are complete (same input and settings); redo the others")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--workers", type=int, metavar="N",
                       help="run on a new local Dask cluster of N worker processes (one per GPU on a GPU machine)")
    scale.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the workers of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (they need "
                       "the inputs and --out at the same paths)")
    p.add_argument("--threads-per-worker", type=int, metavar="T",
                   help="torch threads per Dask worker (default: cores / N with --workers; the worker's own "
                   "OMP_NUM_THREADS with --scheduler)")
    p.add_argument("--classifier", metavar="NAME",
                   help="a nucleus classifier (`nucseg classify list`; NAME, NAME/vNNN or a folder): adds class and "
                   "class_probability to the CSV, a QuPath classification to each GeoJSON feature, and counts per "
                   "class to <stem>_predict.json and batch_summary.csv")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    formats = ["tif" if f in ("tiff", "ome-tiff", "ome.tif") else f for f in formats]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InvalidInputError(f"--format {text!r}: choose among {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def build_config(args: argparse.Namespace):
    from nucseg.config import InferenceConfig, PostprocessConfig, TilingConfig, default_block_size
    from nucseg.models.registry import resolve_model

    resolve_model(args.model)  # an unknown model is reported before any input is opened
    # the thresholds not given here are the model's: the engine fills them in (PostprocessConfig.resolved)
    postprocess = foreground_option(args.foreground_threshold)
    return InferenceConfig(
        model=args.model, device=args.device, runtime=args.runtime, tta=args.tta, skip_background=not args.all_tiles,
        tiling=TilingConfig(args.tile_size, args.overlap, args.batch_size),
        postprocess=PostprocessConfig(**postprocess),
        block_size=args.block_size if args.block_size is not None else default_block_size(args.tile_size),
    )


def foreground_option(text: str | None) -> dict:
    """PostprocessConfig fields from --foreground-threshold (nothing when it is not given)."""
    if text is None:
        return {}
    if text.strip().lower() == "otsu":
        return {"foreground_method": "otsu"}
    try:
        return {"foreground_method": "fixed", "foreground_threshold": float(text)}
    except ValueError:
        raise InvalidInputError(f"--foreground-threshold {text!r}: give a probability such as 0.4, or 'otsu'") from None


def build_settings(args: argparse.Namespace):
    from nucseg.io.base import check_mpp
    from nucseg.jobs.batch import BatchSettings

    if args.mpp is not None:
        check_mpp(args.mpp, "--mpp")
    if args.workers is not None and args.workers < 1:
        raise InvalidInputError(f"--workers {args.workers}: give at least 1 worker process")
    if args.threads_per_worker is not None and args.threads_per_worker < 1:
        raise InvalidInputError(f"--threads-per-worker {args.threads_per_worker}: give at least 1 torch thread per "
                                "worker (or leave it out)")
    config = build_config(args)
    return BatchSettings(config=config, formats=tuple(parse_formats(args.format)),
                         region=parse_region(args.region), mpp=args.mpp,
                         allow_fluorescence=args.allow_fluorescence,
                         classifier=classifier_option(getattr(args, "classifier", None), config.model))


def classifier_option(name: str | None, model: str) -> str | None:
    """The folder of --classifier (absolute: workers read it at the same path), checked against the model."""
    if not name:
        return None
    from nucseg.classify.store import check_binding, load_classifier, resolve_classifier
    from nucseg.models.registry import resolve_model

    folder = resolve_classifier(name).resolve()
    note = check_binding(load_classifier(folder), resolve_model(model), f"--classifier {name}")
    if note:
        print(f"nucseg predict: note: {note}", file=sys.stderr)
    return str(folder)


class BatchBars:
    """Two tqdm bars on stderr: inputs finished of the batch, and tiles of the inputs started so far."""

    def __init__(self, n_inputs: int, skipped: int, quiet: bool):
        from tqdm import tqdm

        disable = quiet or None  # None: off when stderr is not a terminal
        self.inputs = tqdm(total=n_inputs, initial=skipped, desc="inputs", unit="input", file=sys.stderr,
                           disable=disable, dynamic_ncols=True, position=0)
        self.tiles = tqdm(total=0, desc="tiles", unit="tile", file=sys.stderr, disable=disable, dynamic_ncols=True,
                          position=1)
        self.progress: dict[str, tuple[int, int]] = {}

    def update(self, event) -> None:
        stem = event.info["item"].stem
        if event.kind == "input":
            _, total = self.progress.get(stem, (0, 0))
            self.progress[stem] = (total, total)
            self.inputs.update(1)
        else:
            self.progress[stem] = (event.done, event.total)
        self.tiles.total = sum(t for _, t in self.progress.values())
        self.tiles.n = sum(d for d, _ in self.progress.values())
        self.tiles.refresh()

    def write(self, text: str, err: bool = False) -> None:
        self.inputs.write(text, file=sys.stderr if err else sys.stdout)

    def close(self) -> None:
        self.tiles.close()
        self.inputs.close()


def _report_outcome(outcome, bars: BatchBars, distributed: bool) -> None:
    if outcome.disk_full:  # the batch stops: said once, at the end
        return
    if outcome.status == "done":
        summary = outcome.summary
        blocks = summary.get("block_workers")
        where = (f" in {summary['blocks']} blocks on workers {', '.join(blocks)}" if blocks
                 else f" on worker {outcome.worker}" if distributed else "")
        classes = (summary.get("classes") or {}).get("counts")
        kinds = f" ({', '.join(f'{k} {v}' for k, v in classes.items())})" if classes else ""
        bars.write(f"{outcome.item.input}: {summary['nuclei']} nuclei{kinds} in {summary['seconds']} s{where} -> "
                   f"{', '.join(summary['outputs'].values())}")
    else:
        bars.write(f"nucseg predict: error: {outcome.error}" if outcome.item.input.name in (outcome.error or "")
                   else f"nucseg predict: error: {outcome.item.input}: {outcome.error}", err=True)
        if outcome.summary and "traceback" in outcome.summary:  # not one of our errors: a bug, show where
            bars.write(outcome.summary["traceback"].rstrip(), err=True)


def run(args: argparse.Namespace) -> int:
    from nucseg.io.outputs import check_output_folder, output_lock

    settings = build_settings(args)
    inputs = expand_inputs(args.inputs)
    check_output_folder(args.out)  # read-only, a file, full: one line now, not after all the work
    with output_lock(args.out, "nucseg predict"):  # one run at a time writes into a folder
        return _run_locked(args, settings, inputs)


def _run_locked(args: argparse.Namespace, settings, inputs: list[Path]) -> int:
    from nucseg.jobs.batch import iter_batch, plan_batch
    from nucseg.progress import drive

    plan = plan_batch(inputs, args.out, settings, resume=args.resume, overwrite=args.overwrite)
    distributed = bool(args.workers or args.scheduler)
    if args.resume:
        print(f"nucseg predict: resuming: skipped {len(plan.skipped)} of {len(plan.items)} inputs (finished "
              f"earlier), {len(plan.todo)} to do" + (f"; {plan.replacing} unfinished outputs will be replaced"
                                                     if plan.replacing else ""), file=sys.stderr)
    if plan.duplicates:
        print(f"nucseg predict: note: {plan.duplicates} input(s) given more than once, segmented once",
              file=sys.stderr)
    bars = BatchBars(len(plan.items), len(plan.skipped), args.quiet)
    gen = iter_batch(plan, settings, workers=args.workers, scheduler=args.scheduler,
                     threads_per_worker=args.threads_per_worker)

    def show(event) -> None:
        bars.update(event)
        if event.kind == "input":
            _report_outcome(event.info["outcome"], bars, distributed)

    try:
        # on Ctrl-C, drive closes the batch: it cancels the tasks, releases the cluster and writes the summary
        report = drive(gen, show)
    except KeyboardInterrupt:
        bars.close()
        print(f"nucseg predict: stopped; finished inputs are kept ({args.out / 'batch_summary.csv'}); run the same "
              "command with --resume to do the rest", file=sys.stderr)
        raise
    finally:
        bars.close()
    if report.disk_full is not None:
        print(f"nucseg predict: error: {report.disk_full.item.input}: {report.disk_full.error}; finished inputs are "
              "kept: run the same command with --resume once there is space", file=sys.stderr)
        return EXIT_USER_ERROR
    if report.summary_error:
        print(f"nucseg predict: error: {report.summary_error}", file=sys.stderr)
        return EXIT_USER_ERROR
    _note_unsized(report, settings)
    failed = report.failed
    if failed and len(report.outcomes) > 1:
        print(f"nucseg predict: {len(failed)} of {len(report.outcomes)} inputs failed (see above and "
              f"{report.summary_csv})", file=sys.stderr)
    return EXIT_USER_ERROR if failed else 0


def _note_unsized(report, settings) -> None:
    """A 20x tile taken for 40x gets nuclei half their size: say so once, not per tile."""
    unsized = [o.item.input.name for o in report.outcomes
               if o.status == "done" and o.summary and o.summary.get("mpp_from") == MPP_UNKNOWN]
    if not unsized:
        return
    from nucseg.models.registry import resolve_model

    names = unsized[0] if len(unsized) == 1 else f"{len(unsized)} inputs (e.g. {unsized[0]})"
    mpp = resolve_model(settings.config.model).mpp
    print(f"nucseg predict: note: {names} did not say their pixel size and were segmented as {mpp:g} µm/px "
          f"(the model's own, about {10 / mpp:.0f}x); their outputs are in pixels only. Pass --mpp if they are "
          "another magnification (20x is about 0.5) or to get µm measurements", file=sys.stderr)
