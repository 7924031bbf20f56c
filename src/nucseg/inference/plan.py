"""`plan_prediction`: where a prediction will run, before anything runs (no network, no block read).

A plan fixes the geometry of a run: the region at the model's resolution (`ScaledSource`), the blocks that are
post-processed at once, each block's read box (the block and a halo of context), its tiles (after skipping glass)
and the window its squeeze-excitation gates are measured on. It is a pure function of the image, the settings and
the region, so a worker process that opens the same file and plans again gets the same plan, and the blocks can
run anywhere (`nucseg.inference.blocks.run_block`) and be written in block order for the same labels.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from nucseg.config import InferenceConfig
from nucseg.inference.calibration import block_window
from nucseg.inference.source import ScaledSource
from nucseg.inference.tiling import Tile, tile_grid
from nucseg.inference.tissue import tile_has_tissue

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
        read: (y, x, h, w) read around the core (halo included; at least one tile on each side).
        tiles: the tiles to run (glass skipped), row-major.
        window: top-left of the calibration window (squeeze-excitation gates), CALIBRATION_SIZE square.
    """

    index: int
    box: Box
    read: Box
    tiles: tuple[Tile, ...]
    window: tuple[int, int]


@dataclasses.dataclass
class PredictionPlan:
    """Everything a run decides before it runs; see `plan_prediction`.

    Attributes:
        source: the region seen at the model's resolution (reads pixels, maps coordinates to level 0).
        config: the settings.
        spec: the model's spec (`nucseg.models.registry.ModelSpec`).
        blocks: the blocks, in writing order.
        total: tiles to run over all blocks.
        tissue: (mask, downsample relative to model pixels) when glass is skipped, else None (also when the mask
            finds no tissue at all: then every tile runs).
    """

    source: ScaledSource
    config: InferenceConfig
    spec: Any
    blocks: list[BlockPlan]
    total: int
    tissue: tuple[np.ndarray, float] | None

    @property
    def first_block(self) -> int:
        """Index of the first block with tiles (its first tile runs alone: see `iter_block_probabilities`)."""
        return next((b.index for b in self.blocks if b.tiles), -1)

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of the region at the model's resolution."""
        return self.source.shape

    @property
    def label_shape(self) -> tuple[int, int]:
        """(h, w) of the labels: the region at level 0."""
        return self.source.region0[2], self.source.region0[3]


def block_boxes(shape: tuple[int, int], block: int) -> list[Box]:
    """Row-major (y, x, h, w) blocks of side `block` over `shape` (the last ones smaller)."""
    return [(y, x, min(block, shape[0] - y), min(block, shape[1] - x))
            for y in range(0, shape[0], block) for x in range(0, shape[1], block)]


def read_box(box: Box, halo: int, shape: tuple[int, int], tile: int) -> Box:
    """`box` grown by `halo` within `shape`, and to at least one tile on each side (white beyond the image)."""
    y, x, h, w = box
    ry0, rx0 = max(y - halo, 0), max(x - halo, 0)
    ry1, rx1 = min(y + h + halo, shape[0]), min(x + w + halo, shape[1])
    return ry0, rx0, max(ry1 - ry0, tile), max(rx1 - rx0, tile)


def _block_tiles(read: Box, tile: int, overlap: int) -> list[Tile]:
    ry0, rx0 = read[:2]
    return [Tile(t.y0 + ry0, t.x0 + rx0, t.y1 + ry0, t.x1 + rx0) for t in tile_grid(read[2:], tile, overlap)]


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
    source = ScaledSource(image, spec.mpp, mpp, region)
    tiling = config.tiling
    single = max(source.shape) <= config.block_size
    boxes = [(0, 0, *source.shape)] if single else block_boxes(source.shape, config.block_size)
    halo = 0 if single else max(HALO, tiling.overlap)
    tissue = source.tissue_mask() if config.skip_background else None
    if tissue is not None and not tissue[0].any():
        tissue = None  # nothing looks like stained tissue (e.g. a grey or fluorescence image): skip nothing
    blocks = []
    for index, box in enumerate(boxes):
        read = read_box(box, halo, source.shape, tiling.tile_size)
        tiles = _block_tiles(read, tiling.tile_size, tiling.overlap)
        if tissue is not None:
            tiles = [t for t in tiles if tile_has_tissue(tissue[0], tissue[1], t.y0, t.x0, t.y1 - t.y0, t.x1 - t.x0)]
        blocks.append(BlockPlan(index, box, read, tuple(tiles), block_window(box, tissue)))
    return PredictionPlan(source, config, spec, blocks, sum(len(b.tiles) for b in blocks), tissue)
