"""`nucseg models`: the models a user can choose, and what each one is."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list available models",
                       description="List shipped models, fine-tuned versions (in $NUCSEG_HOME/models) and untrained "
                       "architectures; with NAME, show that model's config. A model folder that cannot be read is "
                       "named on stderr and left out of the list (exit status 2).")
    p.add_argument("name", nargs="?", help="a model name or folder to describe")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from nucseg.cli import EXIT_USER_ERROR
    from nucseg.errors import ModelError
    from nucseg.models.registry import model_catalog, network_summary, resolve_model

    if args.name:
        spec = resolve_model(args.name)
        print(json.dumps({**spec.to_config(), "folder": str(spec.folder) if spec.folder else None,
                          "sha256": spec.sha256}, indent=2))
        return 0
    catalog = model_catalog()
    width = max(len(n) for n in catalog.models)
    for name, description in catalog.models.items():
        try:
            network = f"  [{network_summary(resolve_model(name))}]"
        except ModelError:  # a folder whose config cannot be read: listed, without its network
            network = ""
        print(f"{name:<{width}}  {description}{network}")
    for line in catalog.damaged_lines():
        print(f"nucseg models: error: {line}", file=sys.stderr)
    return EXIT_USER_ERROR if catalog.damaged else 0
