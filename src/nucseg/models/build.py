"""Building, loading and saving networks. Weights are safetensors only: nothing is ever unpickled."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucseg.errors import ModelError, NucsegError, StoreError
from nucseg.models.fold import fold_batchnorm
from nucseg.models.registry import (
    ARCHITECTURES,
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelSpec,
    resolve_model,
    sha256_of,
)
from nucseg.models.squeeze_excitation import strip_squeeze_excitation

if TYPE_CHECKING:
    import torch

_CACHE: dict[tuple, torch.nn.Module] = {}
_CACHE_LOCK = threading.Lock()


def build_network(spec: ModelSpec) -> torch.nn.Module:
    """A randomly initialised network for `spec` (encoder_weights=None: no download, ever)."""
    import segmentation_models_pytorch as smp

    if spec.architecture not in ARCHITECTURES:  # never getattr on the library with anything else
        raise ModelError(f"unknown architecture {spec.architecture!r} in model {spec.name!r}; nucseg builds "
                         f"{', '.join(ARCHITECTURES)}")
    arch = getattr(smp, spec.architecture)
    try:
        extra = {"decoder_channels": list(spec.decoder_channels)} if spec.decoder_channels else {}
        net = arch(encoder_name=spec.encoder, encoder_weights=None, in_channels=3, classes=len(spec.heads), **extra)
    except (KeyError, ValueError, RuntimeError) as err:
        raise ModelError(f"cannot build {spec.architecture} with encoder {spec.encoder!r}: {err}") from err
    if spec.squeeze_excitation == "constant":
        strip_squeeze_excitation(net)
    _set_batchnorm_momentum(net, 0.1)
    return net


def _set_batchnorm_momentum(net: torch.nn.Module, momentum: float) -> None:
    """EfficientNet encoders come with TensorFlow's BN momentum (0.01 in torch terms), made for fine-tuning
    pretrained weights. From scratch the weights move fast and such running statistics lag far behind them:
    measured here, eval-mode foreground fell to 0.5 % of pixels while train mode found the true 15 %."""
    import torch

    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def load_network(spec: ModelSpec | str | Path, device: Any = "cpu", runtime: str = "auto"):
    """The network of a spec, a registry name or a folder, ready for inference on `device`; cached. A model whose
    ONNX Runtime export is cached loads without importing torch.

    The weights' sha256 is checked against the config before the first load. The network is in eval mode with
    its BatchNorms folded into the convolutions (`fold_batchnorm`): do not train it; training builds its own.

    Args:
        spec: the model.
        device: where it runs: a name ("cpu", "cuda:1"), a torch.device or `nucseg.models.device.CPU`.
        runtime: "auto" (ONNX Runtime for trained models on the CPU when installed, else PyTorch), "pytorch",
            or "onnxruntime" (see `nucseg.models.runtime`). A runtime that cannot serve the model falls back to
            PyTorch with one logged warning. The result's ``runtime`` attribute says which one runs it.
    """
    from nucseg.models.device import CPU, torch_device
    from nucseg.models.runtime import RuntimeUnavailable, choose_runtime, load_onnx_network, warn_fallback

    if not isinstance(spec, ModelSpec):
        spec = resolve_model(spec)
    device = CPU if str(device) == "cpu" else torch_device(device)
    chosen = choose_runtime(runtime, device, spec)
    if chosen == "onnxruntime" and device.type != "cpu":
        warn_fallback(spec, f"ONNX Runtime serves the CPU here, not {device.type}")
        chosen = "pytorch"
    key = (spec.name, str(spec.folder), spec.sha256, str(device), chosen)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    if chosen == "onnxruntime":
        try:
            net = load_onnx_network(spec, functools.partial(load_network, spec, device, runtime="pytorch"))
        except RuntimeUnavailable as err:
            warn_fallback(spec, str(err))
            return load_network(spec, device, runtime="pytorch")
    else:
        net = _torch_network(spec, device)
    with _CACHE_LOCK:
        _CACHE[key] = net
    return net


def _torch_network(spec: ModelSpec, device: Any) -> torch.nn.Module:
    import torch

    from nucseg.models.device import torch_device

    device = torch_device(device)
    net = build_network(spec)
    if spec.trained:
        load_weights(net, spec)
    net = fold_batchnorm(net.eval()).to(device)
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)  # 1.0-1.5x faster convolutions on CPU, measured here
    net.runtime = "pytorch"
    return net


def load_weights(net: torch.nn.Module, spec: ModelSpec) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = spec.weights_path
    assert path is not None
    if spec.sha256 and sha256_of(path) != spec.sha256:
        raise ModelError(f"{path} does not match the sha256 in its {CONFIG_FILE}: the file is corrupt or was replaced")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ModelError(f"cannot read weights {path}: {err}") from err
    state = {k: v.float() for k, v in state.items()}  # shipped weights may be stored in float16
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ModelError(
            f"weights {path} do not fit a {spec.architecture} with encoder {spec.encoder}: {str(err).splitlines()[0]}"
        ) from err


def clear_cache() -> None:
    """Forget cached networks (and let the accelerator free their memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def save_model(
    net: torch.nn.Module,
    spec: ModelSpec,
    folder: str | Path,
    info: dict[str, Any] | None = None,
    half: bool = False,
) -> ModelSpec:
    """Write `net` as a new model folder (model.safetensors + config.json) and return its spec.

    Never overwrites: if `folder` exists, raises StoreError. The folder appears atomically (written under a
    temporary name, then renamed), so a crash never leaves a half-written model where a user would find it.

    Args:
        net: the network.
        spec: its architecture description; `info` is merged into the config.
        folder: the new folder.
        info: training data, metrics, lineage, postprocess defaults...
        half: store weights as float16 (halves the file; loads back as float32).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists():
        raise StoreError(f"{folder} already exists: model versions are never overwritten; choose a new name")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in net.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        config = spec.to_config()
        config.update(info or {})
        config["name"] = (info or {}).get("name", folder.name)
        config.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        config["sha256"] = sha256_of(tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        os.rename(tmp, folder)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from nucseg.models.registry import spec_from_folder

    return spec_from_folder(folder)


def export_in_child(spec: ModelSpec, device: Any, runtime: str = "auto") -> str | None:
    """Export and check `spec`'s network for ONNX Runtime (`nucseg.models.runtime.load_onnx_network`'s cached
    export) in a spawned Python process, where a run on `device` with `runtime` would use ONNX Runtime and the
    export is not cached yet: the caller then loads the model without importing torch and
    segmentation-models-pytorch.

    Why: imported into the viewer, they add 363 k objects to the heap the garbage collector walks at every full
    collection on the GUI thread (napari forces one each time it removes a layer), for the rest of the session:
    about as many as napari's own (docs/VIEWER.md).

    Returns:
        None when the export is (now) cached or not needed; else why the child did not write it. Nothing is
        raised: the caller's own load meets the same problem and reports it (it exports in its own process and
        falls back to PyTorch with `warn_fallback`'s warning).
    """
    from nucseg.jobs.apart import call_apart
    from nucseg.models.runtime import choose_runtime, export_folder

    if device.type != "cpu" or choose_runtime(runtime, device, spec) != "onnxruntime":
        return None
    if spec.weights_path is None or (export_folder(spec, sha256_of(spec.weights_path)) / "export.json").is_file():
        return None
    try:
        why = call_apart(_export_here, spec, what=f"exporting {spec.name} for ONNX Runtime")
    except (NucsegError, OSError) as err:  # the child died, or could not start
        why = str(err)
    if why is not None:
        logging.getLogger(__name__).info("nucseg: exporting %s for ONNX Runtime in a separate process failed (%s)",
                                         spec.name, why)
    return why


def _export_here(spec: ModelSpec) -> str | None:
    """In `export_in_child`'s process: export `spec` as a load on the CPU does; None, or why not (a message
    pickles, every exception may not)."""
    from nucseg.models.runtime import load_onnx_network

    try:
        load_onnx_network(spec, functools.partial(load_network, spec, "cpu", runtime="pytorch"))
    except Exception as err:  # noqa: BLE001 - reported by the caller's own load, which meets it again
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    return None
