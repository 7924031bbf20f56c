"""Choosing the torch device: cuda > mps > cpu, unless the user names one."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from nucseg.errors import ConfigError

if TYPE_CHECKING:
    import torch


def available_devices() -> list[str]:
    """Devices usable on this machine, best first (always ends with "cpu")."""
    import torch

    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def select_device(preference: str = "auto") -> torch.device:
    """Return the device to run on.

    Args:
        preference: "auto" picks cuda, then mps, then cpu; "cpu", "cuda" or "mps" insist on that one.

    Raises:
        ConfigError: the requested accelerator is not available here.
    """
    import torch

    available = available_devices()
    if preference == "auto":
        return torch.device(available[0])
    if preference not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {preference!r}; use auto, cpu, cuda or mps")
    if preference not in available:
        raise ConfigError(
            f"device {preference!r} is not available on this machine (available: {', '.join(available)}); "
            "use --device auto to fall back to the CPU"
        )
    return torch.device(preference)


def training_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision for training steps: bf16 on CUDA GPUs that have it (no loss scaling needed), fp16 on older
    ones (the caller scales the loss), none elsewhere (bf16 was measured slower on CPU; MPS stays in fp32)."""
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def release_device_memory(device: torch.device) -> None:
    """Give cached accelerator memory back after a run (users ask for GPU memory to be freed)."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def passive_thread_waits() -> bool:
    """Make torch's OpenMP threads sleep, not spin, while they wait for each other (``OMP_WAIT_POLICY=PASSIVE``,
    unless the environment already says otherwise). Call it before torch is imported (the CLI and the widgets do);
    returns whether it could still take effect.

    Why: OpenMP threads spin at every barrier by default. When the cores are shared (napari's GUI thread, other
    programs, other jobs), a spinning thread holds a core that the thread it waits for needs, and every small
    parallel operation costs a scheduler time slice. Measured on the project's 2 shared cores (load 16, one
    fine-tuning step of the default model, 8 patches of 256 px, 2 threads): Adam's update took 18.4 s spinning and
    0.30 s passive, the whole step 110 s and 83 s (docs/FINETUNING.md, "Speed").
    """
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True
