"""One frozen, validated configuration dataclass per job (DESIGN.md rule 3).

Every config converts to and from a JSON-able dict, and is written next to every output and checkpoint so a
result can always be traced back to the settings that made it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from nucseg.errors import ConfigError, StoreError

T = TypeVar("T", bound="_JsonConfig")

#: Encoders of the UNets downsample 5 times, so tile sizes must be multiples of this.
ENCODER_STRIDE = 32
DEVICES = ("auto", "cpu", "cuda", "mps")
#: what runs the network: "auto" takes ONNX Runtime on the CPU when installed (see nucseg.models.runtime)
RUNTIMES = ("auto", "pytorch", "onnxruntime")


class _JsonConfig:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown settings {sorted(unknown)}; known are {sorted(names)}")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            hint = hints.get(key)
            if isinstance(value, dict) and isinstance(hint, type) and issubclass(hint, _JsonConfig):
                value = hint.from_dict(value)  # nested config, e.g. InferenceConfig.tiling
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    def write_json(self, path: str | Path) -> Path:
        """Write the config as JSON, atomically (a failed write leaves no partial file; raises `StoreError`)."""
        from nucseg.io.export import atomic_write_text

        return atomic_write_text(path, json.dumps({"config": type(self).__name__, **self.to_dict()}, indent=2))


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclasses.dataclass(frozen=True)
class TilingConfig(_JsonConfig):
    """How an image is cut into overlapping tiles and blended back.

    Attributes:
        tile_size: largest side of the square tile fed to the network, in pixels at the model's resolution; an
            image of one block gets tiles shrunk to just cover it (`nucseg.inference.tiling.fitted_tile`); a
            slide's one tile grid over its tissue uses this side.
        overlap: pixels shared by neighbouring tiles; predictions are blended across it with a tapered window.
        batch_size: tiles per forward pass.

    The default stays 512 px. Larger tiles are ~1.2x faster on the CPU (`--tile-size 1120`: a 2000 px image in
    2 x 2 tiles of 1056), but an image of one block then takes its squeeze-excitation gates from a window that is
    not one of its tiles, and on a 2000 px mosaic of four MoNuSeg organs that scored AJI 0.467 against 0.510 with
    512 px tiles (0.495 at commit 2e4e978); on single-organ validation tiles both score 0.618-0.619 (docs/CPU_SPEED.md).
    """

    tile_size: int = 512
    overlap: int = 64
    batch_size: int = 4

    def __post_init__(self) -> None:
        _check(self.tile_size >= ENCODER_STRIDE and self.tile_size % ENCODER_STRIDE == 0,
               f"tile size {self.tile_size} must be a positive multiple of {ENCODER_STRIDE} (e.g. 256, 512)")
        _check(0 <= self.overlap < self.tile_size // 2,
               f"overlap {self.overlap} must be >= 0 and smaller than half the tile ({self.tile_size // 2})")
        _check(self.batch_size >= 1, f"batch size {self.batch_size} must be at least 1")

    @property
    def stride(self) -> int:
        return self.tile_size - self.overlap


#: how the foreground map is cut: a fixed probability, or Otsu's threshold of each image's own map
FOREGROUND_METHODS = ("fixed", "otsu")


#: the thresholds of a model whose config.json names none of its own ("postprocess"); every other setting left
#: unset (None) in a `PostprocessConfig` is the model's (`PostprocessConfig.resolved`)
FALLBACK_POSTPROCESS = {"foreground_threshold": 0.5, "marker_threshold": 0.4, "min_area": 30, "min_marker_area": 10,
                        "foreground_method": "fixed"}


@dataclasses.dataclass(frozen=True)
class PostprocessConfig(_JsonConfig):
    """Turning the network's foreground / contour / distance maps into separate nuclei.

    A setting left None is the model's own (its config.json "postprocess", else `FALLBACK_POSTPROCESS`): the
    engine fills them in once, from the model it runs (`resolved`, called by
    `nucseg.inference.plan.plan_prediction`), so `PostprocessConfig()` means "the model's thresholds" for the CLI,
    the widgets and `predict(array)` alike, and a result's config holds the numbers that were used.

    Attributes:
        foreground_threshold: probability above which a pixel belongs to a nucleus (with the "fixed" method).
        foreground_method: "fixed" uses `foreground_threshold`; "otsu" uses Otsu's threshold of the foreground
            map of each image (each block of a slide), kept within `OTSU_RANGE` (see
            `nucseg.inference.postprocess.foreground_cut`).
        marker_threshold: a pixel seeds a nucleus where distance - contour exceeds this.
        min_area: nuclei smaller than this many pixels (at the model's resolution) are dropped.
        min_marker_area: seeds smaller than this are merged into their neighbours.
    """

    foreground_threshold: float | None = None
    marker_threshold: float | None = None
    min_area: int | None = None
    min_marker_area: int | None = None
    foreground_method: str | None = None

    def __post_init__(self) -> None:
        if self.foreground_threshold is not None:
            _check(0.0 < self.foreground_threshold < 1.0, "foreground threshold must lie strictly between 0 and 1")
        if self.foreground_method is not None:
            _check(self.foreground_method in FOREGROUND_METHODS,
                   f"foreground method {self.foreground_method!r} must be one of {', '.join(FOREGROUND_METHODS)}")
        if self.marker_threshold is not None:
            _check(-1.0 < self.marker_threshold < 1.0, "marker threshold must lie strictly between -1 and 1")
        _check(all(v is None or v >= 0 for v in (self.min_area, self.min_marker_area)), "minimum areas must be >= 0")

    @property
    def complete(self) -> bool:
        """Whether every setting is given (nothing is left to the model)."""
        return all(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    def resolved(self, model_defaults: dict[str, Any] | None = None) -> PostprocessConfig:
        """Every setting left None taken from `model_defaults` (a model's config.json "postprocess"), else from
        `FALLBACK_POSTPROCESS`: the one place a model's thresholds are applied."""
        if self.complete:
            return self
        defaults = {**FALLBACK_POSTPROCESS, **PostprocessConfig.from_dict(dict(model_defaults or {})).given()}
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def given(self) -> dict[str, Any]:
        """The settings that are set (not left to the model)."""
        return {k: v for k, v in self.to_dict().items() if v is not None}


#: side of the blocks post-processed at once, when none is chosen (`default_block_size`)
DEFAULT_BLOCK_SIZE = 2048


def default_block_size(tile_size: int) -> int:
    """The block side when the user chose none: `DEFAULT_BLOCK_SIZE`, or one tile when tiles are bigger (a block
    holds at least one tile): the widgets' and the command line's rule."""
    return max(DEFAULT_BLOCK_SIZE, int(tile_size))


@dataclasses.dataclass(frozen=True)
class InferenceConfig(_JsonConfig):
    """Everything `iter_predict` needs besides the image and the model.

    Attributes:
        model: a registry name or a model folder.
        device: "auto" (cuda > mps > cpu) or one of cpu / cuda / mps.
        tiling: tile size, overlap, batch size.
        postprocess: thresholds for separating nuclei; those left None are the model's (filled in by the engine,
            `plan_prediction`: a `PredictionResult`'s config holds the numbers used).
        tta: average predictions over flips (4x slower, slightly more accurate).
        skip_background: on slides, skip tiles without tissue (from a low-resolution tissue mask).
        block_size: on slides, side of the blocks (at the model's resolution) post-processed at once.
        runtime: what runs the network: "auto" (ONNX Runtime on the CPU when installed, else PyTorch),
            "pytorch" or "onnxruntime"; one that cannot serve the model falls back to PyTorch with a warning.
    """

    model: str = "nucseg-default"
    device: str = "auto"
    tiling: TilingConfig = dataclasses.field(default_factory=TilingConfig)
    postprocess: PostprocessConfig = dataclasses.field(default_factory=PostprocessConfig)
    tta: bool = False
    skip_background: bool = True
    block_size: int = DEFAULT_BLOCK_SIZE
    runtime: str = "auto"

    def __post_init__(self) -> None:
        _check(self.device in DEVICES, f"device {self.device!r} must be one of {', '.join(DEVICES)}")
        _check(self.runtime in RUNTIMES, f"runtime {self.runtime!r} must be one of {', '.join(RUNTIMES)}")
        _check(self.block_size >= self.tiling.tile_size,
               f"block size {self.block_size} must be at least the tile size {self.tiling.tile_size}")


@dataclasses.dataclass(frozen=True)
class EvalConfig(_JsonConfig):
    """Object matching threshold for F1 / PQ (AJI needs none)."""

    iou_threshold: float = 0.5

    def __post_init__(self) -> None:
        _check(0.0 < self.iou_threshold < 1.0, f"IoU threshold {self.iou_threshold} must lie strictly between 0 and 1")


LOSSES = ("focal+jaccard", "bce+dice", "ce")
AUGMENTATIONS = ("flips", "rot90", "stain", "color", "scale", "blur")
#: what fine-tuning holds out to judge itself: blocks of every correction, or whole images
HOLDOUTS = ("regions", "images")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(_JsonConfig):
    """Training or fine-tuning a model on image / instance-label pairs.

    The defaults follow the thesis the product grew from (Adam, focal + Jaccard, flips and 90 degree
    rotations) plus stain augmentation, and are sized to finish in minutes on a laptop CPU.

    Attributes:
        base_model: registry name or model folder to start from.
        epochs: passes over `steps_per_epoch` batches.
        steps_per_epoch: batches per epoch (patches are sampled at random, so an epoch is a fixed budget).
        learning_rate: Adam's step size.
        batch_size: patches per step.
        patch_size: side of the square training patch.
        loss: foreground loss; the contour head always uses BCE + Dice, the distance head BCE on soft targets.
        augmentations: any of flips, rot90, stain, color, scale, blur.
        validation_fraction: share held out to judge the run when no validation images are given: of every
            correction's reviewed blocks (``holdout="regions"``), or of the images (``"images"``).
        holdout: "regions" holds out blocks of every correction and scores them with the outlines the person
            accepted credited (`nucseg.training.holdout`); "images" holds out whole images.
        mix_original: fraction of each batch drawn from the base model's original data, against forgetting: the
            folder the user gives, else the replay set the base model carries (the shipped default does); 0 = off.
            On by default (benchmarks/bench_finetune.py, 5 DSB tiles): without it MoNuSeg validation AJI fell by
            0.106; at 0.25 by 0.02-0.03; at 0.5 by 0.001 on DSB cell smears, where the gain on the rest of the
            source was larger too (+0.089 vs +0.080).
        freeze_norm: keep a trained base model's batch-norm statistics. Off by default: on DSB colour tiles
            (benchmarks/bench_finetune.py) letting them adapt was what carried the gain to the rest of the
            new source (frozen: AJI 0.430 -> 0.305 there; adapting: 0.430 -> 0.448), at a larger cost on the
            old one (MoNuSeg validation -0.106 vs -0.047). Ignored for untrained bases.
        tune_postprocess: after training, re-choose the watershed thresholds on the validation images (kept
            only when they beat the base model's by 0.01 AJI there; skipped after a Stop). Off by default: on
            one validation tile the chosen thresholds fit that tile and cost 0.06-0.08 MoNuSeg validation AJI in
            two of three DSB runs (benchmarks/bench_finetune.py); worth trying with several validation images.
        early_stopping_patience: epochs without validation improvement before stopping (0 = never).
        plateau_patience: epochs without improvement before the learning rate is halved (0 = never).
        seed: makes sampling, augmentation and initialisation reproducible.
        device: "auto" (cuda > mps > cpu) or one of cpu / cuda / mps.
        num_threads: CPU threads for torch (0 = torch's default).
    """

    base_model: str = "nucseg-default"
    epochs: int = 7  # about 9 minutes on 2 CPU cores
    steps_per_epoch: int = 20
    learning_rate: float = 1e-4
    batch_size: int = 8
    patch_size: int = 256
    loss: str = "focal+jaccard"
    augmentations: tuple[str, ...] = ("flips", "rot90", "stain", "color")
    validation_fraction: float = 0.2
    holdout: str = "regions"
    mix_original: float = 0.5
    freeze_norm: bool = False
    tune_postprocess: bool = False
    early_stopping_patience: int = 4
    plateau_patience: int = 2
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"epochs {self.epochs} must be at least 1")
        _check(self.steps_per_epoch >= 1, f"steps per epoch {self.steps_per_epoch} must be at least 1")
        _check(self.learning_rate > 0, f"learning rate {self.learning_rate} must be positive")
        _check(self.batch_size >= 1, f"batch size {self.batch_size} must be at least 1")
        _check(self.patch_size >= ENCODER_STRIDE and self.patch_size % ENCODER_STRIDE == 0,
               f"patch size {self.patch_size} must be a positive multiple of {ENCODER_STRIDE}")
        _check(self.loss in LOSSES, f"loss {self.loss!r} must be one of {', '.join(LOSSES)}")
        bad = set(self.augmentations) - set(AUGMENTATIONS)
        _check(not bad, f"unknown augmentations {sorted(bad)}; choose from {', '.join(AUGMENTATIONS)}")
        _check(0.0 <= self.validation_fraction < 1.0, "validation fraction must lie in [0, 1)")
        _check(self.holdout in HOLDOUTS, f"holdout {self.holdout!r} must be one of {', '.join(HOLDOUTS)}")
        _check(0.0 <= self.mix_original < 1.0, "mix_original must lie in [0, 1)")
        _check(self.early_stopping_patience >= 0 and self.plateau_patience >= 0, "patience must be >= 0")
        _check(self.device in DEVICES, f"device {self.device!r} must be one of {', '.join(DEVICES)}")
        _check(self.num_threads >= 0, "num_threads must be >= 0")


def read_config_json(path: str | Path) -> dict[str, Any]:
    """Read a config JSON written by `write_json`, without its ``config`` type tag.

    Raises:
        StoreError: the file cannot be read or is not a config JSON (empty, truncated, damaged).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise StoreError(f"cannot read the settings in {path}: {err.strerror or err}") from err
    try:
        data = json.loads(text)
    except ValueError as err:
        reason = "the file is empty" if not text.strip() else f"the file is damaged ({err})"
        raise StoreError(f"cannot read the settings in {path}: {reason}") from err
    if not isinstance(data, dict):
        raise StoreError(f"cannot read the settings in {path}: not a JSON object")
    data.pop("config", None)
    return data
