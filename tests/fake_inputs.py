"""Test inputs that need no torch: a synthetic H&E-like image with its true nuclei, a model folder whose network a
test replaces, and `NumpyBlobNet`, `fake_models.BlobNet` in numpy. The stall benchmark runs the viewer with these,
so its process holds no torch, as a user's viewer on the CPU does not (ONNX Runtime serves the model there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def blob_image(shape=(300, 400), n=40, seed=0, radius=(5, 10)) -> tuple[np.ndarray, np.ndarray]:
    """White RGB image with dark discs (at least 4 px apart) and its instance labels."""
    rng = np.random.default_rng(seed)
    img = np.full((*shape, 3), 235, np.uint8)
    labels = np.zeros(shape, np.uint32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    k = 0
    for _ in range(n * 5):
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(r, shape[0] - r), rng.uniform(r, shape[1] - r)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        if labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 4) ** 2].any():  # BlobNet cannot part touching discs
            continue
        k += 1
        labels[disc] = k
        img[disc] = (90, 40, 120)
        if k == n:
            break
    return img, labels


#: the fake model's name in the list and in layer names: a version folder whose network is replaced by BlobNet
MODEL_NAME = "blobnet"


def fake_model_folder(home: Path, name: str = MODEL_NAME, version: str | None = "1") -> Path:
    """A model folder in ``home/models`` (config.json + an empty weights file: `load_network` is replaced)."""
    import hashlib
    import json

    folder = home / "models" / name
    folder.mkdir(parents=True)
    config = {"name": name, "architecture": "Unet", "encoder": "efficientnet-b0", "mpp": 0.25,
              "description": "BlobNet for tests", "sha256": hashlib.sha256(name.encode()).hexdigest(),
              **({"version": version} if version else {})}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


class NumpyBlobNet:
    """`fake_models.BlobNet` on numpy arrays, served as a runtime other than PyTorch is (as ONNX Runtime's
    `nucseg.models.runtime.OnnxNetwork`): normalised (B, 3, H, W) float32 in, logits out, no gates."""

    runtime = "numpy (a test stand-in)"
    gate_channels: list[int] = []
    gated = True

    def __init__(self, sigma: float = 3.0, radius: int = 9):
        x = np.arange(-radius, radius + 1, dtype=np.float32)
        g = np.exp(-(x**2) / (2 * sigma**2))
        self.kernel = (g / g.sum()).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from scipy.ndimage import correlate1d

        gray = x.mean(axis=1, keepdims=True) * 0.226 + 0.449
        fg = 1 / (1 + np.exp(-(0.55 - gray) * 40))
        blur = correlate1d(correlate1d(fg, self.kernel, axis=3, mode="constant"), self.kernel, axis=2,
                           mode="constant")
        dist = blur * fg

        def logit(p: np.ndarray) -> np.ndarray:
            p = np.clip(p, 1e-4, 1 - 1e-4)
            return np.log(p / (1 - p))

        return np.concatenate([logit(fg), np.full_like(fg, -9.0), logit(dist)], axis=1).astype(np.float32)

    def eval(self) -> NumpyBlobNet:
        return self

    def to(self, *args, **kwargs) -> NumpyBlobNet:
        return self
