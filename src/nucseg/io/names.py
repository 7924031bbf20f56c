"""The one naming rule for the package's files: the stem an input's outputs take, and the stem two files pair by.

`plain_stem` strips only a known image, slide or array suffix, so every other dot is part of the name
(`a.1.png` -> `a.1`, `x.ome.tif` -> `x`). `pair_stem` then drops one role tag (`_labels`, `_mask`, `_prob`...), so an
image pairs with its labels, masks and probability maps (`tile1.png`, `tile1_labels.tif`). `nucseg predict` names
its outputs by `plain_stem`; `nucseg evaluate` and fine-tuning pair files by `pair_stem`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["KNOWN_SUFFIXES", "PAIR_TAGS", "pair_stem", "plain_stem"]

#: file name endings stripped to make a stem (longest first, case-insensitive); other dots are kept
KNOWN_SUFFIXES = tuple(sorted((".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".svs", ".ndpi", ".scn", ".mrxs",
                               ".bif", ".vms", ".vmu", ".svslide", ".dcm", ".zarr", ".png", ".jpg", ".jpeg", ".npy"),
                              key=len, reverse=True))
#: role tags at the end of a stem that pairing ignores (one is dropped): labels, masks, probability maps
PAIR_TAGS = ("_labels", "_label", "_masks", "_mask", "_reviewed", "_probabilities", "_prob")


def plain_stem(path: str | Path) -> str:
    """The file name without its image or slide suffix: `a.1.png` -> `a.1`, `x.ome.tif` -> `x`."""
    name = Path(path).name
    lower = name.lower()
    for suffix in KNOWN_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return name[: -len(suffix)]
    return name


def pair_stem(path: str | Path) -> str:
    """The name two files pair by: `plain_stem` without a trailing role tag (`tile1_labels.tif` -> `tile1`,
    `a.1_mask.png` -> `a.1`)."""
    stem = plain_stem(path)
    for tag in PAIR_TAGS:
        if stem.endswith(tag) and len(stem) > len(tag):
            return stem[: -len(tag)]
    return stem
