"""The `nucseg` command line: one module per subcommand, each calling the same core functions as the widgets.

Every subcommand module defines ``add_parser(subparsers)`` and a ``run(args) -> int``. Errors the package raises on
purpose (`NucsegError`) print one line to stderr and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from nucseg import __version__
from nucseg.errors import NucsegError

#: subcommand name -> module under nucseg.cli (imported lazily so `nucseg info` never pays for torch)
SUBCOMMANDS = {
    "info": "nucseg.cli.info",
    "predict": "nucseg.cli.predict",
    "evaluate": "nucseg.cli.evaluate",
    "finetune": "nucseg.cli.finetune",
    "models": "nucseg.cli.models",
    "demo": "nucseg.cli.demo",
    "classify": "nucseg.cli.classify",
}

EXIT_USER_ERROR = 2


def _subcommand_modules() -> list:
    return [importlib.import_module(name) for name in SUBCOMMANDS.values()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nucseg",
        description="Nuclei segmentation for H&E histopathology: predict, evaluate, fine-tune, export.",
    )
    parser.add_argument("--version", action="version", version=f"nucseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _subcommand_modules():
        module.add_parser(sub)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from nucseg.models.device import passive_thread_waits

    passive_thread_waits()  # before any subcommand imports torch
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except NucsegError as err:
        print(f"nucseg {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"nucseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
