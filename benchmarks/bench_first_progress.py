"""Time to the first progress records of `iter_predict` on a real slide, in a fresh process (model not cached).

    python benchmarks/bench_first_progress.py [SLIDE]

Prints each record's stage and seconds since `iter_predict` was called, up to the first tiles done, and the
seconds to the first record and to the first tiles done (what a user waits before the bar moves).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from _common import ROOT, default_model_name, emit

DEFAULT_SLIDE = ROOT.parent / "shared" / "data" / "slides" / "small_HE.svs"


def main() -> None:
    import torch

    torch.set_num_threads(2)
    from nucseg.config import InferenceConfig
    from nucseg.inference.predict import iter_predict
    from nucseg.io.slides import open_slide

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SLIDE
    records = []
    with open_slide(path) as slide:
        t0 = time.perf_counter()
        gen = iter_predict(slide, InferenceConfig(model=default_model_name(), device="cpu"))
        for record in gen:
            records.append((round(time.perf_counter() - t0, 2), record.stage, record.done, record.total))
            print(*records[-1], flush=True)
            if record.done > 0:
                break
        gen.close()
    emit("first_progress", {"slide": path.name, "records": records, "first_record_s": records[0][0],
                            "first_tiles_s": records[-1][0], "tiles": records[-1][3]})


if __name__ == "__main__":
    main()
