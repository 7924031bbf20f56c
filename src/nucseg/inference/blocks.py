"""One block of a plan: read, predict its tiles (with the image's squeeze-excitation gates), separate its nuclei
(`run_block`); then write it into the run's outputs (`write_block`).

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

from nucseg.inference.forward import Predictor, load_predictor  # noqa: F401  (load_predictor: re-exported)
from nucseg.inference.plan import BlockPlan, Box, PredictionPlan
from nucseg.inference.postprocess import probabilities_to_instances
from nucseg.inference.stitching import BlendCanvas
from nucseg.inference.tile_store import TileStore
from nucseg.progress import Progress, drive

if TYPE_CHECKING:
    from nucseg.config import PostprocessConfig
    from nucseg.inference.source import LevelGeometry, ScaledSource


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
        probs_box: (y, x, h, w) of `probabilities` in model pixels relative to the region (the part of the core
            that tiles covered); None: the whole core.
    """

    index: int
    labels: np.ndarray | None = None
    labels_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    n: int = 0
    probabilities: np.ndarray | None = None
    tiles_done: int = 0
    stopped: bool = False
    probs_box: Box | None = None


def iter_block_probabilities(
    plan: PredictionPlan,
    index: int,
    predictor: Predictor,
    *,
    stop: threading.Event | None = None,
    store: TileStore | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, int, bool]]:
    """The blended probabilities of block `index` over its read box, without post-processing. Yields `Progress`
    (done: tiles run for this block) before each slow step and after each batch; returns (probabilities, tiles
    run, stopped).

    Args:
        store: the run's `TileStore` (tiles kept from earlier blocks are not run again); None runs every tile
            this block needs (another process), with the same result.
    """
    block = plan.blocks[index]
    store = store if store is not None else TileStore(plan, predictor, max_bytes=0)
    ry, rx, rh, rw = block.read
    probs = np.zeros((len(predictor.spec.heads), rh, rw), np.float32)
    if not block.tiles:
        return probs, 0, False
    # the canvas covers the tiles' part of the read box (on a slide that is mostly glass, most of a block runs
    # no tile, and its pixels stay 0 without being touched)
    y0, x0, y1, x1 = tiles_box(block)
    canvas = BlendCanvas((y1 - y0, x1 - x0), len(predictor.spec.heads), plan.tile_size, plan.overlap,
                         origin=(y0, x0))
    yield Progress(0, 0, "reading block")
    preds, run, stopped = yield from store.iter_predictions(block.tile_ids, index, stop)
    for i in block.tile_ids:  # in plan order, so the float sums are the same in every runner
        part = preds.pop(i, None)
        if part is not None:
            canvas.add(plan.tiles[i], part.values, part.offset)
    # on Stop, the tiles already done in this block still count: pixels no tile covered stay background
    canvas.result(out=probs[:, y0 - ry : y1 - ry, x0 - rx : x1 - rx])
    return probs, run, stopped


def tiles_box(block: BlockPlan) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), region pixels, of the part of a block's read box that its tiles cover."""
    ry, rx, rh, rw = block.read
    return (max(min(t.y0 for t in block.tiles), ry), max(min(t.x0 for t in block.tiles), rx),
            min(max(t.y1 for t in block.tiles), ry + rh), min(max(t.x1 for t in block.tiles), rx + rw))


def iter_block(
    plan: PredictionPlan,
    index: int,
    predictor: Predictor,
    *,
    stop: threading.Event | None = None,
    probs_dtype: Any = np.float32,
    store: TileStore | None = None,
) -> Generator[Progress, None, BlockOutput]:
    """`run_block` as a generator: yields `Progress` (done: tiles run for this block) before each slow step and
    after each batch; returns the `BlockOutput`."""
    block = plan.blocks[index]
    if not block.tiles:
        return BlockOutput(index)
    probs, done, stopped = yield from iter_block_probabilities(plan, index, predictor, stop=stop, store=store)
    if not stopped:
        yield Progress(done, done, "separating nuclei")
    return finish_block(block, probs, plan.config.postprocess, plan.source.geometry, probs_dtype, done, stopped)


def finish_block(block: BlockPlan, probs: np.ndarray, postprocess: PostprocessConfig, geometry: LevelGeometry,
                 probs_dtype: Any = np.float32, tiles_done: int = 0, stopped: bool = False) -> BlockOutput:
    """Separate a block's nuclei from its read-box probabilities (CPU only: runs in worker processes too)."""
    ry, rx = block.read[:2]
    # only where tiles ran: on a slide that is mostly glass, most of a block was never predicted
    ty0, tx0, ty1, tx1 = tiles_box(block)
    y0, x0, y1, x1 = ty0 - ry, tx0 - rx, ty1 - ry, tx1 - rx
    inst = probabilities_to_instances(probs[:, y0:y1, x0:x1], postprocess)
    labels, n = keep_core_nuclei(inst, block.keep or block.box, (ry + y0, rx + x0))
    labels, labels_box = labels_at_level0(labels, (ry + y0, rx + x0), geometry)
    # nuclei the region's border cuts come whole from the halo: keep their part inside the region
    labels, labels_box, n = clip_to_region(labels, labels_box, geometry.region0[2:], n)
    # the core's probabilities where tiles ran (the outputs are 0 elsewhere already)
    by, bx, bh, bw = block.box
    cy0, cx0 = max(by, ty0), max(bx, tx0)
    cy1, cx1 = max(min(by + bh, ty1), cy0), max(min(bx + bw, tx1), cx0)
    core = probs[:, cy0 - ry : cy1 - ry, cx0 - rx : cx1 - rx]
    return BlockOutput(block.index, labels, labels_box, n, convert_probabilities(core, probs_dtype), tiles_done,
                       stopped, (cy0, cx0, cy1 - cy0, cx1 - cx0))


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
    on_progress: Callable[[Progress], None] | None = None,
    interval_s: float = 0.0,
    probs_dtype: Any = np.float32,
    store: TileStore | None = None,
) -> BlockOutput:
    """Read, predict and post-process block `index` of `plan`.

    Args:
        plan: from `plan_prediction` (in this process, or planned again from the same inputs in another).
        index: which block.
        predictor: from `load_predictor`.
        stop: when set, the block ends after the current batch (what was done is kept).
        on_progress: called with the block's `Progress` records (at most every `interval_s` seconds).
        probs_dtype: np.float32, or np.uint8 for probabilities scaled to 0..255 (a quarter of the size).
        store: a `TileStore` shared by the blocks run in this process (tiles over a block border then run once);
            None runs every tile the block needs. The output is the same either way.

    Returns:
        `BlockOutput`.
    """
    return drive(iter_block(plan, index, predictor, stop=stop, probs_dtype=probs_dtype, store=store), on_progress,
                 interval_s=interval_s)


def write_block(plan: PredictionPlan, output: BlockOutput, labels_out: Any, probs_out: Any, next_id: int) -> int:
    """Write a block's probabilities and nuclei into the run's outputs; returns the next free nucleus id.

    Called in block order, the nuclei are numbered in the order of a serial run. Nuclei spilling over the core
    are written only where no earlier block wrote.
    """
    if output.labels is None:
        return next_id
    by, bx, bh, bw = output.probs_box or plan.blocks[output.index].box
    if bh and bw:
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
    return _renumber(inst, keep)


def _renumber(labels: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, int]:
    """`labels` with the ids i where keep[i - 1] numbered 1..k in order, the others 0; and k."""
    lut = np.zeros(len(keep) + 1, dtype=np.uint32)
    kept = int(keep.sum())
    lut[1:][keep] = np.arange(1, kept + 1, dtype=np.uint32)
    return lut[labels], kept


def clip_to_region(labels: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int], n: int
                   ) -> tuple[np.ndarray, tuple[int, int, int, int], int]:
    """Level-0 `labels` (ids 1..n) at `box` (y0, x0, y1, x1, relative to the region) cut to the region's
    `shape`; nuclei left with no pixel inside are dropped and the rest renumbered 1..k. Returns (labels, box, k)."""
    y0, x0, y1, x1 = box
    cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, shape[0]), min(x1, shape[1])
    if (cy0, cx0, cy1, cx1) == (y0, x0, y1, x1) or not n:
        return labels, box, n
    labels = labels[max(cy0 - y0, 0) : max(cy1 - y0, 0), max(cx0 - x0, 0) : max(cx1 - x0, 0)]
    present = np.bincount(labels.ravel(), minlength=n + 1)[1 : n + 1] > 0
    if present.all():
        return labels, (cy0, cx0, max(cy1, cy0), max(cx1, cx0)), n
    labels, k = _renumber(labels, present)
    return labels, (cy0, cx0, max(cy1, cy0), max(cx1, cx0)), k


def labels_at_level0(inst: np.ndarray, origin: tuple[int, int], source: ScaledSource | Any
                     ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`inst` (model pixels, top-left at `origin`) at level 0, and its (y0, x0, y1, x1) relative to the region
    (`LevelGeometry.labels_at_level0`: the image's model grid, whatever region was asked)."""
    geometry = source.geometry if hasattr(source, "geometry") else source
    return geometry.labels_at_level0(inst, origin)


def paste_labels(labels_out: Any, labels: np.ndarray, box: tuple[int, int, int, int], next_id: int) -> None:
    """Write `labels` (ids 1..n) as ids next_id.. into `labels_out[box]`, only where it is still 0; the parts of
    `box` outside `labels_out` are left out."""
    y0, x0, y1, x1 = box
    cy0, cx0 = max(y0, 0), max(x0, 0)
    cy1, cx1 = min(y1, labels_out.shape[0]), min(x1, labels_out.shape[1])
    if cy1 <= cy0 or cx1 <= cx0:
        return
    labels = labels[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    sl = (slice(cy0, cy1), slice(cx0, cx1))
    shifted = np.where(labels > 0, labels + np.uint32(next_id - 1), np.uint32(0))
    current = np.asarray(labels_out[sl])
    labels_out[sl] = np.where(current == 0, shifted, current)
