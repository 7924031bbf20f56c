"""The loaded network (`Predictor`, `load_predictor`) and one batch of RGB tiles through it: normalisation, device
transfer, autocast, test-time flips.

A network served by ONNX Runtime (`nucseg.models.runtime.OnnxNetwork`) runs on numpy arrays from end to end, on
`nucseg.models.device.CPU`: a prediction whose export is cached never imports torch (1.2 s).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from nucseg.models.registry import ModelSpec

if TYPE_CHECKING:
    import torch

    from nucseg.config import InferenceConfig


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A loaded network and what it needs to run: load once (`load_predictor`), reuse for every block and input.

    Attributes:
        spec: the model's spec; device: where it runs (a torch.device, or `nucseg.models.device.CPU`); net: the
            network (eval mode).
    """

    spec: Any
    device: Any
    net: Any

    @property
    def runtime(self) -> str:
        """What runs the network ("pytorch" unless the network says otherwise)."""
        return str(getattr(self.net, "runtime", "pytorch"))


def load_predictor(config: InferenceConfig, export_apart: bool = False) -> Predictor:
    """The network of `config.model` on `config.device`, run by `config.runtime` (cached by `load_network`).
    With `export_apart`, a first ONNX Runtime export is made in another process (`export_in_child`: the viewer,
    whose heap it keeps free of torch)."""
    from nucseg.models.build import load_network
    from nucseg.models.device import inference_device
    from nucseg.models.registry import resolve_model

    spec = resolve_model(config.model)
    device = inference_device(config.device)
    if export_apart:
        from nucseg.models.build import export_in_child

        export_in_child(spec, device, config.runtime)
    return Predictor(spec, device, load_network(spec, device, runtime=config.runtime))


def normalise(x: torch.Tensor | np.ndarray, spec: ModelSpec) -> torch.Tensor | np.ndarray:
    """(B, H, W, 3) uint8 on its device -> (B, 3, H, W) float32 normalised as `spec` was trained (inference and
    training share it); a numpy array gives a C-contiguous array with the same values, bit for bit."""
    if isinstance(x, np.ndarray):
        out = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
        out /= np.float32(255.0)
        out -= np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
        out /= np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
        return out
    import torch

    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def network_input(net: Any, batch: np.ndarray, spec: ModelSpec, device: Any) -> torch.Tensor | np.ndarray:
    """What `net` takes for a (B, H, W, 3) uint8 batch: a normalised array for a network served by another
    runtime than PyTorch (ONNX Runtime: no torch), else `to_input_tensor` in PyTorch's layout."""
    if getattr(net, "runtime", "pytorch") != "pytorch":
        return normalise(np.asarray(batch), spec)
    return to_input_tensor(batch, spec, device)


def to_input_tensor(batch: np.ndarray, spec: ModelSpec, device: Any, channels_last: bool = True) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> normalised (B, 3, H, W) float32 on `device` (pinned, non-blocking on CUDA); in
    channels-last memory on the CPU if `channels_last` (PyTorch's fast layout there; ONNX Runtime takes NCHW)."""
    import torch

    from nucseg.models.device import torch_device

    device = torch_device(device)
    batch = np.ascontiguousarray(batch)
    if not batch.flags.writeable:  # a view of a read-only image: torch warns on (and must not write to) those
        batch = batch.copy()
    x = torch.from_numpy(batch)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    else:
        x = x.to(device)
    x = normalise(x, spec)
    if device.type == "cpu" and channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def forward_logits(net: torch.nn.Module, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Logits (B, C, H, W) in float32; fp16 autocast on CUDA (bf16 was measured slower on CPU, so not there); an
    array (`network_input` of a network of another runtime) gives an array."""
    if isinstance(x, np.ndarray):
        return net(x)
    import torch

    with torch.inference_mode():
        if x.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return net(x).float()
        return net(x)


def predict_batch(net: torch.nn.Module, batch: np.ndarray, spec: ModelSpec, device: Any, tta: bool = False
                  ) -> np.ndarray:
    """Sigmoid probabilities (B, C, H, W) float32 for a (B, H, W, 3) uint8 batch.

    With `tta`, the mean over the identity and three flips (each flipped back), which smooths errors the
    network makes at one orientation.
    """
    x = network_input(net, batch, spec, device)
    if isinstance(x, np.ndarray):
        sigmoid, flip, to_numpy = _sigmoid, np.flip, np.asarray
    else:
        import torch

        sigmoid, flip, to_numpy = torch.sigmoid, torch.flip, lambda t: t.cpu().numpy()
    if not tta:
        return to_numpy(sigmoid(forward_logits(net, x)))
    total = None
    for dims in ((), (2,), (3,), (2, 3)):
        xi = flip(x, dims) if dims else x
        p = sigmoid(forward_logits(net, xi))
        p = flip(p, dims) if dims else p
        total = p if total is None else total + p
    return to_numpy(total / 4)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """torch.sigmoid's steps in numpy, in place: 1 / (1 + exp(-x)), each rounded to float32. numpy's float32 exp
    is not torch's (SLEEF): 28 % of the probabilities differ by one or two float32 steps (at most 2.4e-7), and
    the labels were identical on every image compared (docs/CPU_SPEED.md, "Without torch")."""
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += np.float32(1.0)
    return np.reciprocal(x, out=x)
