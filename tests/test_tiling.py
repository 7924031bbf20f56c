"""Tiling and stitching are pure functions: exhaustive small tests (DESIGN.md rule 5), on the grid the engine
plans (`nucseg.inference.plan.plan_prediction`) and the blend it runs (`nucseg.inference.blocks`)."""

import itertools

import numpy as np
import pytest

from nucseg.config import InferenceConfig, TilingConfig
from nucseg.inference.plan import plan_prediction
from nucseg.inference.stitching import BlendCanvas
from nucseg.inference.tile_store import TilePart
from nucseg.inference.tiling import (
    aligned_stride,
    blend_window,
    grid_starts,
    plan_overlap,
    tile_extent,
    tile_starts,
)


def plan_of(image, tile, overlap, block, region=None):
    """The engine's plan of `image` (every tile runs: no glass is skipped)."""
    config = InferenceConfig(model="unet-mobilenet_v2", tiling=TilingConfig(tile, overlap, 2), block_size=block,
                             skip_background=False)
    return plan_prediction(image, config, region=region)


class PointwiseStore:
    """A `TileStore` whose "network" is a pixelwise function of the tile's pixels, read as the engine reads them."""

    def __init__(self, plan):
        self.plan = plan

    def iter_predictions(self, ids, block, stop=None):
        yield from ()
        parts = {}
        for i in ids:
            t = self.plan.tiles[i]
            pixels = self.plan.source.read(t.y0, t.x0, t.y1 - t.y0, t.x1 - t.x0)
            parts[i] = TilePart(pointwise(pixels))
        return parts, len(ids), False


def pointwise(pixels):
    return np.moveaxis(np.sin(pixels.astype(np.float32) / 255 * 3), 2, 0)


@pytest.mark.parametrize("length,tile,stride", list(itertools.product([32, 33, 64, 95, 128, 257], [32, 64], [16, 24, 32])))
def test_tile_starts_cover_exactly(length, tile, stride):
    if length < tile:
        with pytest.raises(ValueError):
            tile_starts(length, tile, stride)
        return
    starts = tile_starts(length, tile, stride)
    covered = np.zeros(length, bool)
    for s in starts:
        assert 0 <= s and s + tile <= length
        covered[s : s + tile] = True
    assert covered.all()
    assert starts == sorted(set(starts))
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_blend_window_is_positive_and_flat_in_core():
    w = blend_window(64, 16)
    assert w.shape == (64, 64) and (w > 0).all()
    assert np.allclose(w[16:48, 16:48], 1.0)
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])


def test_blend_window_hardly_counts_a_tiles_outer_quarter_of_the_overlap():
    """Where zero padding distorts a tile's output most, its neighbour's prediction is taken instead."""
    ramp = blend_window(256, 64)[128]
    assert ramp[:16].max() <= 1e-3 and ramp[240:].max() <= 1e-3
    assert np.all(np.diff(ramp[16:48]) > 0) and np.allclose(ramp[48:208], 1.0)
    assert np.allclose(ramp[:64] + ramp[192:], 1.0, atol=2e-3)  # two neighbours' weights still sum to ~1


@pytest.mark.parametrize("shape", [(64, 64), (100, 37), (37, 100), (130, 171), (257, 64)])
@pytest.mark.parametrize("tile,overlap", [(64, 0), (64, 16), (64, 31), (96, 32)])
def test_stitching_a_pointwise_function_is_exact(shape, tile, overlap):
    """Any pixelwise prediction, tiled on the engine's grid and blended as its blocks blend, equals the
    whole-image prediction everywhere (one block, and blocks of two tiles' side)."""
    from types import SimpleNamespace

    from nucseg.inference.blocks import iter_block_probabilities
    from nucseg.progress import drive

    rng = np.random.default_rng(sum(shape) + tile + overlap)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    predictor = SimpleNamespace(spec=SimpleNamespace(heads=("r", "g", "b")))
    for block in (max(2048, *shape), 2 * tile):
        plan = plan_of(image, tile, overlap, block)
        store = PointwiseStore(plan)
        for b in plan.blocks:
            probs, run, _ = drive(iter_block_probabilities(plan, b.index, predictor, store=store))
            ry, rx, rh, rw = b.read
            assert run == len(b.tiles)
            np.testing.assert_allclose(probs, pointwise(image[ry : ry + rh, rx : rx + rw]), rtol=1e-5, atol=1e-6)


def test_canvas_with_origin_ignores_outside_parts():
    from nucseg.inference.tiling import Tile

    canvas = BlendCanvas((10, 10), 1, 8, 2, origin=(5, 5))
    canvas.add(Tile(0, 0, 8, 8), np.ones((1, 8, 8), np.float32))
    res = canvas.result()
    assert res[0, :3, :3].min() == 1.0 and res[0, 3:, :].max() == 0 and res[0, :, 3:].max() == 0


def test_a_tile_added_in_parts_blends_as_the_whole_tile():
    """The tile store keeps only the part of a tile a later block reads (`TilePart`): added at its offset, a part
    is weighted as that part of the whole tile, so the blend is the same, bit for bit."""
    from nucseg.inference.tiling import Tile

    rng = np.random.default_rng(3)
    tiles = [Tile(0, 0, 64, 64), Tile(0, 32, 64, 96), Tile(32, 0, 96, 64)]
    preds = [rng.random((2, 64, 64)).astype(np.float32) for _ in tiles]
    whole = BlendCanvas((40, 80), 2, 64, 32, origin=(40, 8))
    parts = BlendCanvas((40, 80), 2, 64, 32, origin=(40, 8))
    for t, p in zip(tiles, preds):
        whole.add(t, p)
        dy, dx = max(40 - t.y0, 0), max(8 - t.x0, 0)  # what the canvas at (40, 8) reads of the tile
        parts.add(t, p[:, dy:, dx:].copy(), (dy, dx))
    assert np.array_equal(whole.result(), parts.result()) and whole.result().any()


def test_tiles_read_white_beyond_the_image():
    """A tile reaching past the image's end reads white there (no tissue): mirroring would add phantom nuclei,
    and a network with squeeze-excitation (global pooling) changes its whole tile's output with them."""
    image = np.zeros((5, 3, 3), np.uint8)
    plan = plan_of(image, 64, 16, 2048)
    (t,) = plan.tiles
    assert (t.y0, t.x0) == (0, 0) and t.y1 >= 32 and t.x1 >= 32
    pixels = plan.source.read(t.y0, t.x0, t.y1 - t.y0, t.x1 - t.x0)
    assert pixels[:5, :3].max() == 0 and pixels[5:].min() == 255 and pixels[:, 3:].min() == 255


def test_in_memory_and_slide_paths_pad_alike(tmp_path):
    """predict_probabilities (training validation) and iter_predict (users) see the same pixels past the edge."""
    import torch

    from nucseg.config import InferenceConfig, TilingConfig
    from nucseg.inference.predict import predict, predict_probabilities
    from nucseg.models.build import load_network
    from nucseg.models.device import select_device
    from nucseg.models.registry import resolve_model

    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 255, (40, 70, 3), dtype=np.uint8)
    cfg = InferenceConfig(model="unet-mobilenet_v2", device="cpu", tiling=TilingConfig(64, 16, 2))
    spec = resolve_model(cfg.model)
    with torch.inference_mode():
        direct = predict_probabilities(load_network(spec), image, spec, select_device("cpu"), cfg.tiling)
    np.testing.assert_allclose(predict(image, cfg).probabilities, direct, atol=1e-5)


@pytest.mark.parametrize("shape", [(40, 300), (300, 40), (200, 257), (64, 64)])
@pytest.mark.parametrize("box", [None, (10, 20, 60, 90), (0, 0, 5, 5), (150, 150, 200, 257)])
@pytest.mark.parametrize("block", [64, 2048])
def test_the_engines_tiles_cover_every_block_on_the_images_grid(shape, box, block):
    """Every block's read box (core and halo) is covered by its tiles; the tiles sit on the image's grid (from its
    origin, `stride` apart) whatever region is asked, and reach past the image's end by less than 32 px."""
    tile, overlap = 64, 16
    y0, x0, y1, x1 = box if box is not None else (0, 0, *shape)
    y1, x1 = min(y1, shape[0]), min(x1, shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    image = np.zeros((*shape, 3), np.uint8)
    plan = plan_of(image, tile, overlap, block, region=(y0, x0, y1 - y0, x1 - x0))
    oy, ox = plan.source.origin
    assert (oy, ox) == (y0, x0)
    for b in plan.blocks:
        ry, rx, rh, rw = b.read
        covered = np.zeros((rh, rw), bool)
        for t in b.tiles:
            assert (t.y0 + oy) % plan.stride == 0 and (t.x0 + ox) % plan.stride == 0
            assert t.y1 - t.y0 <= plan.tile_size and t.x1 - t.x0 <= plan.tile_size
            assert 0 <= t.y0 + oy and t.y1 + oy < shape[0] + 32 and 0 <= t.x0 + ox and t.x1 + ox < shape[1] + 32
            covered[max(t.y0 - ry, 0) : max(t.y1 - ry, 0), max(t.x0 - rx, 0) : max(t.x1 - rx, 0)] = True
        assert covered.all()
    assert {t for b in plan.blocks for t in b.tiles} == set(plan.tiles)


def test_the_grid_is_the_images_whatever_part_is_asked():
    """Tiles start at multiples of the (32-aligned) stride from the grid's start; a part of the image gets the
    whole image's tiles over it, and the last tile of an axis stops at the grid's end (rounded up to 32)."""
    assert aligned_stride(512, 64) == 448 and aligned_stride(256, 48) == 192 and aligned_stride(256, 112) == 128
    # small tiles get more context (F1 0.983 -> 0.991 against one 1024-px tile); 512-px tiles and no overlap keep theirs
    assert plan_overlap(256, 64) == 96 and plan_overlap(512, 64) == 64 and plan_overlap(64, 0) == 0
    assert plan_overlap(64, 16) == 24 and plan_overlap(256, 112) == 112
    every = grid_starts(0, 1000, 0, 1000, 256, 192)
    assert every == [0, 192, 384, 576, 768]
    assert grid_starts(300, 500, 0, 1000, 256, 192) == [192, 384]  # the tiles over [300, 500), no others
    assert grid_starts(0, 4096, 0, 4096, 512, 448)[-1] == 3584  # 9 tiles end exactly at 4096
    assert grid_starts(0, 4096, 992, 3120, 512, 448) == [992, 1440, 1888, 2336, 2784]  # a grid over tissue only
    assert [tile_extent(s, 1000, 256) for s in every] == [256, 256, 256, 256, 256]  # 768 + 256 = 1024
    assert [tile_extent(s, 1000, 512) for s in grid_starts(0, 1000, 0, 1000, 512, 448)] == [512, 512, 128]
    # whatever the tile, the image's far edge is met with the same white margin (1000 -> 1024)
    assert {s + tile_extent(s, 1000, t) for t, st in ((256, 192), (512, 448), (1024, 1024))
            for s in grid_starts(999, 1000, 0, 1000, t, st)} == {1024}


def test_a_clipped_tile_blends_with_its_neighbour():
    """A short last tile (clipped at the image's end) still ramps in over the overlap and is positive."""
    w = blend_window(96, 64, 512)
    assert w.shape == (96, 512) and (w > 0).all()
    assert w[:16, 256].max() <= 1e-3 and w[40, 256] > 0.5
