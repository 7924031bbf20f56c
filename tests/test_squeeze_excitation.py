"""Constant squeeze-excitation gates: the same outputs at the frozen statistics, a local network, saved and
loaded as a model folder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nucseg.errors import ModelError  # noqa: E402
from nucseg.models.build import build_network, load_network, save_model  # noqa: E402
from nucseg.models.registry import resolve_model, spec_from_folder  # noqa: E402
from nucseg.models.squeeze_excitation import freeze_gates, mean_gates, se_blocks  # noqa: E402


@pytest.fixture
def effnet():
    torch.manual_seed(0)
    spec = resolve_model("unet-efficientnet-b0")
    return spec, build_network(spec).eval()


def test_frozen_gates_reproduce_the_network_on_the_image_they_were_measured_on(effnet):
    spec, net = effnet
    x = torch.rand(1, 3, 96, 96)
    with torch.inference_mode():
        before = net(x)
    freeze_gates(net, mean_gates(net, [x]))
    assert not se_blocks(net)
    with torch.inference_mode():
        after = net(x)
    assert torch.allclose(before, after, atol=1e-4)


def test_constant_gates_make_the_output_local(effnet):
    """Changing far-away pixels moves a per-input-gate network's output everywhere, a fixed-gate one's not."""
    spec, net = effnet
    for block in se_blocks(net):  # fresh gates barely react to their input; trained ones do
        block._se_reduce.weight.data.mul_(10)
        block._se_expand.weight.data.mul_(10)
    x = torch.rand(1, 3, 512, 512)
    y = x.clone()
    y[..., 384:, 384:] = 0.0  # a corner beyond the convolutions' reach of the pixels compared below

    def change_near_origin(model):
        with torch.inference_mode():
            return float((model(x) - model(y))[..., :32, :32].abs().max())

    assert change_near_origin(net) > 1e-6  # measured 1.5e-5
    freeze_gates(net, mean_gates(net, [x]))
    assert change_near_origin(net) < 1e-6  # float noise of the convolutions


def test_constant_model_folder_round_trips(effnet, tmp_path):
    spec, net = effnet
    freeze_gates(net, mean_gates(net, [torch.rand(2, 3, 64, 64)]))
    saved = save_model(net, dataclasses.replace(spec, squeeze_excitation="constant"), tmp_path / "m")
    assert json.loads((saved.folder / "config.json").read_text())["squeeze_excitation"] == "constant"
    assert spec_from_folder(saved.folder).squeeze_excitation == "constant"
    loaded = load_network(saved.folder, runtime="pytorch")  # strict load_state_dict: the gate branch must be gone from both
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert np.allclose(net(x).numpy(), loaded(x.contiguous(memory_format=torch.channels_last)).numpy(), atol=1e-3)


def test_constant_gates_on_an_encoder_without_them_is_a_model_error():
    spec = dataclasses.replace(resolve_model("unet-mobilenet_v2"), squeeze_excitation="constant")
    with pytest.raises(ModelError, match="no squeeze-excitation"):
        build_network(spec)


def test_unknown_mode_in_a_config_names_the_file(effnet, tmp_path):
    spec, net = effnet
    saved = save_model(net, spec, tmp_path / "m")
    cfg = json.loads((saved.folder / "config.json").read_text())
    (saved.folder / "config.json").write_text(json.dumps({**cfg, "squeeze_excitation": "sometimes"}))
    with pytest.raises(ModelError, match=r"config\.json: squeeze_excitation must be one of image, constant"):
        spec_from_folder(saved.folder)


def test_fine_tuning_a_constant_gate_model_keeps_it_constant(effnet, tmp_path):
    from test_finetune import TINY, drain, tiny_pairs

    from nucseg.config import FinetuneConfig
    from nucseg.training.finetune import iter_finetune

    spec, net = effnet
    freeze_gates(net, mean_gates(net, [torch.rand(2, 3, 64, 64)]))
    base = save_model(net, dataclasses.replace(spec, squeeze_excitation="constant"), tmp_path / "base")
    pairs = tiny_pairs()
    config = FinetuneConfig(base_model=str(base.folder), **{**TINY, "epochs": 1, "steps_per_epoch": 1})
    _, result = drain(iter_finetune(pairs[:2], pairs[2:], config, tmp_path / "run"))
    new = spec_from_folder(result.model_dir)
    assert new.squeeze_excitation == "constant"
    assert not se_blocks(load_network(new))
