"""`plan_prediction`: where a prediction will run, before anything runs (no network, no block read).

A plan fixes the geometry of a run: the region at the model's resolution on the image's model-pixel grid
(`ScaledSource`); the tiles: those of the image's one tile grid (from its origin, at multiples of 32 px) that
overlap the region and its halo and touch tissue (the image's tissue mask, not the region's); the blocks that are
post-processed at once, each with a read box (the block and a halo of context, reaching beyond the region into
the image: a region's nuclei at its border are seen whole, as in the whole-image run); which tiles each block
needs (those over its read box: a tile on a block border is computed once and feeds both blocks); which block
owns each tile (for the order tiles run in); the windows the image's squeeze-excitation gates are measured on
(`nucseg.inference.calibration`, a function of the image alone); and the batches tiles run in (a batch's
make-up can change a convolution's last bits, so it is fixed here). Tiles, tissue and gates are the image's, so
a region's probabilities are the whole image's over the region, whatever was asked. It is a pure function of
the image, the settings and the region, so a worker process that plans again gets the same plan, and blocks can
run anywhere (`nucseg.inference.blocks.run_block`) and be written in block order for the same labels.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from nucseg.config import InferenceConfig
from nucseg.inference.calibration import image_gate_windows
from nucseg.inference.source import ScaledSource, model_shape
from nucseg.inference.tiling import Tile, aligned_stride, fitted_tile, grid_starts, plan_overlap, tile_extent
from nucseg.inference.tissue import TissueMap

if TYPE_CHECKING:
    import numpy as np

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
        read: (y, x, h, w) of the context it post-processes (core and halo, within the image: beyond the region
            where the image goes on).
        tiles: the tiles over `read` (glass skipped), row-major; `tile_ids`: their indices in `plan.tiles`.
        keep: (y, x, h, w) where the centres of the nuclei it keeps lie: its core, grown by the halo on the sides
            where the region ends, so that a nucleus cut by the region's border is kept (its part inside), as
            the whole-image run keeps it.
    """

    index: int
    box: Box
    read: Box
    tiles: tuple[Tile, ...]
    tile_ids: tuple[int, ...] = ()
    keep: Box | None = None


@dataclasses.dataclass
class PredictionPlan:
    """Everything a run decides before it runs; see `plan_prediction`.

    Attributes:
        source: the region seen at the model's resolution (reads pixels, maps coordinates to level 0).
        config: the settings, the model's thresholds filled in (`PostprocessConfig.resolved`).
        spec: the model's spec (`nucseg.models.registry.ModelSpec`).
        blocks: the blocks, in writing order.
        tiles: every tile of the run (each computed once in a serial run), row-major.
        owner: for each tile, the block holding its centre (tiles run grouped by owner).
        batches: tile indices run together; `batch_of`: each tile's batch.
        last_use: for each tile, the last block that needs it (a serial run keeps it until then).
        tissue: the image's tissue mask when glass is skipped, else None (also when the mask finds no tissue at
            all: then every tile runs).
        gate_windows: top-lefts (model pixels of the whole image) of the windows the squeeze-excitation gates are
            measured on (`nucseg.inference.calibration.gate_windows`).
        stride: the step of the tile grid (`nucseg.inference.tiling.aligned_stride`).
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
    tissue: TissueMap | None
    gate_windows: tuple[tuple[int, int], ...] = ()
    stride: int = 0
    tile: int = 0

    @property
    def total(self) -> int:
        """Tiles to run (each once)."""
        return len(self.tiles)

    @property
    def tile_size(self) -> int:
        """The side of the grid's tiles: the configured one, or for an image of one block the `fitted_tile` (the
        last tiles of each row and column stop at the image's end, see `tile_extent`)."""
        return self.tile or self.config.tiling.tile_size

    @property
    def overlap(self) -> int:
        """Pixels neighbouring tiles share (at least the configured overlap: the grid's step is aligned)."""
        return self.tile_size - self.stride if self.stride else self.config.tiling.overlap

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of the region at the model's resolution."""
        return self.source.shape

    @property
    def label_shape(self) -> tuple[int, int]:
        """(h, w) of the labels: the region at level 0."""
        return self.source.region0[2], self.source.region0[3]


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


def read_box(box: Box, halo: int, shape: tuple[int, int], bounds: Box | None = None) -> Box:
    """`box` grown by `halo` within `bounds` (y0, x0, y1, x1), by default [0, shape)."""
    by0, bx0, by1, bx1 = bounds if bounds is not None else (0, 0, shape[0], shape[1])
    y, x, h, w = box
    ry0, rx0 = max(y - halo, by0), max(x - halo, bx0)
    return ry0, rx0, min(y + h + halo, by1) - ry0, min(x + w + halo, bx1) - rx0


def keep_box(box: Box, halo: int, shape: tuple[int, int]) -> Box:
    """`box` grown by `halo` on the sides where the region of `shape` ends (see `BlockPlan.keep`)."""
    y, x, h, w = box
    y0, x0 = y - (halo if y == 0 else 0), x - (halo if x == 0 else 0)
    y1, x1 = y + h + (halo if y + h == shape[0] else 0), x + w + (halo if x + w == shape[1] else 0)
    return y0, x0, y1 - y0, x1 - x0


#: the tile grid reaches this far beyond the image's tissue (model pixels, on top of the mask's own margin)
TISSUE_CONTEXT = 32


def grid_box(source: ScaledSource, tissue: TissueMap | None, multiple: int = 32) -> Box:
    """(y0, x0, y1, x1), the whole image's model pixels, that the image's tile grid covers: its tissue's bounding
    box and `TISSUE_CONTEXT` around it (the start on the 32-px lattice), or without a mask the whole image.

    A function of the image alone, so every region of it gets the same tiles; fitted to its tissue, so a small
    piece of tissue on a slide needs the fewest tiles (the grid starts where the tissue does, and its last tiles
    stop where it ends, as at the image's end: `tile_extent`).
    """
    fh, fw = source.full_shape
    bounds = None if tissue is None else tissue.moved((0, 0)).bounds()
    if bounds is None:
        return 0, 0, fh, fw
    y0, x0, y1, x1 = bounds
    y0, x0 = max(0, (y0 - TISSUE_CONTEXT) // multiple * multiple), max(0, (x0 - TISSUE_CONTEXT) // multiple * multiple)
    return y0, x0, min(fh, y1 + TISSUE_CONTEXT), min(fw, x1 + TISSUE_CONTEXT)


def tile_layout(cover: Box, source: ScaledSource, tile: int, stride: int, tissue: TissueMap | None) -> list[Tile]:
    """The tiles of the image's grid (`grid_box`; region coordinates) that overlap `cover` (y0, x0, y1, x1) and
    touch tissue, row-major; the last of a row or column stops at the grid's end (`tile_extent`)."""
    y0, x0, y1, x1 = cover
    (oy, ox) = source.origin
    gy0, gx0, gy1, gx1 = grid_box(source, tissue)
    ys = [(s - oy, tile_extent(s, gy1, tile)) for s in grid_starts(y0 + oy, y1 + oy, gy0, gy1, tile, stride)]
    xs = [(s - ox, tile_extent(s, gx1, tile)) for s in grid_starts(x0 + ox, x1 + ox, gx0, gx1, tile, stride)]
    tiles = [Tile(y, x, y + h, x + w) for y, h in ys for x, w in xs]
    if tissue is not None:
        tiles = [t for t in tiles if tissue.any(t.y0, t.x0, t.y1 - t.y0, t.x1 - t.x0)]
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
    shape, full, (oy, ox) = source.shape, source.full_shape, source.origin
    block = max(config.block_size, *shape) if max(shape) <= config.block_size else config.block_size
    boxes = block_boxes(shape, block)
    halo = max(HALO, tiling.overlap)
    mask = source.tissue_mask()
    tissue = mask if config.skip_background and not mask.empty else None  # no stained tissue: skip nothing
    # an image of one block: tiles shrunk to just cover its grid (a 2000 px image in 2 x 2 of 1056, not of 1120);
    # the whole image decides, so a region of it gets the same tiles
    overlap = plan_overlap(tiling.tile_size, tiling.overlap)
    gy0, gx0, gy1, gx1 = grid_box(source, tissue)
    tile = (fitted_tile((gy1 - gy0, gx1 - gx0), tiling.tile_size, overlap) if max(full) <= config.block_size
            else tiling.tile_size)
    stride = aligned_stride(tile, plan_overlap(tile, overlap))
    image_box = (-oy, -ox, full[0] - oy, full[1] - ox)
    reads = [read_box(box, halo, shape, image_box) for box in boxes]
    cover = (min(r[0] for r in reads), min(r[1] for r in reads),
             max(r[0] + r[2] for r in reads), max(r[1] + r[3] for r in reads))
    tiles = tile_layout(cover, source, tile, stride, tissue)
    owner = [_owner(t, shape, block) for t in tiles]
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
        blocks.append(BlockPlan(index, box, reads[index], tuple(tiles[i] for i in ids), ids,
                                keep_box(box, halo, shape)))
    last_use = [0] * len(tiles)
    for b in blocks:
        for i in b.tile_ids:
            last_use[i] = max(last_use[i], b.index)
    windows = image_gate_windows(source)
    plan = PredictionPlan(source, config, spec, blocks, tiles, owner, [], [0] * len(tiles), last_use, tissue,
                          windows, stride, tile)
    _batch(plan)
    return plan


def _batch(plan: PredictionPlan) -> None:
    """Fix the batches: per owner in block order, the run's first tile alone (so progress moves after one tile),
    then `batch_size` at a time in row-major order, tiles of one shape together (the last of a row or column
    may be shorter)."""
    size = plan.config.tiling.batch_size
    by_owner: dict[int, list[int]] = {}
    for i, o in enumerate(plan.owner):
        by_owner.setdefault(o, []).append(i)
    first = True
    for o in sorted(by_owner):
        ids = by_owner[o]
        if first and ids and size > 1:
            plan.batches.append((ids[0],))
            ids = ids[1:]
        first = False
        shapes: dict[tuple[int, int], list[int]] = {}
        for i in ids:
            t = plan.tiles[i]
            shapes.setdefault((t.y1 - t.y0, t.x1 - t.x0), []).append(i)
        for same in shapes.values():
            plan.batches.extend(tuple(same[k : k + size]) for k in range(0, len(same), size))
    for k, batch in enumerate(plan.batches):
        for i in batch:
            plan.batch_of[i] = k
