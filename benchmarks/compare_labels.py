"""Agreement of two label maps (.npy, .tif or .png): object F1 (IoU >= 0.5) and pixel Dice of the foreground.

    python benchmarks/compare_labels.py A B
"""

from __future__ import annotations

import json
import sys

import numpy as np


def load(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path)
    import tifffile

    if path.endswith((".tif", ".tiff")):
        return tifffile.imread(path)
    from PIL import Image

    return np.asarray(Image.open(path))


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    from nucseg.metrics.matching import object_metrics

    fa, fb = a > 0, b > 0
    dice = 2 * np.logical_and(fa, fb).sum() / max(fa.sum() + fb.sum(), 1)
    return {"object_f1": round(float(object_metrics(a, b)["f1"]), 4), "pixel_dice": round(float(dice), 4),
            "nuclei": [int(len(np.unique(a)) - 1), int(len(np.unique(b)) - 1)]}


if __name__ == "__main__":
    print(json.dumps(agreement(load(sys.argv[1]), load(sys.argv[2]))))
