"""`fitted_tile`: tiles shrink to just cover a block, never need more of them, and respect a small requested tile."""

import pytest

from nucseg.config import TilingConfig
from nucseg.inference.tiling import aligned_stride, fitted_tile, grid_starts, plan_overlap, tile_extent


@pytest.mark.parametrize(("shape", "tile", "overlap", "expected"), [
    ((2000, 2000), 1120, 64, 1056),  # two tiles per axis instead of two of 1120
    ((2176, 2176), 1120, 64, 1120),  # a 2048 block with its halo: exactly two tiles
    ((1000, 1000), 1120, 64, 1024),  # a MoNuSeg tile: one tile, padded by 24 px
    ((300, 400), 1120, 64, 512),  # small images: one tile of 512 (it then stops at the image's end)
    ((1000, 1000), 256, 64, 256),  # a requested small tile is kept
    ((1500, 700), 1120, 64, 800),
])
def test_fitted_tile(shape, tile, overlap, expected):
    assert fitted_tile(shape, tile, overlap) == expected


@pytest.mark.parametrize("length", [100, 511, 512, 513, 1000, 1119, 1121, 2000, 2176, 3000])
@pytest.mark.parametrize(("tile", "overlap"), [(1120, 64), (512, 64), (256, 32)])
def test_never_more_tiles_and_always_covered(length, tile, overlap):
    """The engine's plan of a one-block image: its fitted tiles are no more, and compute no more pixels, than the
    configured tile's on the same grid (`grid_starts`, `tile_extent`), and they cover the image."""
    import numpy as np

    from nucseg.config import InferenceConfig
    from nucseg.inference.plan import plan_prediction

    image = np.broadcast_to(np.zeros(3, np.uint8), (length, length, 3))  # no memory: only the plan is made
    config = InferenceConfig(model="unet-mobilenet_v2", tiling=TilingConfig(tile, overlap, 1),
                             block_size=max(length, tile), skip_background=False)
    plan = plan_prediction(image, config)
    fitted = plan.tile_size
    assert fitted == fitted_tile((length, length), tile, plan_overlap(tile, overlap))
    assert fitted % 32 == 0 and fitted <= tile
    ours = plan.tiles
    starts = grid_starts(0, length, 0, length, tile, aligned_stride(tile, plan_overlap(tile, overlap)))
    fixed_side = sum(tile_extent(s, length, tile) for s in starts)  # pixels per axis
    assert len(ours) <= len(starts) ** 2 and sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in ours) <= fixed_side**2
    covered = np.zeros((length, length), bool)
    for t in ours:
        covered[t.y0 : t.y1, t.x0 : t.x1] = True
    assert covered.all()


def test_default_tiling_is_valid():
    TilingConfig()  # validated in __post_init__
    assert fitted_tile((2048 + 128,) * 2, TilingConfig().tile_size, TilingConfig().overlap) == TilingConfig().tile_size


def test_a_one_block_image_runs_fitted_tiles():
    """The engine's plan uses the fitted side for an image of one block (lost once in a merge: 2 x 2 tiles of 1120
    computed 2240 px per axis of a 2000 px image)."""
    import numpy as np

    from nucseg.config import InferenceConfig
    from nucseg.inference.plan import plan_prediction

    image = np.full((2000, 2000, 3), 200, np.uint8)
    config = InferenceConfig(tiling=TilingConfig(1120, 64, 1), skip_background=False)
    plan = plan_prediction(image, config, mpp=0.25)
    assert plan.tile_size == 1056 and len(plan.tiles) == 4
    # the grid's tiles from the origin; the last of each row and column stops at the image's end (2000 -> 2016)
    assert {(t.y0, t.y1) for t in plan.tiles} == {(0, 1056), (992, 2016)}
