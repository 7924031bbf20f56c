"""(d) Time vs tissue fraction: background tiles are skipped, so time should follow the tissue, not the slide."""

from __future__ import annotations

import time

import torch

from _common import default_model_name, emit
from make_slides import slide_with_tissue
from nucseg.config import InferenceConfig
from nucseg.inference.predict import predict
from nucseg.io.slides import open_slide

SIZE = 4096


def main() -> None:
    torch.set_num_threads(2)
    model = default_model_name()
    rows = {}
    for fraction in (0.1, 0.25, 0.5, 1.0):
        slide = open_slide(slide_with_tissue(SIZE, fraction))
        t0 = time.perf_counter()
        res = predict(slide, InferenceConfig(model=model, device="cpu"))
        rows[str(fraction)] = {"seconds": round(time.perf_counter() - t0, 2), "nuclei": res.n_nuclei}
    full = rows["1.0"]["seconds"]
    emit("tissue", {"model": model, "size": SIZE, "runs": rows,
                    "time_ratio_vs_full": {k: round(v["seconds"] / full, 3) for k, v in rows.items()}})


if __name__ == "__main__":
    main()
