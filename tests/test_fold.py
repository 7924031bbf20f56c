"""Folding BatchNorm into convolutions: same outputs, no BatchNorm left, and no silent change when unsure."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nucseg.models.build import build_network, load_network  # noqa: E402
from nucseg.models.fold import fold_batchnorm  # noqa: E402
from nucseg.models.registry import resolve_model  # noqa: E402


def _randomise_statistics(net):
    """Fresh BatchNorms are identities in eval mode; give them statistics so folding has something to do."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", ["unet-efficientnet-b0", "unet-mobilenet_v2", "unet-resnet18"])
def test_folded_network_gives_the_same_outputs_without_batchnorm(name):
    torch.manual_seed(0)
    net = build_network(resolve_model(name)).eval()
    _randomise_statistics(net)
    folded = fold_batchnorm(net)
    assert folded is not net
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    x = torch.rand(2, 3, 96, 128)
    with torch.inference_mode():
        a, b = net(x), folded(x)
    assert torch.allclose(a, b, atol=1e-4 * (1 + float(a.abs().max())))


class _BatchNormBeforeConv(torch.nn.Module):
    """Declared conv-then-bn, but run bn-then-conv: registration order lies about execution order."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_a_pairing_that_changes_the_outputs_is_not_folded():
    net = _BatchNormBeforeConv().eval()
    _randomise_statistics(net)
    assert fold_batchnorm(net) is net


def test_folding_refuses_a_training_network():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_network(resolve_model("unet-mobilenet_v2")))


def test_loaded_default_model_is_folded_and_matches_its_weights():
    from nucseg.models.build import load_weights

    spec = resolve_model("nucseg-default")
    loaded = load_network(spec, runtime="pytorch")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    plain = build_network(spec)
    load_weights(plain, spec)
    plain.eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.inference_mode():
        a, b = plain(x), loaded(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-3)
