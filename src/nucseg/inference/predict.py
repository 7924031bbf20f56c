"""`iter_predict`: segment an image or a slide region block by block, yielding progress; returns the result.

The one engine (CLI, widgets, validation, fine-tuning): the run is planned first
(`nucseg.inference.plan.plan_prediction`: the image's tile grid over the region and its halo, tissue, blocks,
gate windows, batches), then each block is run (`nucseg.inference.blocks`; a tile over a block border is
computed once, `nucseg.inference.tile_store`) and written in block order (`write_block`); a distributed runner
calls the same functions. Small inputs (up to one block) are predicted and post-processed whole, so the tiled
result is the whole-image result. Larger ones go block by block with a halo: each block's nuclei are kept only if
their centre lies in the block's core, so a nucleus cut by a block border is taken whole from one block and never
duplicated. Every tile runs with the image's squeeze-excitation gates, measured once from the image alone
(nucseg.inference.calibration), so the probabilities are one seamless map whichever block, region or tile size
reads them. Slides stream into chunked zarr, so memory does not grow with the slide. `predict_probabilities` is
the same run without the watershed, for validation and training.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from skimage.transform import resize

from nucseg.config import InferenceConfig, PostprocessConfig, TilingConfig
from nucseg.errors import StoreError
from nucseg.inference.blocks import (
    BlockOutput,
    Predictor,
    block_core,
    finish_block,
    iter_block_probabilities,
    keep_core_nuclei,
    labels_at_level0,
    load_predictor,
    paste_labels,
    run_block,
    write_block,
)
from nucseg.inference.plan import HALO, PredictionPlan, block_boxes, plan_prediction
from nucseg.inference.postprocess import probabilities_to_instances
from nucseg.inference.result_store import create_result_store, tuned_labels
from nucseg.inference.source import LevelGeometry, level0_factor
from nucseg.inference.tile_store import TileStore
from nucseg.progress import Progress, drive, relay

if TYPE_CHECKING:
    from nucseg.io.slides import Slide

#: most post-processing worker processes a run starts
MAX_WORKERS = 8

__all__ = ["BlockOutput", "PredictProgress", "PredictionPlan", "PredictionResult", "Predictor", "iter_predict",
           "iter_probabilities", "load_predictor", "plan_prediction", "predict", "predict_probabilities", "reapply_postprocess", "run_block", "write_block"]


#: the progress record of a run (tiles done of the run's total, the stage, the block): the core's one record type
PredictProgress = Progress


@dataclasses.dataclass
class PredictionResult:
    """Nuclei and probabilities for a region.

    Attributes:
        labels: uint32 instance labels at level-0 resolution of the region (numpy, or zarr for big regions).
        probabilities: (3, h, w) foreground / contour / distance at the model's resolution (float32 numpy,
            or uint8 zarr scaled to 0..255).
        region: (y, x, h, w) of the region in level-0 pixels.
        mpp: microns per pixel of `labels`; model_mpp: of `probabilities`.
        n_nuclei: number of nuclei; config: the settings used; seconds: wall time; stopped: cut short.
        geometry: how the probabilities' pixels map to the labels' (None for results made elsewhere).
    """

    labels: Any
    probabilities: Any
    region: tuple[int, int, int, int]
    mpp: float | None
    model_mpp: float
    n_nuclei: int
    config: InferenceConfig
    seconds: float
    stopped: bool = False
    model_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    geometry: Any = None


def _open_outputs(out: str | Path | None, label_shape, prob_shape):
    if out is None:
        return np.zeros(label_shape, np.uint32), np.zeros((3, *prob_shape), np.float32)
    return create_result_store(out, label_shape, prob_shape)


def iter_predict(
    image: np.ndarray | Slide,
    config: InferenceConfig | None = None,
    *,
    mpp: float | None = None,
    region: tuple[int, int, int, int] | None = None,
    out: str | Path | None = None,
    stop: threading.Event | None = None,
    workers: int | None = None,
) -> Generator[PredictProgress, None, PredictionResult]:
    """Segment nuclei in an image or a slide region: `plan_prediction`, then `run_block` and `write_block` for
    each block in turn.

    Args:
        image: an (H, W, 3) RGB array, or a `nucseg.io.slides.Slide`.
        config: model, device, tiling and thresholds.
        mpp: microns per pixel of `image` (slides know theirs); None assumes the model's resolution.
        region: (y, x, h, w) in level-0 pixels; None = everything.
        out: a new zarr folder to stream labels and probabilities into (required in practice for whole
            slides); None keeps them in memory.
        stop: when set, the run ends after the current batch; the result holds what was done.
        workers: processes that separate nuclei while the network predicts the next block (same labels as 0,
            which does it in between); None: `postprocess_workers` (a pool on an accelerator, none on the CPU,
            where the network already uses every core).

    Yields:
        `PredictProgress` before each slow step (loading the model, finding tissue, reading and calibrating a
        block, separating its nuclei) and after every batch of tiles.

    Returns:
        `PredictionResult`.
    """
    config = config or InferenceConfig()
    if out is not None and Path(out).exists():
        raise StoreError(f"{out} already exists: predictions are never written over; choose a new output folder")
    t0 = time.perf_counter()
    yield PredictProgress(0, 0, "loading model")
    # the model loads (seconds, the first time) while the tissue is found: the two overlap
    loading = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nucseg-load")
    future = loading.submit(load_predictor, config)
    loading.shutdown(wait=False)
    try:
        yield PredictProgress(0, 0, "finding tissue" if config.skip_background else "planning")
        plan = plan_prediction(image, config, mpp=mpp, region=region)
    finally:
        if not future.done():
            yield PredictProgress(0, 0, "loading model")
        predictor = future.result()
    total, blocks = plan.total, len(plan.blocks)
    labels_out, probs_out = _open_outputs(out, plan.label_shape, plan.shape)
    probs_dtype = probs_out.dtype
    done, next_id, stopped = 0, 1, False
    store = TileStore(plan, predictor)
    n_workers = postprocess_workers(predictor.device) if workers is None else int(workers)
    runnable = [b for b in plan.blocks if b.tiles]
    pool = _postprocess_pool(n_workers) if n_workers > 0 and len(runnable) > 1 else None
    pending: collections.deque = collections.deque()  # post-processing in the pool, in block order
    yield PredictProgress(0, total, "starting", 0, blocks)
    try:
        for block in runnable:
            if stop is not None and stop.is_set():
                stopped = True
                break
            probs, block_done, block_stopped = yield from relay(
                iter_block_probabilities(plan, block.index, predictor, stop=stop, store=store),
                lambda r, d=done, b=block.index + 1: Progress(d + r.done, total, r.stage, block=b, blocks=blocks))
            done += block_done
            store.release(block.index)
            job = (block, probs, plan.config.postprocess, plan.source.geometry, probs_dtype, block_done, block_stopped)
            if pool is None:
                if not block_stopped:
                    yield PredictProgress(done, total, "separating nuclei", block.index + 1, blocks)
                next_id = write_block(plan, finish_block(*job), labels_out, probs_out, next_id)
            else:
                # the network goes on with the next block while workers separate this one's nuclei; blocks are
                # written in order, so the labels are the serial run's
                pending.append(pool.submit(finish_block, *job))
                while pending and (pending[0].done() or len(pending) > 2 * n_workers):
                    next_id = write_block(plan, pending.popleft().result(), labels_out, probs_out, next_id)
            del job, probs  # a block's maps are not held while the next block's tiles run (bench_memory)
            if block_stopped:
                stopped = True
                break
        if pending:
            yield PredictProgress(done, total, "separating nuclei", blocks, blocks)
        while pending:
            next_id = write_block(plan, pending.popleft().result(), labels_out, probs_out, next_id)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    source = plan.source
    return PredictionResult(
        labels=labels_out, probabilities=probs_out, region=source.region0, mpp=source.mpp_given,
        model_mpp=plan.spec.mpp, n_nuclei=next_id - 1, config=plan.config, seconds=time.perf_counter() - t0,
        stopped=stopped, model_info={"name": plan.spec.name, "sha256": plan.spec.sha256,
                                     "runtime": predictor.runtime},
        geometry=source.geometry,
    )


def reapply_postprocess(result: PredictionResult, postprocess: PostprocessConfig) -> PredictionResult:
    """New instances from the cached probabilities with other thresholds: no network run (DESIGN.md rule 8).

    In-memory results are re-done whole; zarr-backed ones block by block into a "labels-tuned" array beside the
    run's original "labels", which is never overwritten (the tuned array is replaced on each change).
    """
    if not postprocess.complete:  # settings left to the model: its own, as the run that made `result` took them
        from nucseg.models.registry import resolve_model

        postprocess = postprocess.resolved(resolve_model(result.config.model).postprocess_defaults)
    config = dataclasses.replace(result.config, postprocess=postprocess)
    probs = result.probabilities
    if isinstance(probs, np.ndarray):
        inst = probabilities_to_instances(probs, postprocess)
        if inst.shape != tuple(result.labels.shape):
            inst = resize(inst, result.labels.shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.uint32)
        return dataclasses.replace(result, labels=inst, n_nuclei=int(inst.max()), config=config)
    shape = probs.shape[1:]
    source = result.geometry if result.geometry is not None else _result_geometry(result, shape)
    # one derived array, replaced on each threshold change, beside the run's original "labels" (kept as is)
    labels = tuned_labels(probs, result.labels.shape)
    halo = max(HALO, config.tiling.overlap)
    next_id = 1
    for box in block_boxes(shape, config.block_size):
        y, x, h, w = box
        ry0, rx0 = max(y - halo, 0), max(x - halo, 0)
        block_probs = np.asarray(probs[:, ry0 : min(y + h + halo, shape[0]), rx0 : min(x + w + halo, shape[1])])
        inst = probabilities_to_instances(block_probs, postprocess)
        kept, n = keep_core_nuclei(inst, box, (ry0, rx0))
        kept, labels_box = labels_at_level0(kept, (ry0, rx0), source)
        paste_labels(labels, kept, labels_box, next_id)
        next_id += n
    from nucseg.jobs.slide_patches import max_id, replay_patches

    labels.attrs["nucseg_max_id"] = next_id - 1
    if replay_patches(result.labels, labels):  # patches a person accepted into the slide result stay as accepted
        next_id = max_id(labels) + 1
    return dataclasses.replace(result, labels=labels, n_nuclei=next_id - 1, config=config)


def _result_geometry(result: PredictionResult, model_shape: tuple[int, int]):
    """The mapping from model pixels to level-0 pixels of a result that does not carry its own (approximate: the
    model grid is taken from the region's corner)."""
    factor = level0_factor(result.mpp or result.model_mpp, result.model_mpp)  # the run's, else the model's
    origin = (round(result.region[0] / factor), round(result.region[1] / factor))
    return LevelGeometry(tuple(result.region), factor, origin, tuple(model_shape))


def postprocess_workers(device: Any) -> int:
    """Worker processes for post-processing: on an accelerator the cores the network leaves free (up to
    `MAX_WORKERS`); on the CPU none, since the network's threads use every core."""
    if getattr(device, "type", str(device)) == "cpu":
        return 0
    return max(1, min(MAX_WORKERS, (os.cpu_count() or 2) - 2))


def _postprocess_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    # spawned, not forked: the parent holds torch's and the reader's threads
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def iter_probabilities(
    predictor: Predictor,
    image: np.ndarray | Any,
    tiling: TilingConfig,
    *,
    tta: bool = False,
    mpp: float | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """The network's blended (C, H, W) float32 probabilities for an image, at the model's resolution: the plan
    and the blocks of `iter_predict` (same tiles, gates and background skipping), without post-processing.
    Yields `Progress` (tiles done of the total) after every batch."""
    config = InferenceConfig(model=str(predictor.spec.name), tiling=tiling, tta=tta)
    plan = plan_prediction(image, config, mpp=mpp, spec=predictor.spec)
    out = np.zeros((len(predictor.spec.heads), *plan.shape), np.float32)
    store = TileStore(plan, predictor)
    done = 0
    for block in plan.blocks:
        if not block.tiles:
            continue
        probs, block_done, _ = yield from relay(
            iter_block_probabilities(plan, block.index, predictor, store=store),
            lambda r, d=done: Progress(d + r.done, plan.total, r.stage) if r.stage == "predicting" else None)
        by, bx, bh, bw = block.box
        out[:, by : by + bh, bx : bx + bw] = block_core(plan, block.index, probs)
        store.release(block.index)
        done += block_done
    return out


def predict_probabilities(
    net: Any,
    image: np.ndarray,
    spec: Any,
    device: Any,
    tiling: TilingConfig,
    tta: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> np.ndarray:
    """(C, H, W) probabilities of a whole in-memory image with `net` (e.g. a network in training, in eval mode):
    `iter_probabilities` run to its end; `on_progress` gets its `Progress` records."""
    return drive(iter_probabilities(Predictor(spec, device, net), image, tiling, tta=tta), on_progress)


def predict(image, config: InferenceConfig | None = None, **kwargs) -> PredictionResult:
    """Run `iter_predict` to the end and return its result."""
    return drive(iter_predict(image, config, **kwargs))
