"""Image / instance-label pairs and the random patch sampler that feeds training."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from nucseg.errors import InvalidInputError
from nucseg.training.augment import augment_colour, flip_rotate
from nucseg.training.targets import instance_targets

_MARGIN = 16  # context cropped around a patch so targets near its edge see the whole nucleus


@dataclasses.dataclass
class TrainingPair:
    """An RGB image (H, W, 3) uint8 and its instance labels (H, W), with where it came from."""

    image: np.ndarray
    labels: np.ndarray
    name: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3:
            raise InvalidInputError(f"{self.name}: image has shape {self.image.shape}, expected (H, W, 3)")
        if self.labels.shape != self.image.shape[:2]:
            raise InvalidInputError(
                f"{self.name}: labels {self.labels.shape} and image {self.image.shape[:2]} differ in size; "
                "labels must be drawn on the same pixels as the image"
            )

    def fingerprint(self) -> str:
        """A short hash of the pixels, recorded in data manifests."""
        h = hashlib.sha256(self.image.tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]


def _stem(path: Path) -> str:
    stem = path.name.split(".")[0]
    for suffix in ("_labels", "_label", "_mask", "_masks"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def pair_files(images_dir: str | Path, labels_dir: str | Path) -> list[tuple[Path, Path]]:
    """Images and label files paired by file stem (a `_labels` / `_mask` suffix on the label is ignored).

    Raises:
        InvalidInputError: a folder is missing, or no image has a label file.
    """
    from nucseg.io.slides import list_images

    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise InvalidInputError(f"{folder} is not a folder")
    labels = {_stem(p): p for p in list_images(labels_dir)}
    pairs = [(p, labels[_stem(p)]) for p in list_images(images_dir) if _stem(p) in labels]
    if not pairs:
        raise InvalidInputError(
            f"no image in {images_dir} has a label file of the same name in {labels_dir} "
            "(pair them by file name, e.g. tile1.png with tile1.png or tile1_labels.tif)"
        )
    return pairs


def load_pairs(images_dir: str | Path, labels_dir: str | Path, names: Sequence[str] | None = None) -> list[TrainingPair]:
    """Read paired images and instance labels from two folders (optionally only the stems in `names`)."""
    from nucseg.inference.source import as_rgb_uint8
    from nucseg.io.masks import read_labels
    from nucseg.io.slides import read_image

    out = []
    for image_path, label_path in pair_files(images_dir, labels_dir):
        if names is not None and _stem(image_path) not in names:
            continue
        image = as_rgb_uint8(read_image(image_path), name=str(image_path))
        out.append(TrainingPair(image, read_labels(label_path), _stem(image_path), str(image_path)))
    return out


def _random_crop(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, size: int):
    h, w = labels.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:  # small images (e.g. DSB 256x320): mirror image and labels alike
        pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        image = np.pad(image, (*pad, (0, 0)), mode="symmetric")
        labels = np.pad(labels, pad, mode="symmetric")
        h, w = labels.shape
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return image[y : y + size, x : x + size], labels[y : y + size, x : x + size]


def _rescale(image: np.ndarray, labels: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Both resized to `shape` (h, w): the image bilinear (PIL: 20x faster than skimage's resize, which was half of
    a patch's cost; antialiased when shrinking), the labels nearest (whole ids, no new ones)."""
    h, w = shape
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    rows = ((np.arange(h) + 0.5) * (labels.shape[0] / h)).astype(np.intp)
    cols = ((np.arange(w) + 0.5) * (labels.shape[1] / w)).astype(np.intp)
    return image, labels[np.ix_(rows, cols)]


def at_model_resolution(pair: TrainingPair, mpp: float | None, model_mpp: float) -> TrainingPair:
    """`pair` resampled from `mpp` microns per pixel to the model's, as inference resamples what it segments: a
    correction drawn on a 20x slide (0.5 um/px) must teach a 40x model (0.25) nuclei at the size it sees them.
    Unchanged when `mpp` is unknown or within inference's resampling tolerance of the model's."""
    from nucseg.inference.source import RESAMPLE_TOLERANCE

    factor = model_mpp / mpp if mpp else 1.0  # pair pixels per model pixel
    if abs(factor - 1.0) < RESAMPLE_TOLERANCE:
        return pair
    h, w = pair.labels.shape
    image, labels = _rescale(pair.image, pair.labels, (max(1, round(h / factor)), max(1, round(w / factor))))
    return dataclasses.replace(pair, image=image, labels=labels)


def sample_patch(
    rng: np.random.Generator, pair: TrainingPair, patch_size: int, augmentations: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (patch, patch, 3) uint8 image and its (3, patch, patch) targets."""
    full = patch_size + 2 * _MARGIN
    scale = rng.uniform(0.8, 1.25) if "scale" in augmentations else 1.0
    region = int(round(full * scale))
    image, labels = _random_crop(rng, pair.image, pair.labels, region)
    if region != full:
        image, labels = _rescale(image, labels, (full, full))
    if "flips" in augmentations or "rot90" in augmentations:
        image, labels = flip_rotate(rng, image, labels)
    image = augment_colour(rng, image, augmentations)
    targets = instance_targets(labels)
    crop = slice(_MARGIN, _MARGIN + patch_size)
    return image[crop, crop], targets[:, crop, crop]


class PatchSampler:
    """Draws batches of random patches, images chosen in proportion to their area.

    Args:
        pairs: the training pairs.
        patch_size: side of a patch.
        augmentations: names from nucseg.config.AUGMENTATIONS.
        extra: optional second pool (the base model's original data) and the fraction of each batch drawn
            from it, so fine-tuning on a few corrections does not make the model forget what it knew.
    """

    def __init__(
        self,
        pairs: Sequence[TrainingPair],
        patch_size: int,
        augmentations: tuple[str, ...],
        extra: tuple[Sequence[TrainingPair], float] | None = None,
    ):
        if not pairs:
            raise InvalidInputError("no training images: add at least one corrected image with labels")
        self.pairs = list(pairs)
        self.patch_size = patch_size
        self.augmentations = augmentations
        self.extra = extra if extra and extra[0] and extra[1] > 0 else None

    @staticmethod
    def _pick(rng: np.random.Generator, pairs: Sequence[TrainingPair]) -> TrainingPair:
        areas = np.array([p.labels.size for p in pairs], dtype=np.float64)
        return pairs[int(rng.choice(len(pairs), p=areas / areas.sum()))]

    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        n_extra = int(round(batch_size * self.extra[1])) if self.extra else 0
        chosen = [self._pick(rng, self.pairs) for _ in range(batch_size - n_extra)]
        if self.extra:
            chosen += [self._pick(rng, self.extra[0]) for _ in range(n_extra)]
        patches = [sample_patch(rng, p, self.patch_size, self.augmentations) for p in chosen]
        return np.stack([p[0] for p in patches]), np.stack([p[1] for p in patches])


class PatchDataset:
    """Augmented patches as a map-style dataset, for torch's DataLoader with worker processes.

    Sample `i` depends only on (seed, i), so a run is reproducible whatever the number of workers. Used where
    the accelerator outpaces one process's augmentation (scripts/train_accelerated.py).
    """

    def __init__(self, pairs: Sequence[TrainingPair], patch_size: int, augmentations: tuple[str, ...],
                 seed: int, length: int):
        if not pairs:
            raise InvalidInputError("no training images: add at least one corrected image with labels")
        self.pairs = list(pairs)
        self.patch_size = patch_size
        self.augmentations = tuple(augmentations)
        self.seed = seed
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        image, targets = sample_patch(rng, PatchSampler._pick(rng, self.pairs), self.patch_size, self.augmentations)
        return np.array(image), targets  # a copy: without colour jitter the patch is a view of a read-only image


def split_pairs(
    pairs: Sequence[TrainingPair], fraction: float, seed: int = 0
) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """A reproducible train / validation split by image; at least one image each side when there are two."""
    pairs = list(pairs)
    if len(pairs) < 2 or fraction <= 0:
        return pairs, []
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = min(max(1, int(round(fraction * len(pairs)))), len(pairs) - 1)
    val_idx = set(order[:n_val].tolist())
    return [p for i, p in enumerate(pairs) if i not in val_idx], [p for i, p in enumerate(pairs) if i in val_idx]
