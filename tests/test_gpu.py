"""The accelerator paths: CUDA inference agrees with the CPU's, and training steps run in mixed precision.

CI and this project's machines have no GPU, so the CUDA tests skip there; they were run on a lent GPU machine
(`pytest --noconftest tests/test_gpu.py`, with the package on PYTHONPATH). The CPU-side choices run everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucseg.models.device import training_autocast_dtype

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def test_no_autocast_for_training_off_cuda():
    assert training_autocast_dtype(torch.device("cpu")) is None


@cuda
def test_cuda_inference_matches_the_cpu():
    from PIL import Image

    from nucseg.config import TilingConfig
    from nucseg.inference.postprocess import probabilities_to_instances
    from nucseg.inference.predict import predict_probabilities
    from nucseg.io.sample import sample_paths
    from nucseg.metrics.matching import object_metrics
    from nucseg.models.build import load_network
    from nucseg.models.registry import resolve_model

    image = np.asarray(Image.open(sample_paths()[0]).convert("RGB"))
    spec = resolve_model("nucseg-default")
    tiling = TilingConfig(tile_size=256, overlap=64, batch_size=8)
    probs = {}
    for name in ("cpu", "cuda"):
        device = torch.device(name)
        probs[name] = predict_probabilities(load_network(spec, device), image, spec, device, tiling)
    assert np.abs(probs["cuda"] - probs["cpu"]).mean() < 0.005  # fp16 autocast on CUDA, fp32 on the CPU
    cpu, gpu = (probabilities_to_instances(p) for p in (probs["cpu"], probs["cuda"]))
    assert object_metrics(cpu, gpu)["f1"] >= 0.98


@cuda
def test_cuda_pipeline_with_a_pool_gives_the_serial_labels():
    """Reading ahead, the network on the GPU and nuclei separated in worker processes: the labels of the serial
    run, and each tile run once."""
    from nucseg.config import InferenceConfig, TilingConfig
    from nucseg.inference.predict import predict
    from nucseg.io.sample import sample_paths
    from nucseg.io.slides import read_image

    tile = read_image(sample_paths()[0])
    image = np.concatenate([np.concatenate([tile, tile[:, ::-1]], 1), np.concatenate([tile[::-1], tile], 1)], 0)
    config = InferenceConfig(device="cuda", tiling=TilingConfig(256, 64, 16), block_size=512)
    serial = predict(image, config, workers=0)
    pooled = predict(image, config, workers=2)
    assert serial.n_nuclei > 100
    np.testing.assert_array_equal(pooled.labels, serial.labels)


@cuda
def test_training_steps_run_in_mixed_precision_on_cuda(tmp_path):
    from test_finetune import TINY, drain, tiny_model_folder, tiny_pairs

    from nucseg.config import FinetuneConfig
    from nucseg.training.finetune import iter_finetune

    assert training_autocast_dtype(torch.device("cuda")) in (torch.bfloat16, torch.float16)
    pairs = tiny_pairs()
    config = FinetuneConfig(base_model=str(tiny_model_folder(tmp_path)),
                            **{**TINY, "device": "cuda", "steps_per_epoch": 3})
    records, result = drain(iter_finetune(pairs[:2], pairs[2:], config, tmp_path / "run"))
    losses = [r.info["loss"] for r in records if r.kind == "progress"]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert result.model_dir is not None and (result.model_dir / "model.safetensors").is_file()
