"""Image / instance-label pairs and the random patch sampler that feeds training."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from nucseg.errors import InvalidInputError
from nucseg.io.names import pair_stem
from nucseg.training.augment import augment_colour, flip_rotate
from nucseg.training.targets import instance_targets

_MARGIN = 16  # context cropped around a patch so targets near its edge see the whole nucleus
#: the channel of `sample_patch`'s targets that weighs each pixel: 1 where the labels were reviewed, else 0
WEIGHT_CHANNEL = 3


@dataclasses.dataclass
class TrainingPair:
    """An RGB image (H, W, 3) uint8 and its instance labels (H, W), with where it came from.

    `reviewed` is an (H, W) bool mask of the pixels whose labels a person checked; training learns only there
    (patches are drawn around reviewed pixels, the loss ignores the others). None: all of it was reviewed.
    """

    image: np.ndarray
    labels: np.ndarray
    name: str
    source: str = ""
    reviewed: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3:
            raise InvalidInputError(f"{self.name}: image has shape {self.image.shape}, expected (H, W, 3)")
        if self.labels.shape != self.image.shape[:2]:
            raise InvalidInputError(
                f"{self.name}: labels {self.labels.shape} and image {self.image.shape[:2]} differ in size; "
                "labels must be drawn on the same pixels as the image"
            )
        if self.reviewed is not None:
            self.reviewed = np.asarray(self.reviewed, dtype=bool)
            if self.reviewed.shape != self.labels.shape:
                raise InvalidInputError(f"{self.name}: reviewed mask {self.reviewed.shape} and labels "
                                        f"{self.labels.shape} differ in size")
            if not self.reviewed.any():
                raise InvalidInputError(f"{self.name}: no pixel is marked as reviewed, so there is nothing to learn")

    @property
    def reviewed_fraction(self) -> float:
        """Share of the pixels whose labels were reviewed (1.0 without a mask)."""
        return 1.0 if self.reviewed is None else float(self.reviewed.mean())

    @property
    def reviewed_pixels(self) -> int:
        return self.labels.size if self.reviewed is None else int(np.count_nonzero(self.reviewed))

    @functools.cached_property
    def _reviewed_index(self) -> np.ndarray:
        return np.flatnonzero(self.reviewed)

    def fingerprint(self) -> str:
        """A short hash of the pixels (and of the reviewed mask, when there is one), recorded in data manifests."""
        h = hashlib.sha256(self.image.tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        if self.reviewed is not None:
            h.update(np.packbits(self.reviewed).tobytes())
        return h.hexdigest()[:16]


def pair_files(images_dir: str | Path, labels_dir: str | Path) -> list[tuple[Path, Path]]:
    """Images and label files paired by `nucseg.io.names.pair_stem` (a `_labels` / `_mask` tag is ignored).

    Raises:
        InvalidInputError: a folder is missing, or no image has a label file.
    """
    from nucseg.io.slides import list_images

    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise InvalidInputError(f"{folder} is not a folder")
    labels = {pair_stem(p): p for p in list_images(labels_dir)}
    pairs = [(p, labels[pair_stem(p)]) for p in list_images(images_dir) if pair_stem(p) in labels]
    if not pairs:
        raise InvalidInputError(
            f"no image in {images_dir} has a label file of the same name in {labels_dir} "
            "(pair them by file name, e.g. tile1.png with tile1.png or tile1_labels.tif)"
        )
    return pairs


def load_pairs(images_dir: str | Path, labels_dir: str | Path, names: Sequence[str] | None = None,
               reviewed_dir: str | Path | None = None) -> list[TrainingPair]:
    """Read paired images and instance labels from two folders (optionally only the stems in `names`).

    With `reviewed_dir`, a mask of the same stem there (white = reviewed) limits what each pair teaches;
    a pair without one was reviewed as a whole.
    """
    from nucseg.io.base import as_rgb_uint8
    from nucseg.io.masks import read_labels
    from nucseg.io.slides import read_image

    masks = {}
    if reviewed_dir is not None:
        from nucseg.io.slides import list_images

        if not Path(reviewed_dir).is_dir():
            raise InvalidInputError(f"{reviewed_dir} is not a folder")
        masks = {pair_stem(p): p for p in list_images(Path(reviewed_dir))}
    out = []
    for image_path, label_path in pair_files(images_dir, labels_dir):
        if names is not None and pair_stem(image_path) not in names:
            continue
        image = as_rgb_uint8(read_image(image_path), name=str(image_path))
        mask_path = masks.get(pair_stem(image_path))
        reviewed = None
        if mask_path is not None:
            with Image.open(mask_path) as im:
                reviewed = np.asarray(im.convert("L")) > 127
        out.append(TrainingPair(image, read_labels(label_path), pair_stem(image_path), str(image_path), reviewed))
    return out


def _random_crop(rng: np.random.Generator, pair: TrainingPair, size: int, margin: int = 0):
    """(image, labels, reviewed or None) of a random `size` crop; with a reviewed mask, the crop is placed so
    that a reviewed pixel drawn at random lies inside it, at least `margin` pixels from its edge."""
    image, labels, reviewed = pair.image, pair.labels, pair.reviewed
    h, w = labels.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:  # small images (e.g. DSB 256x320): mirror image, labels and mask alike
        pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        image = np.pad(image, (*pad, (0, 0)), mode="symmetric")
        labels = np.pad(labels, pad, mode="symmetric")
        reviewed = None if reviewed is None else np.pad(reviewed, pad, mode="symmetric")
        h, w = labels.shape
    if reviewed is None:
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
    else:
        index = pair._reviewed_index
        ry, rx = divmod(int(index[rng.integers(len(index))]), pair.labels.shape[1])
        ry, rx = ry + (ph // 2 if ph else 0), rx + (pw // 2 if pw else 0)
        inner = max(1, size - 2 * margin)
        y = int(np.clip(ry - margin - rng.integers(inner), 0, h - size))
        x = int(np.clip(rx - margin - rng.integers(inner), 0, w - size))
    crop = (slice(y, y + size), slice(x, x + size))
    return image[crop], labels[crop], None if reviewed is None else reviewed[crop]


def _rescale(image: np.ndarray, labels: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Both resized to `shape` (h, w): the image bilinear (PIL: 20x faster than skimage's resize, which was half of
    a patch's cost; antialiased when shrinking), the labels nearest (whole ids, no new ones)."""
    h, w = shape
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    return image, _rescale_nearest(labels, shape)


def _rescale_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    rows = ((np.arange(h) + 0.5) * (array.shape[0] / h)).astype(np.intp)
    cols = ((np.arange(w) + 0.5) * (array.shape[1] / w)).astype(np.intp)
    return array[np.ix_(rows, cols)]


def at_model_resolution(pair: TrainingPair, mpp: float | None, model_mpp: float) -> TrainingPair:
    """`pair` resampled from `mpp` microns per pixel to the model's, as inference resamples what it segments: a
    correction drawn on a 20x slide (0.5 um/px) must teach a 40x model (0.25) nuclei at the size it sees them.
    Unchanged when `mpp` is unknown or within inference's resampling tolerance of the model's."""
    from nucseg.inference.source import RESAMPLE_TOLERANCE, check_scale

    factor = check_scale(mpp, model_mpp, pair.name)  # pair pixels per model pixel
    if abs(factor - 1.0) < RESAMPLE_TOLERANCE:
        return pair
    h, w = pair.labels.shape
    shape = (max(1, round(h / factor)), max(1, round(w / factor)))
    image, labels = _rescale(pair.image, pair.labels, shape)
    reviewed = None if pair.reviewed is None else _rescale_nearest(pair.reviewed, shape)
    return dataclasses.replace(pair, image=image, labels=labels, reviewed=reviewed)


def sample_patch(
    rng: np.random.Generator, pair: TrainingPair, patch_size: int, augmentations: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (patch, patch, 3) uint8 image and its (4, patch, patch) targets: foreground, contour,
    distance and, in channel `WEIGHT_CHANNEL`, 1 where the labels were reviewed (0 elsewhere: no loss there)."""
    full = patch_size + 2 * _MARGIN
    scale = rng.uniform(0.8, 1.25) if "scale" in augmentations else 1.0
    region = int(round(full * scale))
    image, labels, reviewed = _random_crop(rng, pair, region, int(round(_MARGIN * scale)))
    if region != full:
        image, labels = _rescale(image, labels, (full, full))
        reviewed = None if reviewed is None else _rescale_nearest(reviewed, (full, full))
    if "flips" in augmentations or "rot90" in augmentations:
        if reviewed is None:
            image, labels = flip_rotate(rng, image, labels)
        else:
            image, labels, reviewed = flip_rotate(rng, image, labels, reviewed)
    image = augment_colour(rng, image, augmentations)
    crop = slice(_MARGIN, _MARGIN + patch_size)
    targets = np.empty((4, patch_size, patch_size), np.float32)
    targets[:3] = instance_targets(labels)[:, crop, crop]
    targets[WEIGHT_CHANNEL] = 1.0 if reviewed is None else reviewed[crop, crop]
    return image[crop, crop], targets


class PatchSampler:
    """Draws batches of random patches, images chosen in proportion to their reviewed area.

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
        areas = np.array([p.reviewed_pixels for p in pairs], dtype=np.float64)
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
