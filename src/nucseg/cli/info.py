"""`nucseg info`: what a slide or tile holds - format, the library that reads it, levels, microns per pixel,
associated images, colour profile, and whether it is brightfield or fluorescence."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nucseg.errors import SlideReadError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="describe a slide or tile (format, reader, levels, microns per pixel, brightfield or fluorescence)",
        description="Print the format and the library that reads it, each resolution level's width x height and "
        "downsample, the microns per pixel (with the magnification it implies, 10 / mpp), the associated images "
        "(label, macro, thumbnail), the ICC colour profile, and whether the slide is brightfield or fluorescence, "
        "for each PATH (SVS, OME-TIFF, TIFF, NDPI, MRXS, SCN, BIF, Philips TIFF, DICOM WSI, PNG, JPEG; a DICOM "
        "WSI is its folder or any of its .dcm files; another folder means the images in it).",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="slide, tile, DICOM folder or folder of tiles")
    p.add_argument("--json", action="store_true", help="print JSON (an object for one file, else a list)")
    p.set_defaults(run=run)


def describe(path: Path) -> dict[str, Any]:
    """A JSON-able description of one file (see `nucseg.io.slides.open_slide` for the errors it raises)."""
    from nucseg.io.slides import open_slide, slide_modality

    with open_slide(path) as slide:
        modality, reason = slide_modality(slide)
        levels = [{"level": i, "width": slide.level_shape(i)[1], "height": slide.level_shape(i)[0],
                   "downsample": slide.downsamples[i], "mpp": slide.level_mpp(i)} for i in range(len(slide.levels))]
        associated = {name: {"width": int(img.shape[1]), "height": int(img.shape[0])}
                      for name, img in slide.associated.items()}
        metadata = {k: v for k, v in slide.metadata.items() if isinstance(v, (str, int, float, bool, list, type(None)))}
        return {
            "path": str(path), "format": slide.format, "width": slide.shape[1], "height": slide.shape[0],
            "levels": levels, "mpp": slide.mpp, "mpp_xy": list(slide.mpp_xy) if slide.mpp_xy else None,
            "magnification": round(10.0 / slide.mpp, 1) if slide.mpp else None,
            "associated": associated, "metadata": metadata, "reader": slide.reader, "icc": slide.icc,
            "modality": modality, "modality_reason": reason,
        }


def format_text(info: dict[str, Any]) -> str:
    """The human-readable block `nucseg info` prints for one file."""
    lines = [info["path"], f"  format         {info['format']}", f"  reader         {info['reader']}"]
    for level in info["levels"]:
        mpp = f", {level['mpp']:.3g} µm/px" if level["mpp"] else ""
        lines.append(f"  level {level['level']:<8} {level['width']} x {level['height']} px (width x height), "
                     f"downsample {level['downsample']:g}{mpp}")
    if info["mpp"]:
        scanner = info["metadata"].get("objective_power")
        said = f"; scanner objective {scanner}x" if scanner else ""
        lines.append(f"  microns/pixel  {info['mpp']:.3g} (about {info['magnification']:g}x{said})")
    elif info.get("mpp_xy"):
        x, y = info["mpp_xy"]
        lines.append(f"  microns/pixel  not square: {x:.3g} wide, {y:.3g} high (`nucseg predict` refuses it: resample "
                     "it to square pixels first)")
    else:
        lines.append("  microns/pixel  unknown (pass --mpp to `nucseg predict`; MoNuSeg-like 40x tiles are 0.25)")
    if info["associated"]:
        parts = [f"{name} {a['width']} x {a['height']}" for name, a in info["associated"].items()]
        lines.append(f"  associated     {', '.join(parts)}")
    else:
        lines.append("  associated     none")
    icc = info["icc"]
    if icc is None:
        lines.append("  colour         no ICC profile (pixels as stored)")
    else:
        done = "applied: pixels converted to sRGB" if icc["applied"] else "sRGB already: pixels unchanged"
        lines.append(f"  colour         ICC profile \"{icc['description']}\" ({done})")
    lines.append(f"  modality       {info['modality']} ({info['modality_reason']})")
    if info["modality"] == "fluorescence":
        lines.append("                 the default model is for brightfield H&E: `nucseg predict` refuses this "
                     "slide unless given --allow-fluorescence")
    meta = info["metadata"]
    extras = [f"{key} {meta[key]}" for key in ("compression", "tile", "dtype") if meta.get(key) not in (None, "")]
    if extras:
        lines.append(f"  storage        {', '.join(str(e) for e in extras)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from nucseg.io.slides import input_kind, list_images

    paths: list[Path] = []
    for path in args.paths:
        if input_kind(path) == "folder":
            found = list_images(path)
            if not found:
                raise SlideReadError(path, "is a folder with no slide, image or DICOM files",
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
