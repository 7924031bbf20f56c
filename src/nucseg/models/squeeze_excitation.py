"""Squeeze-excitation with constant gates: an EfficientNet UNet whose output depends on nearby pixels only.

Squeeze-excitation rescales every channel by a gate computed from the channel's mean over the *whole input*.
Each output pixel then depends on the whole tile, so a slide run in 256-px tiles and the same pixels run as one
tile disagree everywhere, not just at the seams; and a network trained on 256-px patches sees other gates on
a 1000-px validation tile. Freezing each gate to its mean over training patches (folded into the 1x1 projection
that follows it) removes the global pooling. Measured on version 1 of the default model, with no retraining:
256-px tiles vs one tile went from object F1 0.979 / Dice 0.985 to 0.993 / 0.998, and held-out AJI from
0.578 to 0.592.

A spec with ``squeeze_excitation="constant"`` builds the network without the gate branch; its weights already
carry the frozen gates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from nucseg.errors import ModelError

if TYPE_CHECKING:
    import torch

#: how a network computes its squeeze-excitation gates
SQUEEZE_EXCITATION_MODES = ("global", "constant")


def se_blocks(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The encoder blocks that still compute their gates (smp's EfficientNet MBConv blocks)."""
    blocks = getattr(getattr(net, "encoder", None), "_blocks", None)
    return [b for b in (blocks or []) if getattr(b, "_has_se", False)]


def strip_squeeze_excitation(net: torch.nn.Module) -> None:
    """Remove the gate branch (the architecture of a model whose gates were frozen into its weights)."""
    blocks = se_blocks(net)
    if not blocks:
        raise ModelError(
            f"{type(getattr(net, 'encoder', net)).__name__} has no squeeze-excitation blocks to make constant; "
            "squeeze_excitation='constant' is for EfficientNet encoders"
        )
    for block in blocks:
        block._has_se = False
        del block._se_reduce, block._se_expand


def mean_gates(net: torch.nn.Module, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Each block's gate (per channel, after the sigmoid), averaged over every image of `batches`."""
    import torch

    blocks = se_blocks(net)
    sums: list[torch.Tensor | None] = [None] * len(blocks)
    count = 0

    def hook(i):
        def record(_module, _inputs, output):
            g = torch.sigmoid(output).sum(0).flatten()
            sums[i] = g if sums[i] is None else sums[i] + g
        return record

    handles = [b._se_expand.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for x in batches:
                net(x)
                count += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    if count == 0:
        raise ValueError("mean_gates needs at least one image")
    return [s / count for s in sums]


def freeze_gates(net: torch.nn.Module, gates: list[torch.Tensor]) -> None:
    """Scale each block's projection by its constant gates and drop the gate branch (in place)."""
    blocks = se_blocks(net)
    if len(gates) != len(blocks):
        raise ValueError(f"{len(gates)} gate vectors for {len(blocks)} squeeze-excitation blocks")
    for block, gate in zip(blocks, gates, strict=True):
        weight = block._project_conv.weight
        weight.data.mul_(gate.to(weight.device, weight.dtype).view(1, -1, 1, 1))
    strip_squeeze_excitation(net)
