"""ONNX Runtime on the CPU (nucseg.models.runtime): chosen automatically, the same outputs and the same exact
per-image gates as PyTorch, cached by the weights' sha256, and PyTorch whenever it cannot serve a model."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from nucseg.config import InferenceConfig  # noqa: E402
from nucseg.errors import ConfigError  # noqa: E402
from nucseg.models import build, runtime  # noqa: E402
from nucseg.models.build import build_network, load_network, save_model  # noqa: E402
from nucseg.models.registry import resolve_model, untrained_spec  # noqa: E402
from nucseg.models.squeeze_excitation import pooled_gates, se_blocks, with_gates  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tmp_path_factory, cache):
    """A trained-looking EfficientNet-B0 UNet folder whose gates react strongly to their input."""
    from fake_models import save_reactive_model

    return save_reactive_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="module")
def pair(model):
    """The model in ONNX Runtime and in PyTorch."""
    build.clear_cache()
    return load_network(model, "cpu"), load_network(model, "cpu", runtime="pytorch")


def test_auto_takes_onnxruntime_for_trained_models_on_the_cpu_only(model):
    assert runtime.choose_runtime("auto", CPU, model) == "onnxruntime"
    assert runtime.choose_runtime("auto", torch.device("cuda"), model) == "pytorch"
    assert runtime.choose_runtime("auto", CPU, untrained_spec("efficientnet-b0")) == "pytorch"
    assert runtime.choose_runtime("pytorch", CPU, model) == "pytorch"
    with pytest.raises(ConfigError, match="unknown runtime 'tvm'"):
        runtime.choose_runtime("tvm", CPU, model)
    with pytest.raises(ConfigError, match="runtime 'tvm' must be one of auto, pytorch, onnxruntime"):
        InferenceConfig(runtime="tvm")


def test_exported_network_gives_pytorchs_probabilities(pair):
    ort_net, torch_net = pair
    assert ort_net.runtime.startswith("onnxruntime") and torch_net.runtime == "pytorch"
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = torch.sigmoid(torch_net(x))
    got = torch.sigmoid(ort_net(x))
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-4  # measured 1e-6


def test_gates_measured_and_fixed_in_onnxruntime_are_pytorchs(pair):
    ort_net, torch_net = pair
    g = torch.Generator().manual_seed(2)
    windows, other = torch.rand(3, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 96, generator=g) * 2
    gates = pooled_gates(torch_net, windows)
    ort_gates = pooled_gates(ort_net, windows)
    assert len(ort_gates) == len(gates) == len(se_blocks(torch_net))
    for ours, theirs in zip(ort_gates, gates, strict=True):
        assert float((ours - theirs).abs().max()) < 1e-5
    assert float(torch.cat(gates).max() - torch.cat(gates).min()) > 0.1  # gates that matter
    fixed_ort, fixed_torch = with_gates(ort_net, ort_gates), with_gates(torch_net, gates)
    assert not se_blocks(fixed_ort) and se_blocks(ort_net)  # the copy's gates are fixed, the shared net's not
    assert not se_blocks(fixed_torch) and se_blocks(torch_net)
    with torch.inference_mode():
        expected, per_input = fixed_torch(other), torch_net(other)
    got = fixed_ort(other)
    assert float((got - expected).abs().max()) < 1e-3
    assert float((per_input - expected).abs().max()) > 10 * float((got - expected).abs().max())


def test_pooled_gates_are_the_gates_of_the_windows_seen_as_one_image(pair):
    """Pooling each block's squeeze over the windows is what one image made of them gives: with windows that
    are copies of one another, the gates of one of them."""
    _, torch_net = pair
    window = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    one, three = pooled_gates(torch_net, window), pooled_gates(torch_net, window.repeat(3, 1, 1, 1))
    for a, b in zip(one, three, strict=True):
        assert float((a - b).abs().max()) < 1e-5


def test_sides_the_graph_cannot_take_run_in_pytorch(pair):
    ort_net, torch_net = pair
    x = torch.rand(1, 3, 200, 120)  # 200 is not a multiple of the encoder's stride
    with torch.inference_mode():
        expected = torch_net(x)
    assert torch.equal(ort_net(x), expected)


def test_the_export_is_cached_and_a_different_sha256_gets_its_own(model, pair, tmp_path):
    folder = pair[0].folder
    assert folder.parent.parent == runtime.cache_dir() and (folder / "gated.onnx").is_file()
    assert model.sha256[:32] in folder.name and model.folder not in folder.parents  # never beside the weights
    build.clear_cache()
    again = runtime.load_onnx_network(model, lambda: pytest.fail("a cached export must not rebuild the network"))
    assert again.folder == folder
    other_weights = build_network(untrained_spec("efficientnet-b0")).eval()
    other = save_model(other_weights, untrained_spec("efficientnet-b0"), tmp_path / "other")
    assert other.sha256 != model.sha256
    net = runtime.load_onnx_network(other, lambda: load_network(other, "cpu", runtime="pytorch"))
    assert net.folder != folder and net.folder.is_dir() and folder.is_dir()


def test_a_failing_export_falls_back_to_pytorch_with_one_warning(model, monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("NUCSEG_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "_warned", set())

    def broken(net, folder):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(runtime, "export_network", broken)
    build.clear_cache()
    with caplog.at_level(logging.WARNING, logger="nucseg.models.runtime"):
        first = load_network(model, "cpu", runtime="onnxruntime")
        build.clear_cache()
        second = load_network(model, "cpu")
    assert first.runtime == second.runtime == "pytorch"
    warnings = [r for r in caplog.records if "ONNX Runtime not used" in r.getMessage()]
    assert len(warnings) == 1 and "exporter exploded" in warnings[0].getMessage()
    assert not list(tmp_path.rglob("*.onnx"))  # nothing half-written left in the cache
    build.clear_cache()


def test_missing_onnxruntime_means_pytorch(model, monkeypatch, caplog):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    monkeypatch.setattr(runtime, "_warned", set())
    build.clear_cache()
    assert runtime.choose_runtime("auto", CPU, model) == "pytorch"
    with caplog.at_level(logging.WARNING, logger="nucseg.models.runtime"):
        net = load_network(model, "cpu", runtime="onnxruntime")
    assert net.runtime == "pytorch" and "onnxruntime is not installed" in caplog.text
    build.clear_cache()


def test_cli_runtime_option_reaches_the_json(model, pair, tmp_path):
    from PIL import Image

    from nucseg.cli import main

    image = np.full((64, 64, 3), 230, np.uint8)
    image[20:40, 20:40] = (90, 40, 120)
    Image.fromarray(image).save(tmp_path / "t.png")
    common = ["--model", str(model.folder), "--device", "cpu", "--tile-size", "64", "--overlap", "0", "--quiet"]
    seen = {}
    for choice in ("pytorch", "auto"):
        out = tmp_path / choice
        assert main(["predict", str(tmp_path / "t.png"), "--out", str(out), "--runtime", choice, *common]) == 0
        summary = json.loads((out / "t_predict.json").read_text())
        seen[choice] = summary["model"]["runtime"]
        assert summary["config"]["runtime"] == choice
    assert seen["pytorch"] == "pytorch" and seen["auto"].startswith("onnxruntime")


def test_default_model_runs_the_same_in_both_runtimes(cache):
    """The shipped network, exported: gates and probabilities equal PyTorch's on a small real crop."""
    from nucseg.inference.forward import predict_batch, to_input_tensor
    from nucseg.io.sample import sample_paths
    from nucseg.io.slides import read_image

    spec = resolve_model("nucseg-default")
    image = read_image(sample_paths()[0])
    windows = np.stack([image[:256, :256], image[256:512, 256:512]])
    tile = np.ascontiguousarray(image[None, 64:192, 96:224])
    probs, gates = {}, {}
    for choice in ("onnxruntime", "pytorch"):
        net = load_network(spec, "cpu", runtime=choice)
        gates[choice] = pooled_gates(net, to_input_tensor(windows, spec, CPU, channels_last=choice == "pytorch"))
        probs[choice] = predict_batch(with_gates(net, gates[choice]), tile, spec, CPU)
    assert max(float((a - b).abs().max()) for a, b in zip(gates["onnxruntime"], gates["pytorch"])) < 1e-4
    assert np.abs(probs["onnxruntime"] - probs["pytorch"]).max() < 1e-4


def test_odd_sides_keep_the_fixed_gates_in_pytorch(pair):
    ort_net, torch_net = pair
    window = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    fixed = with_gates(ort_net, pooled_gates(ort_net, window))
    expected = with_gates(torch_net, pooled_gates(torch_net, window))
    x = torch.rand(1, 3, 96, 100)  # 100 is not a multiple of 32: PyTorch runs it, with the window's gates
    with torch.inference_mode():
        assert float((fixed(x) - expected(x)).abs().max()) < 1e-4


def test_a_gated_network_pickles_for_worker_processes(pair):
    import pickle

    window = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    fixed = with_gates(pair[0], pooled_gates(pair[0], window))
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(pickle.loads(pickle.dumps(fixed))(x), fixed(x))


def test_sessions_take_no_more_threads_than_torch_may_use():
    """A Dask worker given one thread must not run its ONNX Runtime sessions on every core."""
    import torch

    from nucseg.models.runtime import physical_cores, session_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert session_threads() == 1
        torch.set_num_threads(max(before, 1))
        assert session_threads() == min(physical_cores(), max(before, 1))
    finally:
        torch.set_num_threads(before)


def test_a_cached_export_predicts_without_importing_torch(cache, tmp_path):
    """`nucseg predict --device cpu` with the model's export cached never imports torch (1.2 s of a 4.7 s run on
    a 4 MP tile) nor segmentation-models-pytorch, and gives the labels of the run that exported it."""
    import os
    import subprocess
    import sys

    import tifffile

    from nucseg.io.sample import sample_paths

    image = sample_paths()[0]
    code = ("import json, sys\nfrom nucseg.cli import main\nrc = main(sys.argv[1:])\n"
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, "
            "'smp': 'segmentation_models_pytorch' in sys.modules}))")
    env = {**os.environ, "NUCSEG_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    seen, labels = [], []
    for run in ("first", "cached"):  # the first run exports the default model if this module's cache lacks it
        out = tmp_path / run
        done = subprocess.run([sys.executable, "-c", code, "predict", str(image), "--out", str(out), "--device", "cpu",
                               "--quiet"], capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, done.stderr
        seen.append(json.loads(done.stdout.strip().splitlines()[-1]))
        labels.append(tifffile.imread(out / f"{image.stem}_labels.tif"))
        assert json.loads((out / f"{image.stem}_predict.json").read_text())["model"]["runtime"].startswith("onnx")
    assert seen[1] == {"rc": 0, "torch": False, "smp": False}
    assert labels[1].max() > 50 and np.array_equal(labels[0], labels[1])


def test_arrays_in_give_the_logits_of_tensors_in_without_torch_ops(model, pair):
    """An ONNX Runtime network takes and returns numpy arrays (the torch-free path) with the values it gives for
    tensors, odd sides (run in PyTorch) included; numpy's normalisation is torch's bit for bit."""
    from nucseg.inference.forward import network_input, normalise, to_input_tensor

    ort_net, spec = pair[0], model
    batch = np.random.default_rng(6).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    x = network_input(ort_net, batch, spec, "cpu")
    assert isinstance(x, np.ndarray) and x.flags.c_contiguous
    assert np.array_equal(x, to_input_tensor(batch, spec, CPU, channels_last=False).numpy())
    assert np.array_equal(normalise(batch, spec), normalise(torch.from_numpy(batch), spec).numpy())
    window = pooled_gates(ort_net, torch.from_numpy(x[:1]))
    fixed = with_gates(ort_net, window)
    for inputs in (x, x[..., :80]):  # 80 is not a multiple of 32: PyTorch runs it
        got = fixed(inputs)
        assert isinstance(got, np.ndarray)
        assert np.array_equal(got, fixed(torch.from_numpy(np.ascontiguousarray(inputs))).numpy())


def test_sessions_without_torch_take_the_threads_torch_would(tmp_path):
    """Without torch imported, a session takes what torch.get_num_threads() would give (MKL_NUM_THREADS, else
    OMP_NUM_THREADS, else the cores), and torch is not imported for it."""
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom nucseg.models.runtime import session_threads\nfree = session_threads()\n"
            "imported = 'torch' in sys.modules\nimport torch\nprint(free, imported, session_threads())")
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    base["PYTHONPATH"] = os.pathsep.join(sys.path)
    for extra in ({}, {"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2"}):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**base, **extra},
                              timeout=300)
        assert done.returncode == 0, done.stderr
        free, imported, with_torch = done.stdout.split()
        assert imported == "False" and free == with_torch, (extra, done.stdout)


def test_a_first_export_made_apart_leaves_torch_out_of_the_loading_process(model, tmp_path):
    """The viewer's preload (`load_predictor(..., export_apart=True)`) exports a model not yet cached in a spawned
    process: the viewer then runs it in ONNX Runtime without ever importing torch or segmentation-models-pytorch
    (their 363 k objects, docs/VIEWER.md, lengthened every later full garbage collection on the GUI thread), and
    the export is the one PyTorch's network is checked against."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    code = ("import json, sys\nfrom nucseg.config import InferenceConfig\n"
            "from nucseg.inference.forward import load_predictor\n"
            "p = load_predictor(InferenceConfig(model=sys.argv[1], device='cpu'), export_apart=True)\n"
            "print(json.dumps({'runtime': p.net.runtime.split()[0], 'torch': 'torch' in sys.modules, "
            "'smp': 'segmentation_models_pytorch' in sys.modules}))")
    env = {**os.environ, "NUCSEG_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code, str(model.folder)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"runtime": "onnxruntime", "torch": False,
                                                                "smp": False}
    exports = list(cache.rglob("export.json"))
    assert len(exports) == 1
    # the child's export answers as PyTorch does
    got = runtime.OnnxNetwork(exports[0].parent, lambda: pytest.fail("no PyTorch fallback expected"))
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = torch.sigmoid(load_network(model, "cpu", runtime="pytorch")(x))
    assert float((torch.sigmoid(got(x)) - expected).abs().max()) < 1e-4


def test_an_export_apart_that_fails_says_why_and_leaves_the_load_to_report_it(model, tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setenv("NUCSEG_CACHE", str(tmp_path))
    wrong = dataclasses.replace(model, sha256="0" * 64)  # the child refuses weights that do not match their config
    why = build.export_in_child(wrong, CPU)
    assert why is not None and "sha256" in why and str(model.weights_path) in why
    assert not list(tmp_path.rglob("*.onnx"))
    assert build.export_in_child(model, torch.device("cuda")) is None  # ONNX Runtime is for the CPU only
