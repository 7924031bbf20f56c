"""`nucseg models`: the models a user can choose, and what each one is."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list available models",
                       description="List shipped models, fine-tuned versions (in $NUCSEG_HOME/models) and untrained "
                       "architectures; with NAME, show that model's config.")
    p.add_argument("name", nargs="?", help="a model name or folder to describe")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from nucseg.errors import ModelError
    from nucseg.models.registry import list_models, network_summary, resolve_model

    if args.name:
        spec = resolve_model(args.name)
        print(json.dumps({**spec.to_config(), "folder": str(spec.folder) if spec.folder else None,
                          "sha256": spec.sha256}, indent=2))
        return 0
    models = list_models()
    width = max(len(n) for n in models)
    for name, description in models.items():
        try:
            network = f"  [{network_summary(resolve_model(name))}]"
        except ModelError:  # a folder whose config cannot be read: listed, without its network
            network = ""
        print(f"{name:<{width}}  {description}{network}")
    return 0
