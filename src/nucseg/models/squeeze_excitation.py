"""Squeeze-excitation gates fixed per image, so a tiled run equals a one-tile run.

Squeeze-excitation (EfficientNet's blocks) rescales every channel by a gate computed from the channel's mean over
the *whole input*. Run tile by tile, each tile gets its own gates: every output pixel depends on the whole tile,
so 256-px tiles and one 512-px tile disagree everywhere, not just at the seams (measured on the default model:
object F1 0.979, Dice 0.985 between the two). Two ways out, both leaving a network whose outputs depend on
nearby pixels only:

- ``"image"`` (the default): before the tiles run, the gates are measured once on a reference window of the
  image (see ``nucseg.inference.calibration``) and every tile uses them. The network keeps adapting to each
  image's staining, as it did in training; an image that fits one window gets exactly the gates a one-tile run
  gives it.
- ``"constant"``: the gates frozen to their mean over training patches and folded into the weights (the 1x1
  projection after them). Measured on the default model: MoNuSeg validation AJI 0.578 -> 0.592, but DSB cell smears
  0.498 -> 0.426 and pink H&E 0.431 -> 0.215: without the per-image gates the network stops adapting to unseen
  stains, so the shipped model uses "image".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from nucseg.errors import ModelError

if TYPE_CHECKING:
    import torch

#: how a network's squeeze-excitation gates are fixed: measured per image, or frozen into the weights
SQUEEZE_EXCITATION_MODES = ("image", "constant")


def se_blocks(net: torch.nn.Module) -> list:
    """The encoder blocks that still compute their gates (smp's EfficientNet MBConv blocks); for a network served
    by another runtime (`nucseg.models.runtime.OnnxNetwork`), the channel counts of the gates it still computes."""
    if hasattr(net, "with_gates_of"):
        return [] if net.gated else list(net.gate_channels)
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


def mean_gates(net: torch.nn.Module, batches: Iterable[torch.Tensor],
               outputs: list | None = None) -> list[torch.Tensor]:
    """Each block's gate (per channel, after the sigmoid), averaged over every image of `batches`; the network's
    outputs are appended to `outputs` if given."""
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
                y = net(x)
                if outputs is not None:
                    outputs.append(y)
                count += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    if count == 0:
        raise ValueError("mean_gates needs at least one image")
    return [s / count for s in sums]


def with_image_gates(net: torch.nn.Module, window: torch.Tensor) -> tuple[torch.nn.Module, torch.Tensor | None]:
    """A copy of `net` whose gates are fixed to those of `window` (a normalised (1, 3, H, W) batch), and the
    copy's logits for `window` (the pass that measured the gates computed them: a tile that is the window needs
    no second pass). `net` itself and None when it has no gates to fix. The copy is made first, so a network
    shared with other threads is never hooked."""
    import copy

    if not se_blocks(net):
        return net, None
    if hasattr(net, "with_gates_of"):  # another runtime: its graph measures the gates and takes them as inputs
        return net.with_gates_of(window)
    fixed = copy.deepcopy(net)
    outputs: list = []
    freeze_gates(fixed, mean_gates(fixed, [window], outputs))
    return fixed, outputs[0]


def freeze_gates(net: torch.nn.Module, gates: list[torch.Tensor]) -> None:
    """Scale each block's projection by its constant gates and drop the gate branch (in place)."""
    blocks = se_blocks(net)
    if len(gates) != len(blocks):
        raise ValueError(f"{len(gates)} gate vectors for {len(blocks)} squeeze-excitation blocks")
    for block, gate in zip(blocks, gates, strict=True):
        weight = block._project_conv.weight
        weight.data.mul_(gate.to(weight.device, weight.dtype).view(1, -1, 1, 1))
    strip_squeeze_excitation(net)
