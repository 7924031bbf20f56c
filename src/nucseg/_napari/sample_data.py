"""napari sample data: a real H&E breast tile (MoNuSeg, 0.25 µm/px) with its expert nuclei annotation."""

from __future__ import annotations

from typing import Any

from nucseg.io.masks import read_labels
from nucseg.io.sample import sample_info, sample_paths
from nucseg.io.slides import read_image


def make_sample_data() -> list[tuple[Any, dict[str, Any], str]]:
    """The sample tile as an RGB image layer and its ground truth as a labels layer, both at 0.25 µm/px."""
    image_path, labels_path = sample_paths()
    info = sample_info()
    mpp = float(info["mpp"])
    scale = (mpp, mpp)
    metadata = {"nucseg_path": str(image_path), "mpp": mpp, "format": "png", "source": info["source"],
                "box": info["box"], "license": "CC BY-NC-SA 4.0 (MoNuSeg, Kumar et al., IEEE TMI 2017 / 2019)"}
    return [
        (read_image(image_path), {"name": "H&E breast (MoNuSeg)", "rgb": True, "scale": scale, "metadata": metadata},
         "image"),
        (read_labels(labels_path), {"name": "ground truth", "scale": scale, "opacity": 0.5,
                                    "metadata": {"nucseg_path": str(labels_path), "mpp": mpp}}, "labels"),
    ]
