"""iter_predict on synthetic nuclei with a deterministic network: tiling, blocks, stop, resolution, zarr."""

import threading

import numpy as np
import pytest

from fake_models import blob_image, install_blobnet
from nucseg.config import InferenceConfig, TilingConfig
from nucseg.errors import StoreError
from nucseg.inference.predict import iter_predict, predict
from nucseg.progress import drive

MODEL = "unet-efficientnet-b0"  # architecture only: the network itself is replaced by BlobNet


@pytest.fixture(autouse=True)
def _blobnet(monkeypatch):
    install_blobnet(monkeypatch)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label maps have the same objects, whatever their ids."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def config(tile=64, overlap=16, block=4096, batch=3):
    return InferenceConfig(model=MODEL, tiling=TilingConfig(tile, overlap, batch), block_size=block,
                           skip_background=False)


def test_finds_every_synthetic_nucleus():
    image, truth = blob_image()
    res = predict(image, config(tile=128, overlap=32))
    assert res.labels.shape == truth.shape and res.labels.dtype == np.uint32
    assert res.n_nuclei == truth.max() == len(np.unique(res.labels)) - 1
    assert same_partition(res.labels, truth)


@pytest.mark.parametrize("tile,overlap", [(64, 0), (64, 16), (96, 32), (128, 48)])
def test_tiled_equals_whole_image(tile, overlap):
    image, _ = blob_image((230, 301), seed=3)
    whole = predict(image, config(tile=256, overlap=0, block=4096))
    tiled = predict(image, config(tile=tile, overlap=overlap, block=4096))
    assert same_partition(whole.labels, tiled.labels)


@pytest.mark.parametrize("block", [64, 96, 128])
def test_blocks_never_split_or_duplicate_nuclei(block):
    image, truth = blob_image((300, 400), n=60, seed=5)
    res = predict(image, config(tile=64, overlap=16, block=block))
    assert res.n_nuclei == truth.max()
    assert same_partition(res.labels, truth)


@pytest.mark.parametrize("shape", [(20, 17), (33, 65), (100, 31)])
def test_images_smaller_than_a_tile_or_odd_sizes(shape):
    image, truth = blob_image(shape, n=2, seed=1, radius=(4, 6))
    res = predict(image, config(tile=64, overlap=16))
    assert res.labels.shape == shape
    assert same_partition(res.labels, truth)


def test_stop_ends_within_one_batch():
    image, _ = blob_image((256, 256))
    stop = threading.Event()
    gen = iter_predict(image, config(tile=64, overlap=0, batch=2), stop=stop)
    first = next(gen)
    while first.stage != "starting":  # the stage records before the tiles ("loading model", ...) count nothing
        assert first.done == 0
        first = next(gen)
    assert first.total == 16
    progress = next(gen)
    while progress.stage != "predicting":
        progress = next(gen)
    assert progress.done == 1  # the run's first batch is one tile, so the bar moves early
    progress = next(gen)
    assert progress.done == 3
    stop.set()
    with pytest.raises(StopIteration) as done:
        next(gen)
    result = done.value.value
    assert result.stopped
    # the three tiles done (the top-left 64 x 192 px) are kept, the rest is left empty
    assert not result.labels[72:].any() and not result.labels[:, 200:].any()
    assert result.probabilities[0, :50, :120].max() > 0.5


def test_input_at_another_resolution_comes_back_at_its_own():
    image, truth = blob_image((200, 240), n=20, radius=(8, 12))
    half = image[::2, ::2]  # 0.5 um/px, twice as coarse as the model's 0.25
    res = predict(half, config(tile=64, overlap=16), mpp=0.5)
    assert res.labels.shape == half.shape[:2]
    assert res.probabilities.shape[1:] == (200, 240)  # the network ran at its own resolution
    assert res.n_nuclei == truth.max()


def test_streams_into_zarr(tmp_path):
    import zarr

    image, truth = blob_image((300, 300), n=30)
    res = predict(image, config(tile=64, overlap=16, block=128), out=tmp_path / "pred.zarr")
    labels = zarr.open_group(str(tmp_path / "pred.zarr"), mode="r")["labels"]
    assert labels.shape == truth.shape
    assert same_partition(np.asarray(labels), truth)
    assert res.probabilities.dtype == np.uint8
    with pytest.raises(StoreError, match="already exists"):  # never overwrites an earlier output
        predict(image, config(), out=tmp_path / "pred.zarr")


def test_reapply_postprocess_in_memory_and_zarr(tmp_path, monkeypatch):
    from nucseg.config import PostprocessConfig
    from nucseg.inference.predict import reapply_postprocess

    image, truth = blob_image((300, 300), n=30)
    for out in (None, tmp_path / "p.zarr"):
        res = predict(image, config(tile=64, overlap=16, block=128), out=out)
        from nucseg.models import build

        monkeypatch.setattr(build, "load_network", lambda *a, **k: pytest.fail("network must not run"))
        strict = reapply_postprocess(res, PostprocessConfig(min_area=400))  # bigger than any disc
        assert strict.n_nuclei == 0 and not np.asarray(strict.labels).any()
        again = reapply_postprocess(res, res.config.postprocess)
        assert same_partition(np.asarray(again.labels), truth)
        install_blobnet(monkeypatch)


def test_skipping_glass_on_a_slide_keeps_every_nucleus(tmp_path):
    """Tiles over glass are skipped and blocks are post-processed only where tiles ran: same nuclei as a full run."""
    import tifffile

    from nucseg.io.slides import open_slide

    image = np.full((384, 512, 3), 242, np.uint8)  # glass
    tissue, truth = blob_image((150, 200), n=12, seed=7)
    image[40:190, 250:450] = tissue
    path = tmp_path / "glass.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        opts = dict(tile=(64, 64), photometric="rgb")
        tif.write(image, subifds=1, metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}, **opts)
        tif.write(np.ascontiguousarray(image[::4, ::4]), subfiletype=1, **opts)
    runs = {}
    for skip in (False, True):
        cfg = InferenceConfig(model=MODEL, tiling=TilingConfig(64, 16, 4), block_size=128, skip_background=skip)
        with open_slide(path) as slide:
            records: list = []
            result = drive(iter_predict(slide, cfg), records.append)
            runs[skip] = (result, records[-1].total)
    (full, full_tiles), (skipped, skipped_tiles) = runs[False], runs[True]
    assert skipped_tiles < full_tiles / 2
    assert skipped.n_nuclei == full.n_nuclei == truth.max()
    assert same_partition(full.labels, skipped.labels)


def test_first_records_come_before_the_model_is_loaded_and_after_one_tile(monkeypatch):
    """A slow model load (seconds, the first time) and a whole batch no longer keep the bar at 'starting'."""
    from fake_models import BlobNet
    from nucseg.models import build

    loaded, release = threading.Event(), threading.Event()

    def slow_load(spec, device="cpu", runtime="auto"):
        assert release.wait(10)
        loaded.set()
        return BlobNet().eval()

    monkeypatch.setattr(build, "load_network", slow_load)
    image, _ = blob_image((256, 256))
    gen = iter_predict(image, config(tile=64, overlap=0, batch=4))
    stages = [next(gen).stage, next(gen).stage]
    assert stages == ["loading model", "planning"] and not loaded.is_set()  # planning overlaps the loading
    release.set()
    records = list(gen)
    assert [r.done for r in records if r.stage == "predicting"][:3] == [1, 5, 9]
    assert {"reading block", "calibrating", "separating nuclei"} <= {r.stage for r in records}


def test_nuclei_at_the_image_edge_are_kept_when_glass_is_skipped():
    """The tissue mask is coarse (8 model px a pixel); its closing must not erode tissue at the image's edge."""
    from nucseg.inference.tissue import tissue_mask

    image, truth = blob_image((256, 320), n=20, seed=6)  # discs 10 px from the bottom edge
    cfg = InferenceConfig(model=MODEL, tiling=TilingConfig(64, 16, 4), skip_background=True)
    res = predict(image, cfg)
    assert res.n_nuclei == truth.max()
    assert same_partition(res.labels, truth)
    rgb = np.full((40, 40, 3), 240, np.uint8)
    rgb[30:, 10:20] = (90, 40, 120)  # stain touching the bottom edge
    assert tissue_mask(rgb)[39, 15]
