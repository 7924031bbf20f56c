"""Augmentations for H&E patches: flips and 90-degree rotations (the thesis's), stain (HED) and colour
jitter so a model generalises beyond its hospitals' staining, mild rescaling and blur."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB), as in skimage.color.rgb2hed.
_HED_FROM_RGB = np.linalg.inv(
    np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32)
)
_RGB_FROM_HED = np.linalg.inv(_HED_FROM_RGB)


def flip_rotate(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    """The same random flip / 90-degree rotation applied to every (H, W, ...) array."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(0, 1))
        if flip:
            a = a[:, ::-1]
        out.append(np.ascontiguousarray(a))
    return out


def stain_jitter(rng: np.random.Generator, image: np.ndarray, sigma: float = 0.05, bias: float = 0.05) -> np.ndarray:
    """Scale and shift each stain's optical density (Tellez et al. 2018's HED augmentation)."""
    rgb = image.astype(np.float32)
    od = -np.log((rgb + 1.0) / 256.0)
    hed = od @ _HED_FROM_RGB
    alpha = rng.uniform(1 - sigma, 1 + sigma, size=3).astype(np.float32)
    beta = rng.uniform(-bias, bias, size=3).astype(np.float32)
    od = (hed * alpha + beta) @ _RGB_FROM_HED
    return np.clip(256.0 * np.exp(-od) - 1.0, 0, 255).astype(np.uint8)


def color_jitter(rng: np.random.Generator, image: np.ndarray, strength: float = 0.15) -> np.ndarray:
    """Brightness, contrast, saturation and gamma, each by up to +-`strength`."""
    x = image.astype(np.float32) / 255.0
    x = x * rng.uniform(1 - strength, 1 + strength)
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - strength, 1 + strength) + mean
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * rng.uniform(1 - strength, 1 + strength) + gray
    x = np.clip(x, 0, 1) ** rng.uniform(1 - strength, 1 + strength)
    return (x * 255.0 + 0.5).astype(np.uint8)


def gaussian_blur(rng: np.random.Generator, image: np.ndarray, max_sigma: float = 1.0) -> np.ndarray:
    """Out-of-focus scanning: blur with sigma up to `max_sigma` px."""
    sigma = rng.uniform(0.0, max_sigma)
    if sigma < 0.2:
        return image
    return ndi.gaussian_filter(image, sigma=(sigma, sigma, 0))


def augment_colour(rng: np.random.Generator, image: np.ndarray, augmentations: tuple[str, ...]) -> np.ndarray:
    """Apply the colour-space augmentations named in `augmentations` (each half the time)."""
    if "stain" in augmentations and rng.random() < 0.8:
        image = stain_jitter(rng, image)
    if "color" in augmentations and rng.random() < 0.8:
        image = color_jitter(rng, image)
    if "blur" in augmentations and rng.random() < 0.3:
        image = gaussian_blur(rng, image)
    return image
