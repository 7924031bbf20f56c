"""Models are data: a registry name or a folder resolves to a `ModelSpec` (architecture, encoder, heads,
resolution, normalisation) and, for trained models, a safetensors file pinned by sha256."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from nucseg.errors import ModelError
from nucseg.home import nucseg_home

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SHIPPED_DIR = Path(__file__).parent / "weights"

#: Output channels of every nucseg network, in order. Foreground and contour are logits (sigmoid), distance is
#: a logit of the per-nucleus normalised distance to the border (sigmoid -> 0 at the border, 1 at the centre).
HEADS = ("foreground", "contour", "distance")

#: Encoders the registry offers: the thesis's three plus fast ones chosen by measurement (benchmarks/).
ENCODERS = {
    "efficientnet-b0": "fast default: best accuracy per CPU millisecond measured here",
    "mobilenet_v2": "fastest on CPU",
    "resnet18": "small ResNet",
    "resnet34": "thesis encoder (ResNet-34)",
    "efficientnet-b2": "thesis encoder (EfficientNet-B2, its best)",
    "tu-inception_v3": "thesis encoder (Inception-V3, via timm)",
}

#: smp encoders expect ImageNet-normalised input; we train from scratch but keep the convention.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a model is: enough to rebuild the network and feed it correctly.

    Attributes:
        name: registry name or folder name.
        architecture: smp architecture class name (Unet).
        encoder: smp encoder name.
        heads: output channels, see HEADS.
        mpp: microns per pixel of the training data; slides are read at (about) this resolution.
        mean, std: input normalisation of RGB in [0, 1].
        squeeze_excitation: for EfficientNet encoders, "image" (gates measured once per image, so tiles agree) or
            "constant" (gates frozen into the weights); see squeeze_excitation.py.
        decoder_channels: the UNet decoder's channels, deepest first; None is smp's default (256, 128, 64, 32, 16),
            which version 2 has. A lean decoder (version 3: 64, 32, 16, 16, 8) is most of the CPU saving.
        folder: where the weights live; None for an untrained architecture (random initialisation).
        sha256: expected hash of the weights file.
        info: everything else from config.json (training data, metrics, postprocess defaults, lineage).
    """

    name: str
    architecture: str = "Unet"
    encoder: str = "efficientnet-b0"
    heads: tuple[str, ...] = HEADS
    mpp: float = 0.25
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    squeeze_excitation: str = "image"
    decoder_channels: tuple[int, ...] | None = None
    folder: Path | None = None
    sha256: str | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def weights_path(self) -> Path | None:
        return None if self.folder is None else self.folder / WEIGHTS_FILE

    @property
    def trained(self) -> bool:
        return self.folder is not None

    @property
    def replay_dir(self) -> Path | None:
        """A sample of the model's own training data (``replay/images``, ``replay/labels``), if it carries one.

        Fine-tuning mixes it into every batch so the model does not forget what it knew (rehearsal).
        """
        if self.folder is None or not (self.folder / REPLAY_DIR / "images").is_dir():
            return None
        return self.folder / REPLAY_DIR

    @property
    def postprocess_defaults(self) -> dict[str, Any]:
        return dict(self.info.get("postprocess", {}))

    def to_config(self) -> dict[str, Any]:
        """The JSON written beside the weights (without sha256, which is added on save)."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "encoder": self.encoder,
            "heads": list(self.heads),
            "mpp": self.mpp,
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "squeeze_excitation": self.squeeze_excitation,
            **({"decoder_channels": list(self.decoder_channels)} if self.decoder_channels else {}),
            **{k: v for k, v in self.info.items() if k not in _SPEC_KEYS},
        }


#: the UNet decoder's channels when a config names none (smp's default, which version 2 has)
SMP_DECODER_CHANNELS = (256, 128, 64, 32, 16)


def network_summary(spec: ModelSpec) -> str:
    """One line naming the network of `spec` (what `nucseg models` lists beside each model)."""
    decoder = "-".join(str(c) for c in (spec.decoder_channels or SMP_DECODER_CHANNELS))
    gates = ", constant gates" if spec.squeeze_excitation == "constant" else ""
    return f"{spec.architecture} {spec.encoder}, decoder {decoder}{gates}"


_SPEC_KEYS = {"name", "architecture", "encoder", "heads", "mpp", "normalization", "squeeze_excitation",
              "decoder_channels", "sha256"}

DEFAULT_MODEL = "nucseg-default"
REPLAY_DIR = "replay"


def untrained_spec(encoder: str, name: str | None = None) -> ModelSpec:
    """A randomly initialised UNet with `encoder` (no download: there are no pretrained weights here)."""
    if encoder not in ENCODERS:
        raise ModelError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
    return ModelSpec(name=name or f"unet-{encoder}", encoder=encoder)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ the config.json schema

#: architectures a config may name: the network is built with ``getattr(segmentation_models_pytorch, name)``, so
#: nothing else is ever looked up there
ARCHITECTURES = ("Unet",)
#: the normalisation a config may give (RGB in [0, 1]; ImageNet's mean 0.406-0.485 and std 0.224-0.229 are in)
MEAN_RANGE, STD_RANGE = (0.0, 1.0), (0.01, 10.0)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_mpp(value: Any) -> str | None:
    from nucseg.errors import InvalidInputError
    from nucseg.io.base import check_mpp  # the one plausible range, for options, metadata and model configs

    if not _number(value):
        return f"mpp must be a number (microns per pixel of the training data), not {value!r}"
    try:
        check_mpp(value, "mpp")
    except InvalidInputError as err:
        return str(err)
    return None


def _check_normalization(value: Any) -> str | None:
    if not isinstance(value, dict) or set(value) - {"mean", "std"}:
        return f'normalization must be {{"mean": [r, g, b], "std": [r, g, b]}}, not {value!r}'
    for key, (lo, hi) in (("mean", MEAN_RANGE), ("std", STD_RANGE)):
        if key in value and not (isinstance(value[key], list) and len(value[key]) == 3
                                 and all(_number(v) and lo <= v <= hi for v in value[key])):
            return f"normalization.{key} must be 3 numbers between {lo:g} and {hi:g}, not {value[key]!r}"
    return None


def _check_postprocess(value: Any) -> str | None:
    from nucseg.config import PostprocessConfig
    from nucseg.errors import ConfigError

    known = [f.name for f in dataclasses.fields(PostprocessConfig)]
    if not isinstance(value, dict):
        return f"postprocess must be an object with some of {', '.join(known)}, not {value!r}"
    unknown = [k for k in value if k not in known]
    if unknown:
        return f"postprocess has unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
    try:
        PostprocessConfig(**value)
    except (ConfigError, TypeError) as err:
        return f"postprocess: {err}"
    return None


def _check_squeeze_excitation(value: Any) -> str | None:
    from nucseg.models.squeeze_excitation import SQUEEZE_EXCITATION_MODES

    if value not in SQUEEZE_EXCITATION_MODES:
        return f"squeeze_excitation must be one of {', '.join(SQUEEZE_EXCITATION_MODES)}, not {value!r}"
    return None


#: config.json keys the spec is built from: key -> (required, check(value) -> what is wrong or None). Other keys
#: (version, description, training, validation, lineage...) are kept as `ModelSpec.info`, unchecked.
CONFIG_SCHEMA: dict[str, tuple[bool, Any]] = {
    "name": (False, lambda v: None if _is_str(v) else f"name must be a non-empty string, not {v!r}"),
    "architecture": (False, lambda v: None if v in ARCHITECTURES else
                     f"architecture must be one of {', '.join(ARCHITECTURES)}, not {v!r}"),
    "encoder": (True, lambda v: None if isinstance(v, str) and v in ENCODERS else
                f"encoder must be one of {', '.join(ENCODERS)}, not {v!r}"),
    "heads": (False, lambda v: None if v == list(HEADS) else
              f"heads must be {list(HEADS)} (the outputs nucseg decodes, in that order), not {v!r}"),
    "mpp": (False, _check_mpp),
    "normalization": (False, _check_normalization),
    "squeeze_excitation": (False, _check_squeeze_excitation),
    "decoder_channels": (False, lambda v: None if v is None or isinstance(v, list) and len(v) == 5 and all(
        isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 4096 for c in v) else
        f"decoder_channels must be a list of 5 positive integers (deepest first), not {v!r}"),
    "sha256": (True, lambda v: None if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) else
               f"sha256 must be the 64 hex digits of {WEIGHTS_FILE}'s SHA-256, not {v!r}"),
    "postprocess": (False, _check_postprocess),
}


def check_config(cfg: Any, config_path: Path) -> dict[str, Any]:
    """`cfg` (a parsed config.json) checked against `CONFIG_SCHEMA`; returns it.

    Raises:
        ModelError: the first thing wrong, in one line naming the file.
    """
    if not isinstance(cfg, dict):
        raise ModelError(f"{config_path}: a model config must be a JSON object, not a {type(cfg).__name__}")
    for key, (required, check) in CONFIG_SCHEMA.items():
        if key not in cfg:
            if required:
                why = ("nucseg loads only weights it can verify: add the sha256 of " + WEIGHTS_FILE
                       if key == "sha256" else "every model config names it")
                raise ModelError(f"{config_path}: the model config has no {key!r} ({why})")
            continue
        problem = check(cfg[key])
        if problem:
            raise ModelError(f"{config_path}: {problem}")
    return cfg


def spec_from_folder(folder: str | Path) -> ModelSpec:
    """Read a model folder (config.json + model.safetensors), its config checked against `CONFIG_SCHEMA`.

    Raises:
        ModelError: not a model folder, or a config that cannot be read or breaks the schema.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ModelError(
            f"{folder} is not a model folder: it needs {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(make one with `nucseg finetune`, or pick a name from `nucseg models`)"
        )
    try:
        cfg = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"cannot read {config_path}: {err}") from err
    check_config(cfg, config_path)
    norm = cfg.get("normalization", {})
    channels = cfg.get("decoder_channels")
    return ModelSpec(
        name=cfg.get("name", folder.name),
        architecture=cfg.get("architecture", "Unet"),
        encoder=cfg["encoder"],
        heads=tuple(cfg.get("heads", HEADS)),
        mpp=float(cfg.get("mpp", 0.25)),
        mean=tuple(float(v) for v in norm.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in norm.get("std", IMAGENET_STD)),
        squeeze_excitation=cfg.get("squeeze_excitation", "image"),
        decoder_channels=tuple(channels) if channels else None,
        folder=folder.resolve(),
        sha256=cfg["sha256"],
        info={k: v for k, v in cfg.items() if k not in _SPEC_KEYS},
    )


def shipped_models() -> dict[str, Path]:
    """Trained models inside the package (name -> folder)."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(SHIPPED_DIR.iterdir()) if (p / CONFIG_FILE).is_file()}


def user_models_dir() -> Path:
    """Where fine-tuned versions go by default (``$NUCSEG_HOME/models``, `nucseg.home.nucseg_home`)."""
    return nucseg_home() / "models"


@dataclasses.dataclass(frozen=True)
class ModelCatalog:
    """The models a user can choose, and the model folders that cannot be read (listed apart, never fatal).

    Attributes:
        models: name or folder -> one-line description.
        damaged: folder -> why it cannot be used (one line naming its config.json).
    """

    models: dict[str, str]
    damaged: dict[str, str]

    def damaged_lines(self) -> list[str]:
        """One line per damaged folder: what is wrong, and what to do (the same words in the CLI and widgets)."""
        return [f"{reason}; {Path(folder).name!r} is left out of the model list (fix its {CONFIG_FILE}, or move the "
                "folder away)" for folder, reason in self.damaged.items()]


def model_catalog(include_untrained: bool = True, include_user: bool = True) -> ModelCatalog:
    """Every model a user can choose (shipped, fine-tuned versions in `user_models_dir()`, untrained
    architectures), each checked as `resolve_model` will read it; a damaged one is set aside in `damaged`."""
    models: dict[str, str] = {}
    damaged: dict[str, str] = {}

    def add(key: str, folder: Path, default: str) -> None:
        try:
            models[key] = spec_from_folder(folder).info.get("description", default)
        except ModelError as err:
            damaged[str(folder)] = str(err)

    for name, folder in shipped_models().items():
        add(name, folder, "shipped model")
    if include_user and user_models_dir().is_dir():
        for folder in sorted(user_models_dir().iterdir()):
            if (folder / CONFIG_FILE).is_file():
                add(str(folder), folder, "fine-tuned version")
    if include_untrained:
        for encoder, note in ENCODERS.items():
            models[f"unet-{encoder}"] = f"untrained UNet, {note}"
    return ModelCatalog(models, damaged)


def list_models(include_untrained: bool = True, include_user: bool = True) -> dict[str, str]:
    """Names a user can choose, with a one-line description each (damaged folders left out: `model_catalog`)."""
    return model_catalog(include_untrained, include_user).models


def resolve_model(name_or_path: str | Path) -> ModelSpec:
    """Turn a registry name or a model folder into a spec.

    Raises:
        ModelError: neither a known name nor a model folder.
    """
    text = str(name_or_path)
    shipped = shipped_models()
    if text in shipped:
        return spec_from_folder(shipped[text])
    if text.startswith("unet-") and text[5:] in ENCODERS:
        return untrained_spec(text[5:], name=text)
    path = Path(text).expanduser()
    if path.is_dir():
        return spec_from_folder(path)
    known = ", ".join(list(shipped) + [f"unet-{e}" for e in ENCODERS])
    raise ModelError(f"unknown model {text!r}: not a model folder nor one of {known}")
