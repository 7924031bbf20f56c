"""Small deterministic stand-ins for a trained network, so inference tests need no training.

`BlobNet` maps dark pixels to foreground and blurs that into a distance-like map with a bounded receptive
field, like a real UNet does but exactly reproducible: a tiled run must equal a whole-image run.
"""

from __future__ import annotations

import torch
from torch import nn

from fake_inputs import blob_image  # noqa: F401 - where the tests have long imported it from


class BlobNet(nn.Module):
    def __init__(self, sigma: float = 3.0, radius: int = 9):
        super().__init__()
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-(x**2) / (2 * sigma**2))
        self.register_buffer("kernel", (g / g.sum()).view(1, 1, 1, -1))
        self.radius = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # inputs are ImageNet-normalised; undo roughly to get darkness in [0, 1]
        gray = x.mean(dim=1, keepdim=True) * 0.226 + 0.449
        fg = torch.sigmoid((0.55 - gray) * 40)
        blur = nn.functional.conv2d(fg, self.kernel, padding=(0, self.radius))
        blur = nn.functional.conv2d(blur, self.kernel.transpose(2, 3), padding=(self.radius, 0))
        dist = blur * fg
        logit = lambda p: torch.logit(p.clamp(1e-4, 1 - 1e-4))  # noqa: E731
        return torch.cat([logit(fg), torch.full_like(fg, -9.0), logit(dist)], dim=1)


def install_blobnet(monkeypatch) -> None:
    """Make every model name load a BlobNet (and resolve to an untrained EfficientNet-B0 spec)."""
    from nucseg.models import build

    net = BlobNet().eval()
    monkeypatch.setattr(build, "load_network", lambda spec, device="cpu", runtime="auto": net)


def save_reactive_model(folder, seed: int = 0, decoder_channels=None):
    """An EfficientNet-B0 UNet model folder whose squeeze-excitation gates react strongly to their input (fresh
    gates barely do; trained ones do), optionally with a lean decoder."""
    import dataclasses

    import torch

    from nucseg.models.build import build_network, save_model
    from nucseg.models.registry import untrained_spec
    from nucseg.models.squeeze_excitation import se_blocks

    torch.manual_seed(seed)
    spec = untrained_spec("efficientnet-b0")
    if decoder_channels is not None:
        spec = dataclasses.replace(spec, decoder_channels=tuple(decoder_channels))
    net = build_network(spec).eval()
    for block in se_blocks(net):
        block._se_reduce.weight.data.mul_(10)
        block._se_expand.weight.data.mul_(10)
    return save_model(net, spec, folder)
