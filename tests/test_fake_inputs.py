"""The torch-free stand-ins (tests/fake_inputs.py) answer as the torch ones they copy."""

from __future__ import annotations

import numpy as np
import pytest

from fake_inputs import NumpyBlobNet, blob_image


def test_the_numpy_blobnet_gives_blobnets_logits_and_labels():
    torch = pytest.importorskip("torch")
    from fake_models import BlobNet
    from nucseg.inference.forward import normalise
    from nucseg.models.registry import untrained_spec

    image, _ = blob_image((96, 128), n=8, seed=1)
    x = normalise(image[None], untrained_spec("efficientnet-b0"))
    with torch.inference_mode():
        expected = BlobNet()(torch.from_numpy(x)).numpy()
    got = NumpyBlobNet()(x)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert float(np.abs(got - expected).max()) < 1e-3
