"""`nucseg info`: what a slide or tile holds - format, levels, microns per pixel, associated images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nucseg.errors import SlideReadError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="describe a slide or tile (format, levels, microns per pixel)",
        description="Print the format, each resolution level's width x height and downsample, the microns per "
        "pixel (with the magnification it implies, 10 / mpp) and the associated images (label, macro, thumbnail) "
        "of each PATH (SVS, OME-TIFF, TIFF, PNG, JPEG; a folder means the images in it).",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="slide, tile or folder of tiles")
    p.add_argument("--json", action="store_true", help="print JSON (an object for one file, else a list)")
    p.set_defaults(run=run)


def describe(path: Path) -> dict[str, Any]:
    """A JSON-able description of one file (see `nucseg.io.slides.open_slide` for the errors it raises)."""
    from nucseg.io.slides import open_slide

    with open_slide(path) as slide:
        levels = [{"level": i, "width": slide.level_shape(i)[1], "height": slide.level_shape(i)[0],
                   "downsample": slide.downsamples[i], "mpp": slide.level_mpp(i)} for i in range(len(slide.levels))]
        associated = {name: {"width": int(img.shape[1]), "height": int(img.shape[0])}
                      for name, img in slide.associated.items()}
        metadata = {k: v for k, v in slide.metadata.items() if isinstance(v, (str, int, float, bool, list, type(None)))}
        return {
            "path": str(path), "format": slide.format, "width": slide.shape[1], "height": slide.shape[0],
            "levels": levels, "mpp": slide.mpp,
            "magnification": round(10.0 / slide.mpp, 1) if slide.mpp else None,
            "associated": associated, "metadata": metadata,
        }


def format_text(info: dict[str, Any]) -> str:
    """The human-readable block `nucseg info` prints for one file."""
    lines = [info["path"], f"  format         {info['format']}"]
    for level in info["levels"]:
        mpp = f", {level['mpp']:.4g} µm/px" if level["mpp"] else ""
        lines.append(f"  level {level['level']:<8} {level['width']} x {level['height']} px (width x height), "
                     f"downsample {level['downsample']:g}{mpp}")
    if info["mpp"]:
        scanner = info["metadata"].get("objective_power")
        said = f"; scanner objective {scanner}x" if scanner else ""
        lines.append(f"  microns/pixel  {info['mpp']:.4g} (about {info['magnification']:g}x{said})")
    else:
        lines.append("  microns/pixel  unknown (pass --mpp to `nucseg predict`; MoNuSeg-like 40x tiles are 0.25)")
    if info["associated"]:
        parts = [f"{name} {a['width']} x {a['height']}" for name, a in info["associated"].items()]
        lines.append(f"  associated     {', '.join(parts)}")
    meta = info["metadata"]
    extras = [f"{key} {meta[key]}" for key in ("compression", "tile", "dtype") if meta.get(key) not in (None, "")]
    if extras:
        lines.append(f"  storage        {', '.join(str(e) for e in extras)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from nucseg.io.slides import list_images

    paths: list[Path] = []
    for path in args.paths:
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise SlideReadError(path, "is a folder with no image files (svs, tif, tiff, png, jpg)",
                                     "pass a slide or tile, or a folder that holds some")
            paths.extend(found)
        else:
            paths.append(path)
    infos = [describe(path) for path in paths]
    if args.json:
        print(json.dumps(infos[0] if len(infos) == 1 else infos, indent=2, default=str))
    else:
        print("\n\n".join(format_text(info) for info in infos))
    return 0
