"""Squeeze-excitation gates fixed per image, so that a tile, a region and the whole image give the same pixels.

Squeeze-excitation (EfficientNet's blocks) rescales every channel by a gate computed from the channel's mean over
the *whole input*. Run tile by tile, each tile gets its own gates: every output pixel depends on the whole tile,
so 256-px tiles and one 512-px tile disagree everywhere, not just at the seams (measured on the default model:
object F1 0.979, Dice 0.985 between the two). Two ways out, both leaving a network whose outputs depend on
nearby pixels only:

- ``"image"`` (the default): the gates are measured once per image, on windows chosen from the image alone
  (``nucseg.inference.calibration``), with the encoder run on them as if they were one image (`pooled_gates`),
  and every tile uses them (`with_gates`). The network keeps adapting to each image's staining, as it did in
  training.
- ``"constant"``: the gates frozen to their mean over training patches and folded into the weights (the 1x1
  projection after them). Measured in docs/MODEL.md ("Tiling"): better on the MoNuSeg validation tiles, worse on
  unseen stains, where the per-image gates are what adapts the network.
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
    if hasattr(net, "gate_channels"):
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
    """Each block's gate (per channel, after the sigmoid), averaged over every image of `batches` (each image with
    its own gates, as in training); the network's outputs are appended to `outputs` if given (else only the
    encoder runs)."""
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
                if outputs is not None:
                    outputs.append(net(x))
                else:  # the gates are all in the encoder: the decoder need not run
                    getattr(net, "encoder", net)(x)
                count += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    if count == 0:
        raise ValueError("mean_gates needs at least one image")
    return [s / count for s in sums]


def pooled_gates(net: torch.nn.Module, windows: torch.Tensor) -> list[torch.Tensor]:
    """Each block's gate vector (C,) for `windows` (a normalised (N, 3, S, S) batch) seen as one image: every
    block's squeeze (its channels' means) is pooled over all windows, so the windows share one gate per block, as
    the pixels of one image do. Runs the encoder only; a network served by another runtime computes them in its
    own graph. `net` itself is never hooked (a copy is)."""
    import copy

    import torch

    if hasattr(net, "pooled_gates"):
        return [torch.from_numpy(g).flatten() for g in net.pooled_gates(windows)]
    inner = copy.deepcopy(net).eval()
    gates: list[torch.Tensor] = []
    handles = []
    for block in se_blocks(inner):
        handles.append(block._se_reduce.register_forward_pre_hook(_pool_squeeze))
        handles.append(block._se_expand.register_forward_hook(
            lambda _m, _i, out: gates.append(torch.sigmoid(out).flatten())))
    with torch.inference_mode():
        inner.encoder(windows)
    return gates


def with_pooled_gates(net: torch.nn.Module, windows: torch.Tensor) -> torch.nn.Module:
    """`with_gates(net, pooled_gates(net, windows))`; a network served by another runtime does both on its own
    arrays (`windows` as its input, a numpy array for ONNX Runtime: no torch)."""
    if hasattr(net, "pooled_gates"):
        return net.with_gates(net.pooled_gates(windows))
    return with_gates(net, pooled_gates(net, windows))


def _pool_squeeze(_module, args):
    """(N, C, 1, 1) per-window channel means -> (1, C, 1, 1) their mean (equal windows: the pooled mean)."""
    return (args[0].mean(0, keepdim=True),)


def with_gates(net: torch.nn.Module, gates: list[torch.Tensor]) -> torch.nn.Module:
    """A copy of `net` whose gates are fixed to `gates` (one vector per block); `net` itself if it has none."""
    import copy

    if not se_blocks(net):
        return net
    if hasattr(net, "with_gates"):
        return net.with_gates([g.detach().cpu().numpy() for g in gates])
    fixed = copy.deepcopy(net)
    freeze_gates(fixed, gates)
    return fixed


def freeze_gates(net: torch.nn.Module, gates: list[torch.Tensor]) -> None:
    """Scale each block's projection by its constant gates and drop the gate branch (in place)."""
    blocks = se_blocks(net)
    if len(gates) != len(blocks):
        raise ValueError(f"{len(gates)} gate vectors for {len(blocks)} squeeze-excitation blocks")
    for block, gate in zip(blocks, gates, strict=True):
        weight = block._project_conv.weight
        weight.data.mul_(gate.to(weight.device, weight.dtype).view(1, -1, 1, 1))
    strip_squeeze_excitation(net)
