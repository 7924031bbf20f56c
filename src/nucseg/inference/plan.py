"""`plan_prediction`: where a prediction will run, before anything runs (no network, no block read).

A plan fixes the geometry of a run: the region at the model's resolution (`ScaledSource`); one grid of tiles laid
over its tissue (over its bounding box, so a small piece of tissue needs the fewest tiles; tiles without tissue
dropped); the blocks that are post-processed at once, each with a read box (the block and a halo of context); which
tiles each block needs (those over its read box: a tile on a block border is computed once and feeds both blocks);
which block owns each tile (the one holding its centre: the tile runs with that block's squeeze-excitation gates,
so its prediction is the same whichever block asks for it); the window each block's gates are measured on; and the
batches tiles run in (a batch's make-up can change a convolution's last bits, so it is fixed here). It is a pure
function of the image, the settings and the region, so a worker process that plans again gets the same plan, and
blocks can run anywhere (`nucseg.inference.blocks.run_block`) and be written in block order for the same labels.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from nucseg.config import InferenceConfig
from nucseg.inference.calibration import CALIBRATION_SIZE, block_window
from nucseg.inference.source import ScaledSource, model_shape
from nucseg.inference.tiling import Tile, fitted_tile, tile_grid
from nucseg.inference.tissue import tile_has_tissue

if TYPE_CHECKING:
    from nucseg.io.slides import Slide

#: context read around each block; nuclei are far smaller, so any nucleus touching a core is seen whole
HALO = 64

Box = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """One block of a plan, in model pixels relative to the region.

    Attributes:
        index: position in the plan (blocks are written in this order).
        box: (y, x, h, w) of the block's core: its nuclei are those whose centre lies here.
        read: (y, x, h, w) of the context it post-processes (core and halo, within the region).
        tiles: the tiles over `read` (glass skipped), row-major; `tile_ids`: their indices in `plan.tiles`.
        window: top-left of the calibration window (squeeze-excitation gates) of the tiles it owns.
    """

    index: int
    box: Box
    read: Box
    tiles: tuple[Tile, ...]
    window: tuple[int, int]
    tile_ids: tuple[int, ...] = ()


@dataclasses.dataclass
class PredictionPlan:
    """Everything a run decides before it runs; see `plan_prediction`.

    Attributes:
        source: the region seen at the model's resolution (reads pixels, maps coordinates to level 0).
        config: the settings, the model's thresholds filled in (`PostprocessConfig.resolved`).
        spec: the model's spec (`nucseg.models.registry.ModelSpec`).
        blocks: the blocks, in writing order.
        tiles: every tile of the run (each computed once in a serial run), row-major.
        owner: for each tile, the block whose gates it runs with.
        batches: tile indices run together; `batch_of`: each tile's batch.
        last_use: for each tile, the last block that needs it (a serial run keeps it until then).
        tissue: (mask, downsample relative to model pixels) when glass is skipped, else None (also when the mask
            finds no tissue at all: then every tile runs).
    """

    source: ScaledSource
    config: InferenceConfig
    spec: Any
    blocks: list[BlockPlan]
    tiles: list[Tile]
    owner: list[int]
    batches: list[tuple[int, ...]]
    batch_of: list[int]
    last_use: list[int]
    tissue: tuple[np.ndarray, float] | None

    @property
    def total(self) -> int:
        """Tiles to run (each once)."""
        return len(self.tiles)

    @property
    def tile_size(self) -> int:
        """The side of the run's tiles: the configured one, or for an image of one block the `fitted_tile`."""
        return self.tiles[0].y1 - self.tiles[0].y0 if self.tiles else self.config.tiling.tile_size

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of the region at the model's resolution."""
        return self.source.shape

    @property
    def label_shape(self) -> tuple[int, int]:
        """(h, w) of the labels: the region at level 0."""
        return self.source.region0[2], self.source.region0[3]

    def window_tile(self, block: int) -> int | None:
        """The tile that is block `block`'s calibration window, if one is (its calibration pass predicts it)."""
        size = CALIBRATION_SIZE
        for i in self.blocks[block].tile_ids:
            t = self.tiles[i]
            if self.owner[i] == block and (t.y0, t.x0) == self.blocks[block].window and t.y1 - t.y0 == size \
                    and t.x1 - t.x0 == size:
                return i
        return None


def streams_to_disk(shape: tuple[int, int], multiscale: bool, mpp: float | None, region: Box | None,
                    block_size: int, model_mpp: float) -> bool:
    """Whether a run's labels and probabilities stream into a zarr store rather than memory: the one rule for the
    widgets (a folder under `nucseg.jobs.segment.predictions_dir`) and `nucseg predict` (a scratch store).

    Pyramids always (their results are shown and exported as pyramids, read block by block), and flat images
    bigger than one block at the model's resolution (`model_shape`), whose probabilities would otherwise sit in
    memory whole: a 10,000 px square 20x TIFF is 20,000 px square at 40x, 4.8 GB of float32 probabilities.

    Args:
        shape: level-0 (h, w) of the image; multiscale: whether it is a pyramid.
        mpp: microns per pixel of level 0 (None: assumed the model's); region: (y, x, h, w) or None (all of it).
        block_size: `InferenceConfig.block_size`; model_mpp: the model's resolution.
    """
    if multiscale:
        return True
    h, w = model_shape(region[2:] if region is not None else shape, mpp, model_mpp)
    return h * w > block_size * block_size


def block_boxes(shape: tuple[int, int], block: int) -> list[Box]:
    """Row-major (y, x, h, w) blocks of side `block` over `shape` (the last ones smaller)."""
    return [(y, x, min(block, shape[0] - y), min(block, shape[1] - x))
            for y in range(0, shape[0], block) for x in range(0, shape[1], block)]


def read_box(box: Box, halo: int, shape: tuple[int, int]) -> Box:
    """`box` grown by `halo` within `shape`."""
    y, x, h, w = box
    ry0, rx0 = max(y - halo, 0), max(x - halo, 0)
    return ry0, rx0, min(y + h + halo, shape[0]) - ry0, min(x + w + halo, shape[1]) - rx0


def tile_layout(shape: tuple[int, int], tile: int, overlap: int,
                tissue: tuple[np.ndarray, float] | None) -> list[Tile]:
    """The run's tiles: a grid over the tissue's bounding box (the whole region without a mask), row-major,
    without the tiles that touch no tissue."""
    y0, x0, y1, x1 = 0, 0, shape[0], shape[1]
    if tissue is not None:
        mask, down = tissue
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        y0, y1 = max(int(rows[0] * down), 0), min(int(np.ceil((rows[-1] + 1) * down)), shape[0])
        x0, x1 = max(int(cols[0] * down), 0), min(int(np.ceil((cols[-1] + 1) * down)), shape[1])
    tiles = tile_grid(shape, tile, overlap, (y0, x0, y1, x1))
    if tissue is not None:
        tiles = [t for t in tiles if tile_has_tissue(tissue[0], tissue[1], t.y0, t.x0, tile, tile)]
    return tiles


def _owner(t: Tile, shape: tuple[int, int], block: int) -> int:
    """The block holding the tile's centre (clipped into the region)."""
    cy = min(max((t.y0 + t.y1) // 2, 0), shape[0] - 1)
    cx = min(max((t.x0 + t.x1) // 2, 0), shape[1] - 1)
    per_row = -(-shape[1] // block)
    return (cy // block) * per_row + cx // block


def _overlaps(t: Tile, box: Box) -> bool:
    return t.y0 < box[0] + box[2] and box[0] < t.y1 and t.x0 < box[1] + box[3] and box[1] < t.x1


def plan_prediction(
    image: np.ndarray | Slide,
    config: InferenceConfig | None = None,
    *,
    mpp: float | None = None,
    region: Box | None = None,
    spec: Any = None,
) -> PredictionPlan:
    """Plan the segmentation of an image or a slide region: cheap (a low-resolution tissue mask at most).

    Args:
        image: an (H, W, 3) RGB array, or a region source (`nucseg.inference.source.RegionSource`: a
            `nucseg.io.slides.Slide`, a napari layer's pyramid).
        config: model, tiling, block size, background skipping.
        mpp: microns per pixel of `image` (slides know theirs); None assumes the model's resolution.
        region: (y, x, h, w) in level-0 pixels; None = everything.
        spec: the model's spec, when the caller has it (a network in training); else from `config.model`.

    Returns:
        `PredictionPlan`; the same inputs give the same plan in any process.
    """
    from nucseg.models.registry import resolve_model

    config = config or InferenceConfig()
    spec = spec if spec is not None else resolve_model(config.model)
    # the model's thresholds, for every setting the caller left to it: applied here, once, for every front end
    config = dataclasses.replace(config, postprocess=config.postprocess.resolved(spec.postprocess_defaults))
    source = ScaledSource(image, spec.mpp, mpp, region)
    tiling = config.tiling
    shape = source.shape
    single = max(shape) <= config.block_size
    block = max(config.block_size, *shape) if single else config.block_size
    boxes = block_boxes(shape, block)
    halo = 0 if single else max(HALO, tiling.overlap)
    tissue = source.tissue_mask() if config.skip_background else None
    if tissue is not None and not tissue[0].any():
        tissue = None  # nothing looks like stained tissue (e.g. a grey or fluorescence image): skip nothing
    # an image of one block: tiles shrunk to just cover it (a 2000 px image in 2 x 2 of 1056, not of 1120)
    tile = fitted_tile(shape, tiling.tile_size, tiling.overlap) if single else tiling.tile_size
    tiles = tile_layout(shape, tile, tiling.overlap, tissue)
    owner = [_owner(t, shape, block) for t in tiles]
    reads = [read_box(box, halo, shape) for box in boxes]
    # a tile feeds the blocks whose read box it overlaps; tiles are few per block, so test the neighbours only
    needed: list[list[int]] = [[] for _ in boxes]
    per_row = -(-shape[1] // block)
    reach = -(-(tile + halo) // block)
    for i, t in enumerate(tiles):
        by, bx = divmod(owner[i], per_row)
        for yy in range(max(by - reach, 0), by + reach + 1):
            for xx in range(max(bx - reach, 0), min(bx + reach, per_row - 1) + 1):
                b = yy * per_row + xx
                if b < len(boxes) and _overlaps(t, reads[b]):
                    needed[b].append(i)
    blocks = []
    for index, box in enumerate(boxes):
        ids = tuple(sorted(needed[index]))
        owned = [(tiles[i].y0, tiles[i].x0) for i in ids if owner[i] == index]
        candidates = owned if tile == CALIBRATION_SIZE else None
        blocks.append(BlockPlan(index, box, reads[index], tuple(tiles[i] for i in ids),
                                block_window(box, tissue, candidates), ids))
    last_use = [0] * len(tiles)
    for b in blocks:
        for i in b.tile_ids:
            last_use[i] = max(last_use[i], b.index)
    plan = PredictionPlan(source, config, spec, blocks, tiles, owner, [], [0] * len(tiles), last_use, tissue)
    _batch(plan)
    return plan


def _batch(plan: PredictionPlan) -> None:
    """Fix the batches: per owner, its calibration tile alone (the calibration pass predicts it), then the run's
    first other tile alone (so progress moves after one tile), then `batch_size` at a time in row-major order."""
    size = plan.config.tiling.batch_size
    by_owner: dict[int, list[int]] = {}
    for i, o in enumerate(plan.owner):
        by_owner.setdefault(o, []).append(i)
    first = True
    for o in sorted(by_owner):
        ids = by_owner[o]
        window = plan.window_tile(o)
        if window is not None:
            plan.batches.append((window,))
            ids = [i for i in ids if i != window]
        if first and ids and size > 1:
            plan.batches.append((ids[0],))
            ids = ids[1:]
        first = False
        plan.batches.extend(tuple(ids[k : k + size]) for k in range(0, len(ids), size))
    for k, batch in enumerate(plan.batches):
        for i in batch:
            plan.batch_of[i] = k
