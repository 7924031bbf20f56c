"""One block of a plan: read, calibrate, predict its tiles, separate its nuclei (`run_block`); then write it
into the run's outputs (`write_block`).

`run_block` depends only on the plan, the block's index and the network, and returns a small picklable
`BlockOutput`, so blocks may run in any order, in other threads or processes; `write_block`, called in block
order, numbers the nuclei and writes them, which gives the labels of a serial run exactly.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

from nucseg.inference.calibration import CALIBRATION_SIZE, add_window_tile, with_image_gates
from nucseg.inference.forward import predict_batch
from nucseg.inference.plan import Box, PredictionPlan
from nucseg.inference.postprocess import probabilities_to_instances
from nucseg.inference.stitching import BlendCanvas
from nucseg.inference.tiling import iter_batches

if TYPE_CHECKING:
    import torch

    from nucseg.config import InferenceConfig
    from nucseg.inference.source import ScaledSource


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A loaded network and what it needs to run: load once (`load_predictor`), reuse for every block and input.

    Attributes:
        spec: the model's spec; device: where it runs; net: the network (eval mode).
    """

    spec: Any
    device: torch.device
    net: Any

    @property
    def runtime(self) -> str:
        """What runs the network ("pytorch" unless the network says otherwise)."""
        return str(getattr(self.net, "runtime", "pytorch"))


def load_predictor(config: InferenceConfig) -> Predictor:
    """The network of `config.model` on `config.device` (cached by `load_network`)."""
    from nucseg.models.build import load_network
    from nucseg.models.device import select_device
    from nucseg.models.registry import resolve_model

    spec = resolve_model(config.model)
    device = select_device(config.device)
    return Predictor(spec, device, load_network(spec, device))


@dataclasses.dataclass
class BlockOutput:
    """What one block produced (small and picklable).

    Attributes:
        index: the block's index in the plan.
        labels: uint32 nuclei whose centre lies in the block's core, numbered 1..n, at level 0; None when the
            block ran no tile.
        labels_box: (y0, x0, y1, x1) of `labels` in level-0 pixels relative to the region.
        n: number of nuclei in `labels`.
        probabilities: (C, h, w) probabilities of the block's core at the model's resolution (float32 in [0, 1],
            or uint8 scaled to 0..255); None when the block ran no tile.
        tiles_done: tiles predicted; stopped: the run was stopped inside this block.
    """

    index: int
    labels: np.ndarray | None = None
    labels_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    n: int = 0
    probabilities: np.ndarray | None = None
    tiles_done: int = 0
    stopped: bool = False


def iter_block_probabilities(
    plan: PredictionPlan,
    index: int,
    predictor: Predictor,
    *,
    stop: threading.Event | None = None,
) -> Generator[tuple[str, int], None, tuple[np.ndarray, int, bool]]:
    """The blended probabilities of block `index` over its read box (clipped to the region), without
    post-processing. Yields (stage, tiles done in this block) before each slow step and after each batch;
    returns (probabilities, tiles done, stopped).

    The first tile of the plan's first block with tiles runs alone, so a run's progress moves after one tile, not
    a whole batch; that is part of the plan (a batch's make-up can change the last bits of a convolution), so
    every runner batches alike."""
    block = plan.blocks[index]
    config, source = plan.config, plan.source
    spec, device = predictor.spec, predictor.device
    tiling = config.tiling
    ry, rx, rh, rw = block.read
    yield "reading block", 0
    pixels = source.read(ry, rx, rh, rw)
    yield "calibrating", 0
    gated, window_probs = with_image_gates(predictor.net, _window_pixels(source, pixels, block.read, block.window),
                                           spec, device)
    canvas = BlendCanvas((rh, rw), len(spec.heads), tiling.tile_size, tiling.overlap, origin=(ry, rx))
    todo = add_window_tile(canvas, list(block.tiles), block.window, window_probs, config.tta)
    done, stopped = len(block.tiles) - len(todo), False
    batches = list(iter_batches(todo, tiling.batch_size))
    if index == plan.first_block and len(todo) > 1 and tiling.batch_size > 1:
        batches = [todo[:1], *iter_batches(todo[1:], tiling.batch_size)]
    for batch_tiles in batches:
        if stop is not None and stop.is_set():
            stopped = True
            break
        batch = np.stack([pixels[t.y0 - ry : t.y1 - ry, t.x0 - rx : t.x1 - rx] for t in batch_tiles])
        for t, p in zip(batch_tiles, predict_batch(gated, batch, spec, device, tta=config.tta)):
            canvas.add(t, p)
        done += len(batch_tiles)
        yield "predicting", done
    # on Stop, the tiles already done in this block still count: pixels no tile covered stay background
    H, W = source.shape
    return canvas.result()[:, : min(rh, H - ry), : min(rw, W - rx)], done, stopped


def iter_block(
    plan: PredictionPlan,
    index: int,
    predictor: Predictor,
    *,
    stop: threading.Event | None = None,
    probs_dtype: Any = np.float32,
) -> Generator[tuple[str, int], None, BlockOutput]:
    """`run_block` as a generator: yields (stage, tiles done in this block) before each slow step and after
    each batch; returns the `BlockOutput`."""
    block = plan.blocks[index]
    if not block.tiles:
        return BlockOutput(index)
    probs, done, stopped = yield from iter_block_probabilities(plan, index, predictor, stop=stop)
    if not stopped:
        yield "separating nuclei", done
    ry, rx = block.read[:2]
    # only where tiles ran: on a slide that is mostly glass, most of a block was never predicted
    y0, x0 = min(t.y0 for t in block.tiles) - ry, min(t.x0 for t in block.tiles) - rx
    y1, x1 = max(t.y1 for t in block.tiles) - ry, max(t.x1 for t in block.tiles) - rx
    inst = probabilities_to_instances(probs[:, y0:y1, x0:x1], plan.config.postprocess)
    labels, n = keep_core_nuclei(inst, block.box, (ry + y0, rx + x0))
    labels, labels_box = labels_at_level0(labels, (ry + y0, rx + x0), plan.source)
    return BlockOutput(index, labels, labels_box, n, convert_probabilities(block_core(plan, index, probs), probs_dtype),
                       done, stopped)


def block_core(plan: PredictionPlan, index: int, probs: np.ndarray) -> np.ndarray:
    """The part of a block's read-box probabilities that is its core."""
    block = plan.blocks[index]
    by, bx, bh, bw = block.box
    ry, rx = block.read[:2]
    return probs[:, by - ry : by - ry + bh, bx - rx : bx - rx + bw]


def run_block(
    plan: PredictionPlan,
    index: int,
    predictor: Predictor,
    *,
    stop: threading.Event | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    probs_dtype: Any = np.float32,
) -> BlockOutput:
    """Read, calibrate, predict and post-process block `index` of `plan`.

    Args:
        plan: from `plan_prediction` (in this process, or planned again from the same inputs in another).
        index: which block.
        predictor: from `load_predictor`.
        stop: when set, the block ends after the current batch (what was done is kept).
        on_batch: called with (tiles done in this block, tiles of this block) after every batch.
        probs_dtype: np.float32, or np.uint8 for probabilities scaled to 0..255 (a quarter of the size).

    Returns:
        `BlockOutput`.
    """
    gen = iter_block(plan, index, predictor, stop=stop, probs_dtype=probs_dtype)
    n_tiles = len(plan.blocks[index].tiles)
    while True:
        try:
            stage, done = next(gen)
        except StopIteration as finished:
            return finished.value
        if on_batch is not None and stage == "predicting":
            on_batch(done, n_tiles)


def write_block(plan: PredictionPlan, output: BlockOutput, labels_out: Any, probs_out: Any, next_id: int) -> int:
    """Write a block's probabilities and nuclei into the run's outputs; returns the next free nucleus id.

    Called in block order, the nuclei are numbered in the order of a serial run. Nuclei spilling over the core
    are written only where no earlier block wrote.
    """
    if output.labels is None:
        return next_id
    by, bx, bh, bw = plan.blocks[output.index].box
    probs_out[:, by : by + bh, bx : bx + bw] = convert_probabilities(output.probabilities, probs_out.dtype)
    paste_labels(labels_out, output.labels, output.labels_box, next_id)
    return next_id + output.n


def convert_probabilities(probs: np.ndarray, dtype: Any) -> np.ndarray:
    """Probabilities as float32 in [0, 1] or uint8 in 0..255."""
    dtype = np.dtype(dtype)
    if probs.dtype == dtype:
        return probs
    if dtype == np.uint8:
        return np.round(probs * 255).astype(np.uint8)
    return (probs.astype(np.float32) / 255.0).astype(dtype)


def keep_core_nuclei(inst: np.ndarray, box: Box, origin: tuple[int, int]) -> tuple[np.ndarray, int]:
    """The nuclei of `inst` (top-left at `origin`) whose centre lies in `box`, renumbered 1..n, and n."""
    by, bx, bh, bw = box
    ry, rx = origin
    n = int(inst.max())
    if not n:
        return inst.astype(np.uint32, copy=False), 0
    # all of `inst` inside the core (an image of one block): every centre is too, no need to measure them
    if by <= ry and bx <= rx and ry + inst.shape[0] <= by + bh and rx + inst.shape[1] <= bx + bw:
        return inst.astype(np.uint32, copy=False), n
    centres = np.array(ndi.center_of_mass(np.ones_like(inst), inst, index=np.arange(1, n + 1)))
    cy, cx = centres[:, 0] + ry, centres[:, 1] + rx
    keep = (cy >= by) & (cy < by + bh) & (cx >= bx) & (cx < bx + bw)
    lut = np.zeros(n + 1, dtype=np.uint32)
    kept = int(keep.sum())
    lut[1:][keep] = np.arange(1, kept + 1, dtype=np.uint32)
    return lut[inst], kept


def labels_at_level0(inst: np.ndarray, origin: tuple[int, int], source: ScaledSource | Any
                     ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`inst` (model pixels, top-left at `origin`) at level 0, and its (y0, x0, y1, x1) relative to the region."""
    ry, rx = origin
    y0, x0 = source.to_level0(ry, rx)
    y1, x1 = source.to_level0(ry + inst.shape[0], rx + inst.shape[1])
    if source.resampled:
        inst = resize(inst, (y1 - y0, x1 - x0), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint32)
    oy, ox = source.region0[:2]
    return inst, (y0 - oy, x0 - ox, y1 - oy, x1 - ox)


def paste_labels(labels_out: Any, labels: np.ndarray, box: tuple[int, int, int, int], next_id: int) -> None:
    """Write `labels` (ids 1..n) as ids next_id.. into `labels_out[box]`, only where it is still 0."""
    y0, x0, y1, x1 = box
    sl = (slice(y0, y1), slice(x0, x1))
    shifted = np.where(labels > 0, labels + np.uint32(next_id - 1), np.uint32(0))
    current = np.asarray(labels_out[sl])
    labels_out[sl] = np.where(current == 0, shifted, current)


def _window_pixels(source: ScaledSource, pixels: np.ndarray, read: Box, window: tuple[int, int]) -> np.ndarray:
    """The calibration window's pixels: cut from the block's pixels when it lies inside them (the usual case: no
    second read, and exactly the pixels its tiles see), else read (a block smaller than the window)."""
    ry, rx, rh, rw = read
    y, x = window[0] - ry, window[1] - rx
    if y >= 0 and x >= 0 and y + CALIBRATION_SIZE <= rh and x + CALIBRATION_SIZE <= rw:
        return pixels[y : y + CALIBRATION_SIZE, x : x + CALIBRATION_SIZE]
    return source.read(*window, CALIBRATION_SIZE, CALIBRATION_SIZE)
