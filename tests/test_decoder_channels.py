"""The decoder's channels are part of a model (config.json): they travel wherever a network is rebuilt or exported
(PyTorch, the ONNX Runtime export and its cache key, fine-tuned versions, `nucseg models`)."""

from __future__ import annotations

import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from nucseg.models import build, runtime  # noqa: E402
from nucseg.models.build import load_network  # noqa: E402
from nucseg.models.registry import spec_from_folder  # noqa: E402
from nucseg.models.squeeze_excitation import pooled_gates, with_gates  # noqa: E402

LEAN = (64, 32, 16, 16, 8)


@pytest.fixture(scope="module")
def lean(tmp_path_factory, cache):
    """A lean-decoder EfficientNet-B0 UNet saved as a model folder, gates that react to their input."""
    from fake_models import save_reactive_model

    return save_reactive_model(tmp_path_factory.mktemp("models") / "lean", seed=1, decoder_channels=LEAN)


def _decoder_widths(net) -> list[int]:
    return [int(b.conv2[0].out_channels) for b in net.decoder.blocks]


def test_a_lean_model_loads_in_both_runtimes_with_the_same_outputs(lean):
    assert spec_from_folder(lean.folder).decoder_channels == LEAN
    assert json.loads((lean.folder / "config.json").read_text())["decoder_channels"] == list(LEAN)
    build.clear_cache()
    ort_net = load_network(lean, "cpu", runtime="onnxruntime")
    torch_net = load_network(lean, "cpu", runtime="pytorch")
    assert ort_net.runtime.startswith("onnxruntime") and torch_net.runtime == "pytorch"
    assert _decoder_widths(torch_net) == list(LEAN)
    g = torch.Generator().manual_seed(0)
    windows, x = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 96, 128, generator=g)
    with torch.inference_mode():
        expected_plain = torch_net(x)
        expected = with_gates(torch_net, pooled_gates(torch_net, windows))(x)
    assert expected.shape == (2, 3, 96, 128)
    assert float((ort_net(x) - expected_plain).abs().max()) < 1e-3
    got = with_gates(ort_net, pooled_gates(ort_net, windows))(x)
    assert float((got - expected).abs().max()) < 1e-3


def test_the_export_cache_key_holds_the_decoder(lean):
    """Two configs that build different networks never share an export, even for the same weights file."""
    wide = dataclasses.replace(lean, decoder_channels=None)
    assert runtime.network_key(wide) != runtime.network_key(lean)
    assert runtime.export_folder(wide, "0" * 64) != runtime.export_folder(lean, "0" * 64)
    assert runtime.network_key(lean) == runtime.network_key(spec_from_folder(lean.folder))


def test_a_fine_tuned_lean_model_keeps_its_decoder(lean, tmp_path):
    from test_finetune import TINY, drain, tiny_pairs

    from nucseg.config import FinetuneConfig
    from nucseg.training.finetune import iter_finetune

    pairs = tiny_pairs()
    config = FinetuneConfig(base_model=str(lean.folder), **{**TINY, "epochs": 1, "steps_per_epoch": 1})
    _, result = drain(iter_finetune(pairs[:2], pairs[2:], config, tmp_path / "run"))
    new = spec_from_folder(result.model_dir)
    assert new.decoder_channels == LEAN
    assert _decoder_widths(load_network(new, "cpu", runtime="pytorch")) == list(LEAN)


def test_nucseg_models_shows_the_decoder(lean, capsys):
    from nucseg.cli import main

    assert main(["models", str(lean.folder)]) == 0
    assert json.loads(capsys.readouterr().out)["decoder_channels"] == list(LEAN)


def test_the_model_list_names_each_models_network(lean, monkeypatch, tmp_path, capsys):
    """`nucseg models` says which network each trained model is (a lean decoder reads differently)."""
    import shutil

    from nucseg.cli import main

    home = tmp_path / "home"
    shutil.copytree(lean.folder, home / "models" / "lean")
    monkeypatch.setenv("NUCSEG_HOME", str(home))
    assert main(["models"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "lean" in x)
    assert "decoder 64-32-16-16-8" in line
