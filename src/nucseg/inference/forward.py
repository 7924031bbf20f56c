"""The loaded network (`Predictor`, `load_predictor`) and one batch of RGB tiles through it: normalisation, device
transfer, autocast, test-time flips."""

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
        spec: the model's spec; device: where it runs; net: the network (eval mode).
    """

    spec: Any
    device: torch.device
    net: Any

    @property
    def runtime(self) -> str:
        """What runs the network ("pytorch" unless the network says otherwise)."""
        return str(getattr(self.net, "runtime", "pytorch"))


def load_predictor(config: InferenceConfig) -> Predictor:
    """The network of `config.model` on `config.device`, run by `config.runtime` (cached by `load_network`)."""
    from nucseg.models.build import load_network
    from nucseg.models.device import select_device
    from nucseg.models.registry import resolve_model

    spec = resolve_model(config.model)
    device = select_device(config.device)
    return Predictor(spec, device, load_network(spec, device, runtime=config.runtime))


def normalise(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """(B, H, W, 3) uint8 on its device -> (B, 3, H, W) float32 normalised as `spec` was trained (inference and
    training share it)."""
    import torch

    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def to_input_tensor(batch: np.ndarray, spec: ModelSpec, device: torch.device,
                    channels_last: bool = True) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> normalised (B, 3, H, W) float32 on `device` (pinned, non-blocking on CUDA); in
    channels-last memory on the CPU if `channels_last` (PyTorch's fast layout there; ONNX Runtime takes NCHW)."""
    import torch

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


def forward_logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, C, H, W) in float32; fp16 autocast on CUDA (bf16 was measured slower on CPU, so not there)."""
    import torch

    with torch.inference_mode():
        if x.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return net(x).float()
        return net(x)


def predict_batch(
    net: torch.nn.Module, batch: np.ndarray, spec: ModelSpec, device: torch.device, tta: bool = False
) -> np.ndarray:
    """Sigmoid probabilities (B, C, H, W) float32 for a (B, H, W, 3) uint8 batch.

    With `tta`, the mean over the identity and three flips (each flipped back), which smooths errors the
    network makes at one orientation.
    """
    import torch

    x = to_input_tensor(batch, spec, device, channels_last=getattr(net, "runtime", "pytorch") == "pytorch")
    if not tta:
        return torch.sigmoid(forward_logits(net, x)).cpu().numpy()
    total = None
    for dims in ((), (2,), (3,), (2, 3)):
        xi = torch.flip(x, dims) if dims else x
        p = torch.sigmoid(forward_logits(net, xi))
        p = torch.flip(p, dims) if dims else p
        total = p if total is None else total + p
    return (total / 4).cpu().numpy()
