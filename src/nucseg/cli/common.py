"""Pieces the subcommands share: model/tiling options, a progress bar on stderr, safe output paths."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any, TypeVar

from nucseg.config import DEVICES, TilingConfig
from nucseg.errors import InvalidInputError, StoreError

R = TypeVar("R")


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="nucseg-default", help="registry name or model folder (see `nucseg models`)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto picks cuda, then mps, then cpu")


def add_tiling_options(p: argparse.ArgumentParser) -> None:
    default = TilingConfig()
    p.add_argument("--tile-size", type=int, default=default.tile_size,
                   help=f"largest tile side in pixels, a multiple of 32 (default {default.tile_size})")
    p.add_argument("--overlap", type=int, default=default.overlap,
                   help=f"pixels shared by neighbouring tiles (default {default.overlap})")
    p.add_argument("--batch-size", type=int, default=default.batch_size,
                   help=f"tiles per forward pass (default {default.batch_size})")


def drive_with_bar(gen: Generator[Any, None, R], desc: str, unit: str = "tile", quiet: bool = False) -> R:
    """Run a core job to its end (`nucseg.progress.drive`) with a tqdm bar on stderr showing its `Progress`."""
    from tqdm import tqdm

    from nucseg.progress import drive

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, disable=quiet or None, dynamic_ncols=True)

    def show(record) -> None:
        bar.total = record.total
        bar.n = record.done
        bar.refresh()

    try:
        return drive(gen, show)
    finally:
        bar.close()


def new_output_path(path: Path, overwrite: bool = False, folder: bool = False) -> Path:
    """`path` for a new output file (`folder`: a folder), checked before any work: an earlier result is replaced
    only when asked to, and never a folder that nucseg did not write (`nucseg.io.outputs.check_replaceable`)."""
    from nucseg.io.outputs import check_replaceable

    if path.exists() and not overwrite:
        raise StoreError(f"{path} already exists; remove it, pick another --out, or pass --overwrite")
    check_replaceable(path, folder=folder)
    return path


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; folders expand to the images inside them (sorted), without nucseg's own outputs (an --out
    that is the input folder must not feed the next run its labels; `nucseg.io.outputs.is_own_output`)."""
    from nucseg.io.outputs import is_own_output
    from nucseg.io.slides import input_kind, list_images

    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        kind = input_kind(path)
        if kind == "folder":
            listed = list_images(path)
            found = [p for p in listed if not is_own_output(p)]
            if len(found) < len(listed):
                ours = [p.name for p in listed if p not in found]
                print(f"nucseg predict: note: {path}: skipped {len(ours)} output(s) of nucseg ({ours[0]}"
                      f"{', ...' if len(ours) > 1 else ''}): name them as files to segment them", file=sys.stderr)
            if not found:
                raise InvalidInputError(f"{path} holds no image the reader handles (svs, tif, tiff, png, jpg)"
                                        + (" other than nucseg's own outputs" if listed else ""))
            paths.extend(found)
        elif kind is None:
            raise InvalidInputError(f"{path} does not exist")
        else:
            paths.append(path)
    return paths


#: what --region takes, in the slide world's order (OpenSlide, QuPath, our GeoJSON): x, y first, then width, height
REGION_HELP = ("x,y,width,height in level-0 pixels, as QuPath and OpenSlide give them (x: column of the left edge, "
               "y: row of the top edge; default: everything)")


def parse_region(text: str | None) -> tuple[int, int, int, int] | None:
    """``--region x,y,width,height`` (level-0 pixels) as the engine's (y, x, h, w).

    Raises:
        InvalidInputError: not four integers, a negative x / y, or a width / height that is not positive.
    """
    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError as err:
        raise InvalidInputError(f"--region {text!r} must be four integers x,y,width,height in level-0 pixels "
                                "(e.g. 800,600,500,500)") from err
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise InvalidInputError(f"--region {text!r}: x and y must be >= 0 and width and height > 0 "
                                "(x,y,width,height in level-0 pixels)")
    return y, x, h, w
