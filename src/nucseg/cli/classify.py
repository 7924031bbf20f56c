"""`nucseg classify train | list`: nucleus classifiers taught by labelled points, saved as versioned examples."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nucseg.errors import InvalidInputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="train and list nucleus classifiers (tumour, lymphocyte, stroma...)",
                       description="Nucleus classifiers taught by labelled points. A classifier is saved as its "
                       "examples and settings in $NUCSEG_HOME/classifiers/NAME/vNNN (never overwritten) and used "
                       "with `nucseg predict --classifier NAME`.")
    commands = p.add_subparsers(dest="classify_command", metavar="ACTION", required=True)
    t = commands.add_parser("train", help="train a classifier from a CSV of labelled points",
                            description="Train a classifier from POINTS.csv (columns image,x,y,class; image "
                            "absolute or relative to the CSV; x, y in full-resolution pixels). The nucleus under "
                            "each point is an example; a point on background is reported and skipped. Images are "
                            "segmented with --model (around their points) unless --labels DIR holds "
                            "<stem>_labels.tif for them.")
    t.add_argument("--points", required=True, type=Path, metavar="POINTS.csv")
    t.add_argument("--out", required=True, metavar="NAME", help="classifier name (a new version if it exists)")
    t.add_argument("--labels", type=Path, metavar="DIR", help="folder of <stem>_labels.tif (e.g. nucseg predict's)")
    t.add_argument("--mpp", type=float, help="microns per pixel of images whose file does not say")
    t.add_argument("--model", default=None, help="segmentation model (default: the default model)")
    t.add_argument("--description", default="", help="one line kept with the classifier")
    t.set_defaults(run=run_train)
    ls = commands.add_parser("list", help="list saved classifiers", description="List saved classifier versions.")
    ls.set_defaults(run=run_list)


def run_train(args: argparse.Namespace) -> int:
    from nucseg.classify.examples import iter_examples_from_points, read_points_csv
    from nucseg.classify.learner import ClassifierData, ClassifierSettings
    from nucseg.classify.store import model_binding, save_classifier
    from nucseg.config import InferenceConfig
    from nucseg.models.registry import DEFAULT_MODEL, resolve_model
    from nucseg.progress import drive

    if args.mpp is not None and not args.mpp > 0:
        raise InvalidInputError(f"--mpp {args.mpp}: give the microns per pixel as a positive number (20x is about 0.5)")
    if args.labels is not None and not args.labels.is_dir():
        raise InvalidInputError(f"--labels {args.labels}: no such folder")
    from nucseg.classify.classes import load_class_list

    points = read_points_csv(args.points)
    settings = ClassifierSettings()
    config = InferenceConfig(model=args.model or DEFAULT_MODEL)

    def show(event) -> None:
        if hasattr(event, "image"):  # an image begins (the segmentation's own records are not printed)
            print(f"nucseg classify: {event.image} ({event.done + 1}/{event.total})", file=sys.stderr)

    examples, features, skipped = drive(
        iter_examples_from_points(points, settings.groups, labels_dir=args.labels, mpp=args.mpp, config=config), show)
    for s in skipped:
        print(f"nucseg classify: skipped point ({s.point.x:g}, {s.point.y:g}) class {s.point.klass} in "
              f"{s.point.image}: {s.reason}", file=sys.stderr)
    binding = model_binding(None, str(args.labels.resolve())) if args.labels else model_binding(
        resolve_model(config.model))
    data = ClassifierData(load_class_list(), settings, binding, examples, features)
    folder = save_classifier(data, args.out, description=args.description)
    counts = ", ".join(f"{k} {v}" for k, v in data.counts().items() if v)
    print(f"{folder}: {len(examples)} examples ({counts}); {len(skipped)} point(s) skipped")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from nucseg.classify.store import classifiers_dir, list_classifiers

    found = list_classifiers()
    if not found:
        print(f"no classifiers in {classifiers_dir()} yet; make one with `nucseg classify train`", file=sys.stderr)
    for info in found:
        print(info.summary())
    return 0
