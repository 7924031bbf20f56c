"""The block API (plan_prediction, run_block, write_block): blocks run in any order or in another process and
written in block order give exactly the labels of iter_predict."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fake_models import BlobNet, blob_image, install_blobnet
from nucseg.config import InferenceConfig, TilingConfig
from nucseg.inference.predict import load_predictor, plan_prediction, predict, run_block, write_block

MODEL = "unet-efficientnet-b0"


@pytest.fixture(autouse=True)
def _blobnet(monkeypatch):
    install_blobnet(monkeypatch)


def config(block=128):
    return InferenceConfig(model=MODEL, device="cpu", tiling=TilingConfig(64, 16, 3), block_size=block,
                           skip_background=False)


def assemble(plan, outputs):
    labels = np.zeros(plan.label_shape, np.uint32)
    probs = np.zeros((3, *plan.shape), np.float32)
    next_id = 1
    for output in sorted(outputs, key=lambda o: o.index):
        next_id = write_block(plan, output, labels, probs, next_id)
    return labels, probs, next_id - 1


def test_blocks_in_reverse_order_give_the_serial_labels():
    image, _ = blob_image((300, 330), n=40, seed=2)
    cfg = config()
    serial = predict(image, cfg)
    plan = plan_prediction(image, cfg)
    # one grid for the whole image: a tile over a block border feeds both blocks (each block's read box)
    assert len(plan.blocks) == 9 and plan.total == len(set(plan.tiles)) < sum(len(b.tiles) for b in plan.blocks)
    predictor = load_predictor(cfg)
    outputs = [pickle.loads(pickle.dumps(run_block(plan, i, predictor))) for i in reversed(range(len(plan.blocks)))]
    labels, probs, n = assemble(plan, outputs)
    assert n == serial.n_nuclei > 30
    np.testing.assert_array_equal(labels, serial.labels)
    np.testing.assert_array_equal(probs, serial.probabilities)


def test_plans_are_deterministic():
    image, _ = blob_image((300, 330), n=40, seed=2)
    a, b = plan_prediction(image, config()), plan_prediction(image.copy(), config())
    assert a.blocks == b.blocks and a.total == b.total


def _run_in_child(args):
    """Plan again from the same inputs in a fresh process, and run some blocks there."""
    image, cfg, indices = args
    from nucseg.models import build

    net = BlobNet().eval()
    build.load_network = lambda spec, device="cpu", runtime="auto": net
    plan = plan_prediction(image, cfg)
    predictor = load_predictor(cfg)
    return [run_block(plan, i, predictor, probs_dtype=np.uint8) for i in indices]


def test_blocks_run_in_another_process(tmp_path):
    import multiprocessing

    image, _ = blob_image((300, 330), n=40, seed=4)
    cfg = config()
    serial = predict(image, cfg, out=tmp_path / "serial.zarr")  # zarr: probabilities quantised to uint8
    plan = plan_prediction(image, cfg)
    odd, even = list(range(1, len(plan.blocks), 2)), list(range(0, len(plan.blocks), 2))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        outputs = pool.map(_run_in_child, [(image, cfg, odd)])[0]
    outputs += [run_block(plan, i, load_predictor(cfg), probs_dtype=np.uint8) for i in even]
    labels = np.zeros(plan.label_shape, np.uint32)
    probs = np.zeros((3, *plan.shape), np.uint8)
    next_id = 1
    for output in sorted(outputs, key=lambda o: o.index):
        next_id = write_block(plan, output, labels, probs, next_id)
    np.testing.assert_array_equal(labels, np.asarray(serial.labels))
    np.testing.assert_array_equal(probs, np.asarray(serial.probabilities))


def test_a_serial_run_computes_each_tile_once(monkeypatch):
    """Tiles over block borders used to run once per block; one grid and a tile store run each once."""
    from nucseg.inference import tile_store

    runs = []
    real = tile_store.predict_batch
    monkeypatch.setattr(tile_store, "predict_batch", lambda net, batch, *a, **k: runs.append(len(batch)) or
                        real(net, batch, *a, **k))
    image, truth = blob_image((300, 330), n=40, seed=2)
    result = predict(image, config())
    assert sum(runs) == plan_prediction(image, config()).total
    assert result.n_nuclei == truth.max()


def test_a_pool_of_two_post_processing_workers_gives_the_serial_labels(tmp_path):
    image, truth = blob_image((300, 330), n=40, seed=6)
    cfg = config()
    serial = predict(image, cfg, workers=0)
    pooled = predict(image, cfg, workers=2)
    np.testing.assert_array_equal(pooled.labels, serial.labels)
    np.testing.assert_array_equal(pooled.probabilities, serial.probabilities)
    assert pooled.n_nuclei == serial.n_nuclei == truth.max()
