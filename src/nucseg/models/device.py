"""Choosing the torch device: cuda > mps > cpu, unless the user names one.

Inference on the CPU may run without torch (ONNX Runtime, `nucseg.models.runtime`), and importing torch costs
1.2 s of a 4.7 s prediction of a 4 MP tile: `inference_device` names the CPU without importing torch whenever the
CPU is certain to be the answer (`CPU`), and asks torch otherwise.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import glob
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucseg.errors import ConfigError

if TYPE_CHECKING:
    import torch


def available_devices() -> list[str]:
    """Devices usable on this machine, best first (always ends with "cpu"). Where no accelerator can be there
    (`accelerator_possible`) and torch is not imported yet, ["cpu"] without importing it: in the viewer, every
    later full garbage collection on the GUI thread would walk torch's 163 k objects too (docs/VIEWER.md)."""
    if "torch" not in sys.modules and not accelerator_possible():
        return ["cpu"]
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


class CpuDevice:
    """The CPU as `inference_device` names it without importing torch: answers ``.type``, ``.index`` and
    ``str()`` as ``torch.device("cpu")`` does (`torch_device` turns it into one where torch runs)."""

    type = "cpu"
    index = None

    def __str__(self) -> str:
        return "cpu"

    def __repr__(self) -> str:
        return "CpuDevice()"


CPU = CpuDevice()


def inference_device(preference: str = "auto") -> Any:
    """`select_device`'s answer, without importing torch where it is certain to be the CPU: `preference` "cpu", or
    "auto" when torch is not imported yet and no accelerator can be there (`accelerator_possible`). Returns `CPU`
    then, else a torch.device."""
    if preference == "cpu" or (preference == "auto" and "torch" not in sys.modules and not accelerator_possible()):
        return CPU
    return select_device(preference)


def torch_device(device: Any) -> torch.device:
    """`device` (a torch.device, `CPU`, or a name such as "cuda:1") as a torch.device."""
    import torch

    return device if isinstance(device, torch.device) else torch.device(str(device))


def accelerator_possible() -> bool:
    """Whether torch could find a GPU here (`available_devices`), decided without importing it: False only where
    it surely cannot: torch is not installed, or its build has neither CUDA nor ROCm (its ``version.py``), or, on
    Linux, no GPU driver shows (no ``/proc/driver/nvidia``, ``/dev/nvidia*``, WSL's ``/dev/dxg`` nor ROCm's
    ``/dev/kfd``: the CUDA and ROCm drivers need them). Always True on macOS (MPS) and other systems."""
    if sys.platform == "darwin":
        return True
    if torch_spec() is None:
        return False
    build = torch_build()
    if build is None:
        return True
    if not build.get("cuda") and not build.get("hip"):
        return False
    if not sys.platform.startswith("linux"):
        return True
    return bool(gpu_driver_files())


def torch_spec() -> importlib.machinery.ModuleSpec | None:
    """Where the installed torch is, found on ``sys.path`` first: the import hooks of ``sys.meta_path`` are asked
    only where it is not there, since the viewer's hook loads Triton when it is asked for torch
    (`nucseg._napari._native`), and finding torch is not importing it."""
    return importlib.machinery.PathFinder.find_spec("torch") or importlib.util.find_spec("torch")


def gpu_driver_files() -> list[str]:
    """The files through which a Linux process reaches an NVIDIA or AMD GPU (empty: no GPU can be used)."""
    found = [p for p in ("/proc/driver/nvidia", "/dev/dxg", "/dev/kfd") if os.path.exists(p)]
    return found + glob.glob("/dev/nvidia*")


@functools.lru_cache(maxsize=1)
def torch_build() -> dict[str, Any] | None:
    """The constants of the installed torch's ``version.py`` (``__version__``, ``cuda``, ``hip``...), read without
    importing torch; None when torch is not installed or the file is not the plain assignments it has always been."""
    try:
        spec = torch_spec()
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        tree = ast.parse((Path(folders[0]) / "version.py").read_text())
    except (ImportError, IndexError, OSError, SyntaxError, ValueError):
        return None
    constants: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        else:
            continue
        if isinstance(target, ast.Name):
            with contextlib.suppress(ValueError, TypeError, SyntaxError):
                constants[target.id] = ast.literal_eval(node.value)
    return constants if "__version__" in constants else None


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
