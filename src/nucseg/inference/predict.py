"""`iter_predict`: segment an image or a slide region block by block, yielding progress; returns the result.

Small inputs (up to one block) are predicted and post-processed whole, so the tiled result is the
whole-image result. Larger ones go block by block with a halo: each block's nuclei are kept only if their
centre lies in the block's core, so a nucleus cut by a block border is taken whole from one block and
never duplicated. Each block fixes its squeeze-excitation gates once, on one window (nucseg.inference.calibration),
so its tiles agree with each other. Slides stream into chunked zarr, so memory does not grow with the slide.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

from nucseg.config import InferenceConfig, PostprocessConfig
from nucseg.errors import StoreError
from nucseg.inference.calibration import (
    CALIBRATION_SIZE,
    add_window_tile,
    centre_window,
    tissue_window,
    with_image_gates,
)
from nucseg.inference.forward import predict_batch
from nucseg.inference.postprocess import probabilities_to_instances
from nucseg.inference.source import ScaledSource
from nucseg.inference.stitching import BlendCanvas
from nucseg.inference.tiling import Tile, fitted_tile, iter_batches, tile_grid
from nucseg.inference.tissue import tile_has_tissue

if TYPE_CHECKING:
    from nucseg.io.slides import Slide

#: context read around each block; nuclei are far smaller, so any nucleus touching a core is seen whole
HALO = 64


@dataclasses.dataclass
class PredictProgress:
    """One progress record: tiles done out of total, and what is happening."""

    done: int
    total: int
    stage: str = "predicting"
    block: int = 0
    blocks: int = 1

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


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


def _blocks(shape: tuple[int, int], block: int) -> list[tuple[int, int, int, int]]:
    return [(y, x, min(block, shape[0] - y), min(block, shape[1] - x))
            for y in range(0, shape[0], block) for x in range(0, shape[1], block)]


def _block_tiles(box, tile: int, overlap: int, shape, halo: int):
    """The padded read box around a block, its tile grid (coordinates relative to the region) and tile side (at
    most `tile`, see `fitted_tile`)."""
    y, x, h, w = box
    ry0, rx0 = max(y - halo, 0), max(x - halo, 0)
    ry1, rx1 = min(y + h + halo, shape[0]), min(x + w + halo, shape[1])
    tile = fitted_tile((ry1 - ry0, rx1 - rx0), tile, overlap)
    read = (ry0, rx0, max(ry1 - ry0, tile), max(rx1 - rx0, tile))
    tiles = [Tile(t.y0 + ry0, t.x0 + rx0, t.y1 + ry0, t.x1 + rx0) for t in tile_grid(read[2:], tile, overlap)]
    return read, tiles, tile


def _calibration_window(box: tuple[int, int, int, int], tissue) -> tuple[int, int]:
    """Where a block's squeeze-excitation gates are measured: its centre, or on a slide its window with most
    tissue (see nucseg.inference.calibration)."""
    if tissue is None or max(box[2:]) <= CALIBRATION_SIZE:
        return tuple(v + o for v, o in zip(centre_window(box[2:]), box[:2]))
    return tissue_window(box, tissue[0], tissue[1])


def _window_pixels(source: ScaledSource, pixels: np.ndarray, read, window: tuple[int, int]) -> np.ndarray:
    """The calibration window's pixels: cut from the block's pixels when it lies inside them (the usual case: no
    second read, and exactly the pixels its tiles see), else read (a block smaller than the window)."""
    ry, rx, rh, rw = read
    y, x = window[0] - ry, window[1] - rx
    if y >= 0 and x >= 0 and y + CALIBRATION_SIZE <= rh and x + CALIBRATION_SIZE <= rw:
        return pixels[y : y + CALIBRATION_SIZE, x : x + CALIBRATION_SIZE]
    return source.read(*window, CALIBRATION_SIZE, CALIBRATION_SIZE)


def _open_outputs(out: str | Path | None, label_shape, prob_shape):
    if out is None:
        return np.zeros(label_shape, np.uint32), np.zeros((3, *prob_shape), np.float32)
    import zarr

    root = zarr.open_group(str(out), mode="w-")
    labels = root.create_array("labels", shape=label_shape, chunks=(1024, 1024), dtype="uint32", fill_value=0)
    probs = root.create_array("probabilities", shape=(3, *prob_shape), chunks=(3, 1024, 1024), dtype="uint8",
                              fill_value=0)
    return labels, probs


def iter_predict(
    image: np.ndarray | Slide,
    config: InferenceConfig | None = None,
    *,
    mpp: float | None = None,
    region: tuple[int, int, int, int] | None = None,
    out: str | Path | None = None,
    stop: threading.Event | None = None,
) -> Generator[PredictProgress, None, PredictionResult]:
    """Segment nuclei in an image or a slide region.

    Args:
        image: an (H, W, 3) RGB array, or a `nucseg.io.slides.Slide`.
        config: model, device, tiling and thresholds.
        mpp: microns per pixel of `image` (slides know theirs); None assumes the model's resolution.
        region: (y, x, h, w) in level-0 pixels; None = everything.
        out: a new zarr folder to stream labels and probabilities into (required in practice for whole
            slides); None keeps them in memory.
        stop: when set, the run ends after the current batch; the result holds what was done.

    Yields:
        `PredictProgress` after every batch of tiles, and before each block's post-processing.

    Returns:
        `PredictionResult`.
    """
    from nucseg.models.build import load_network
    from nucseg.models.device import select_device
    from nucseg.models.registry import resolve_model

    config = config or InferenceConfig()
    if out is not None and Path(out).exists():
        raise StoreError(f"{out} already exists: predictions are never written over; choose a new output folder")
    t0 = time.perf_counter()
    spec = resolve_model(config.model)
    device = select_device(config.device)
    net = load_network(spec, device, runtime=config.runtime)
    source = ScaledSource(image, spec.mpp, mpp, region)
    tiling = config.tiling
    single = max(source.shape) <= config.block_size
    blocks = [(0, 0, *source.shape)] if single else _blocks(source.shape, config.block_size)
    halo = 0 if single else max(HALO, tiling.overlap)
    tissue = source.tissue_mask() if config.skip_background else None
    plan = []
    for box in blocks:
        read, tiles, tile = _block_tiles(box, tiling.tile_size, tiling.overlap, source.shape, halo)
        if tissue is not None:
            tiles = [t for t in tiles if tile_has_tissue(tissue[0], tissue[1], t.y0, t.x0, t.y1 - t.y0, t.x1 - t.x0)]
        plan.append((box, read, tiles, tile))
    total = sum(len(p[2]) for p in plan)
    label_shape = source.region0[2:]
    labels_out, probs_out = _open_outputs(out, label_shape, source.shape)
    done, next_id, stopped = 0, 1, False
    yield PredictProgress(0, total, "starting", 0, len(plan))
    for index, (box, read, tiles, tile) in enumerate(plan, start=1):
        if not tiles:
            continue
        ry, rx, rh, rw = read
        pixels = source.read(ry, rx, rh, rw)
        window = _calibration_window(box, tissue)
        gated, window_probs = with_image_gates(net, _window_pixels(source, pixels, read, window), spec, device)
        canvas = BlendCanvas((rh, rw), len(spec.heads), tile, tiling.overlap, origin=(ry, rx))
        todo = add_window_tile(canvas, tiles, window, window_probs, config.tta)
        done += len(tiles) - len(todo)
        for batch_tiles in iter_batches(todo, tiling.batch_size):
            if stop is not None and stop.is_set():
                stopped = True
                break
            batch = np.stack([pixels[t.y0 - ry : t.y1 - ry, t.x0 - rx : t.x1 - rx] for t in batch_tiles])
            for t, p in zip(batch_tiles, predict_batch(gated, batch, spec, device, tta=config.tta)):
                canvas.add(t, p)
            done += len(batch_tiles)
            yield PredictProgress(done, total, "predicting", index, len(plan))
        if not stopped:
            yield PredictProgress(done, total, "separating nuclei", index, len(plan))
        # on Stop, the tiles already done in this block still count: pixels no tile covered stay background
        probs = canvas.result()[:, : min(rh, source.shape[0] - ry), : min(rw, source.shape[1] - rx)]
        # only where tiles ran: on a slide that is mostly glass, most of a block was never predicted
        y0, x0 = min(t.y0 for t in tiles) - ry, min(t.x0 for t in tiles) - rx
        y1, x1 = max(t.y1 for t in tiles) - ry, max(t.x1 for t in tiles) - rx
        inst = probabilities_to_instances(probs[:, y0:y1, x0:x1], config.postprocess)
        next_id = _write_block(inst, probs, box, read, (ry + y0, rx + x0), source, labels_out, probs_out, next_id,
                               out is not None)
        if stopped:
            break
    result = PredictionResult(
        labels=labels_out, probabilities=probs_out, region=source.region0, mpp=source.mpp0 if (mpp or source.slide) else None,
        model_mpp=spec.mpp, n_nuclei=next_id - 1, config=config, seconds=time.perf_counter() - t0,
        stopped=stopped,
        model_info={"name": spec.name, "sha256": spec.sha256, "runtime": getattr(net, "runtime", "pytorch")},
    )
    return result


def _write_block(inst, probs, box, read, inst_origin, source: ScaledSource, labels_out, probs_out, next_id: int,
                 quantise: bool) -> int:
    """Write a block's nuclei (`inst`, whose top-left is `inst_origin`; see `_write_labels`) and the core of
    its probabilities (`probs`, which cover the read box)."""
    by, bx, bh, bw = box
    ry, rx = read[:2]
    core = probs[:, by - ry : by - ry + bh, bx - rx : bx - rx + bw]
    probs_out[:, by : by + bh, bx : bx + bw] = np.round(core * 255).astype(np.uint8) if quantise else core
    return _write_labels(inst, box, inst_origin, source, labels_out, next_id)


def _write_labels(inst, box, origin, source, labels_out, next_id: int) -> int:
    """Keep the nuclei whose centre lies in the block's core, renumber them globally, write them at level 0."""
    by, bx, bh, bw = box
    ry, rx = origin
    n = int(inst.max())
    if n:
        # all of `inst` inside the core (an image of one block): every centre is too, no need to measure them
        if by <= ry and bx <= rx and ry + inst.shape[0] <= by + bh and rx + inst.shape[1] <= bx + bw:
            keep = np.ones(n, bool)
        else:
            centres = np.array(ndi.center_of_mass(np.ones_like(inst), inst, index=np.arange(1, n + 1)))
            cy, cx = centres[:, 0] + ry, centres[:, 1] + rx
            keep = (cy >= by) & (cy < by + bh) & (cx >= bx) & (cx < bx + bw)
        lut = np.zeros(n + 1, dtype=np.uint32)
        lut[1:][keep] = np.arange(next_id, next_id + int(keep.sum()), dtype=np.uint32)
        inst = lut[inst]
        next_id += int(keep.sum())
    # level-0 box of the read area; nuclei spilling over the core are written where no other block wrote
    y0, x0 = source.to_level0(ry, rx)
    y1, x1 = source.to_level0(ry + inst.shape[0], rx + inst.shape[1])
    oy, ox = source.region0[:2]
    if source.resampled:
        inst = resize(inst, (y1 - y0, x1 - x0), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint32)
    sl = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
    current = np.asarray(labels_out[sl])
    labels_out[sl] = np.where(current == 0, inst, current)
    return next_id


def reapply_postprocess(result: PredictionResult, postprocess: PostprocessConfig) -> PredictionResult:
    """New instances from the cached probabilities with other thresholds: no network run (DESIGN.md rule 8).

    In-memory results are re-done whole; zarr-backed ones block by block into a "labels-tuned" array beside the
    run's original "labels", which is never overwritten (the tuned array is replaced on each change).
    """
    config = dataclasses.replace(result.config, postprocess=postprocess)
    probs = result.probabilities
    if isinstance(probs, np.ndarray):
        inst = probabilities_to_instances(probs, postprocess)
        if inst.shape != tuple(result.labels.shape):
            inst = resize(inst, result.labels.shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.uint32)
        return dataclasses.replace(result, labels=inst, n_nuclei=int(inst.max()), config=config)
    import zarr

    shape = probs.shape[1:]
    source = _ResultGeometry(result, shape)
    group = zarr.open_group(probs.store, mode="a")
    # one derived array, replaced on each threshold change, beside the run's original "labels" (kept as is)
    labels = group.create_array("labels-tuned", shape=result.labels.shape, chunks=(1024, 1024), dtype="uint32",
                                fill_value=0, overwrite=True)
    halo = max(HALO, config.tiling.overlap)
    next_id = 1
    for box in _blocks(shape, config.block_size):
        y, x, h, w = box
        ry0, rx0 = max(y - halo, 0), max(x - halo, 0)
        block_probs = np.asarray(probs[:, ry0 : min(y + h + halo, shape[0]), rx0 : min(x + w + halo, shape[1])])
        inst = probabilities_to_instances(block_probs, postprocess)
        next_id = _write_labels(inst, box, (ry0, rx0), source, labels, next_id)
    return dataclasses.replace(result, labels=labels, n_nuclei=next_id - 1, config=config)


class _ResultGeometry:
    """The mapping from model pixels to level-0 pixels of an earlier result (what `_write_labels` needs)."""

    def __init__(self, result: PredictionResult, model_shape: tuple[int, int]):
        self.region0 = result.region
        self.factor = result.region[2] / model_shape[0]
        self.resampled = abs(self.factor - 1.0) > 1e-9

    def to_level0(self, y: float, x: float) -> tuple[int, int]:
        return self.region0[0] + round(y * self.factor), self.region0[1] + round(x * self.factor)


def predict(image, config: InferenceConfig | None = None, **kwargs) -> PredictionResult:
    """Run `iter_predict` to the end and return its result."""
    gen = iter_predict(image, config, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value
