"""Models are data: a registry name or a folder resolves to a `ModelSpec` (architecture, encoder, heads,
resolution, normalisation) and, for trained models, a safetensors file pinned by sha256."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from nucseg.errors import ModelError

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


def _squeeze_excitation_mode(value: Any, config_path: Path) -> str:
    from nucseg.models.squeeze_excitation import SQUEEZE_EXCITATION_MODES

    if value not in SQUEEZE_EXCITATION_MODES:
        raise ModelError(f"{config_path}: squeeze_excitation must be one of {', '.join(SQUEEZE_EXCITATION_MODES)}, "
                         f"not {value!r}")
    return value


def _decoder_channels(value: Any, config_path: Path) -> tuple[int, ...] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 5
            or not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 4096 for c in value)):
        raise ModelError(f"{config_path}: decoder_channels must be a list of 5 positive integers (deepest first), "
                         f"not {value!r}")
    return tuple(value)


def spec_from_folder(folder: str | Path) -> ModelSpec:
    """Read a model folder (config.json + model.safetensors)."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ModelError(
            f"{folder} is not a model folder: it needs {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(make one with `nucseg finetune`, or pick a name from `nucseg models`)"
        )
    try:
        cfg = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"cannot read {config_path}: {err}") from err
    try:
        norm = cfg.get("normalization", {})
        return ModelSpec(
            name=cfg.get("name", folder.name),
            architecture=cfg.get("architecture", "Unet"),
            encoder=cfg["encoder"],
            heads=tuple(cfg.get("heads", HEADS)),
            mpp=float(cfg.get("mpp", 0.25)),
            mean=tuple(norm.get("mean", IMAGENET_MEAN)),
            std=tuple(norm.get("std", IMAGENET_STD)),
            squeeze_excitation=_squeeze_excitation_mode(cfg.get("squeeze_excitation", "image"), config_path),
            decoder_channels=_decoder_channels(cfg.get("decoder_channels"), config_path),
            folder=folder.resolve(),
            sha256=cfg.get("sha256"),
            info={k: v for k, v in cfg.items() if k not in _SPEC_KEYS},
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"{config_path} is not a valid nucseg model config: {err}") from err


def shipped_models() -> dict[str, Path]:
    """Trained models inside the package (name -> folder)."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(SHIPPED_DIR.iterdir()) if (p / CONFIG_FILE).is_file()}


def user_models_dir() -> Path:
    """Where fine-tuned versions go by default (NUCSEG_HOME, else ~/.nucseg/models)."""
    import os

    root = Path(os.environ.get("NUCSEG_HOME", Path.home() / ".nucseg"))
    return root / "models"


def list_models(include_untrained: bool = True, include_user: bool = True) -> dict[str, str]:
    """Names a user can choose, with a one-line description each."""
    out: dict[str, str] = {}
    for name, folder in shipped_models().items():
        out[name] = spec_from_folder(folder).info.get("description", "shipped model")
    if include_user and user_models_dir().is_dir():
        for folder in sorted(user_models_dir().iterdir()):
            if (folder / CONFIG_FILE).is_file():
                out[str(folder)] = spec_from_folder(folder).info.get("description", "fine-tuned version")
    if include_untrained:
        for encoder, note in ENCODERS.items():
            out[f"unet-{encoder}"] = f"untrained UNet, {note}"
    return out


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
