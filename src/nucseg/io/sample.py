"""The sample H&E tile shipped with the package (a 512 x 512 crop of MoNuSeg tile TCGA-E2-A14V-01Z-00-DX1, with
its instance ground truth, 0.25 µm per pixel, CC BY-NC-SA 4.0: see sample_data/README.md)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from nucseg.errors import SlideReadError

IMAGE_NAME = "he_breast_monuseg.png"
LABELS_NAME = "he_breast_monuseg_labels.png"
INFO_NAME = "he_breast_monuseg.json"


def sample_dir() -> Path:
    """The folder holding the sample files: ``nucseg/sample_data`` in the installed package, else the
    repository's top-level ``sample_data`` (a source checkout whose symlink was lost).

    Raises:
        SlideReadError: neither folder holds the sample image.
    """
    candidates = []
    package = resources.files("nucseg") / "sample_data"
    if isinstance(package, Path):
        candidates.append(package)
    candidates.append(Path(__file__).resolve().parents[3] / "sample_data")
    for folder in candidates:
        if (folder / IMAGE_NAME).is_file():
            return folder
    raise SlideReadError(candidates[0], "the sample data is missing from this installation",
                         "reinstall napari-nucseg")


def sample_paths() -> tuple[Path, Path]:
    """(image path, instance labels path) of the sample tile."""
    folder = sample_dir()
    return folder / IMAGE_NAME, folder / LABELS_NAME


def sample_info() -> dict[str, Any]:
    """Where the sample comes from: ``{"source", "source_tile", "box": [y0, x0, y1, x1], "mpp", "nuclei"}``."""
    return json.loads((sample_dir() / INFO_NAME).read_text())
