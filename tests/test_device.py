"""Choosing the device for inference without importing torch where the CPU is certain (nucseg.models.device)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nucseg.models import device


def test_torch_build_is_what_torch_says_of_itself():
    torch = pytest.importorskip("torch")
    build = device.torch_build()
    assert build is not None
    assert (build["__version__"], build["cuda"], build["hip"]) == (torch.__version__, torch.version.cuda,
                                                                   torch.version.hip)


@pytest.mark.parametrize(("platform", "build", "files", "possible"), [
    ("linux", {"__version__": "2.5.0+cpu", "cuda": None, "hip": None}, ["/dev/nvidia0"], False),  # CPU-only torch
    ("linux", {"__version__": "2.5.0", "cuda": "12.4", "hip": None}, [], False),  # no driver, no device node
    ("linux", {"__version__": "2.5.0", "cuda": "12.4", "hip": None}, ["/dev/nvidia0"], True),
    ("linux", {"__version__": "2.5.0", "cuda": "12.4", "hip": None}, ["/dev/dxg"], True),  # WSL
    ("linux", {"__version__": "2.5.0", "cuda": None, "hip": "6.2"}, ["/dev/kfd"], True),  # ROCm
    ("linux", None, [], True),  # an unreadable version.py: ask torch
    ("win32", {"__version__": "2.5.0", "cuda": "12.4", "hip": None}, [], True),
    ("darwin", {"__version__": "2.5.0", "cuda": None, "hip": None}, [], True),  # MPS
])
def test_an_accelerator_is_ruled_out_only_where_torch_cannot_have_one(monkeypatch, platform, build, files,
                                                                       possible):
    pytest.importorskip("torch")  # accelerator_possible is False without torch at all
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(device, "torch_build", lambda: build)
    monkeypatch.setattr(device, "gpu_driver_files", lambda: files)
    assert device.accelerator_possible() is possible


def test_an_accelerator_torch_sees_is_never_ruled_out():
    pytest.importorskip("torch")
    assert len(device.available_devices()) == 1 or device.accelerator_possible()


def test_inference_device_imports_torch_only_when_it_may_not_be_the_cpu():
    """"cpu" never imports torch; "auto" imports it exactly where an accelerator is possible; both agree with
    `select_device`."""
    pytest.importorskip("torch")
    code = ("import sys\nfrom nucseg.models.device import accelerator_possible, inference_device, select_device\n"
            "d = inference_device(sys.argv[1])\nimported = 'torch' in sys.modules\n"
            "print(d.type, d.index, imported, accelerator_possible(), select_device(sys.argv[1]).type)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    seen = {}
    for choice in ("cpu", "auto"):
        done = subprocess.run([sys.executable, "-c", code, choice], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        seen[choice] = done.stdout.split()
    assert seen["cpu"][:3] == ["cpu", "None", "False"] and seen["cpu"][4] == "cpu"
    kind, index, imported, possible, selected = seen["auto"]
    assert imported == possible and kind == selected
    assert possible == "True" or (kind, index) == ("cpu", "None")


def test_the_cpu_named_without_torch_converts_to_torchs():
    torch = pytest.importorskip("torch")
    assert device.torch_device(device.CPU) == torch.device("cpu") == device.torch_device("cpu")
    assert str(device.CPU) == "cpu" and device.CPU.type == "cpu"


def test_devices_are_listed_without_importing_torch_where_none_but_the_cpu_can_be_there():
    """The Segment dock lists the devices when it opens; on a machine without an accelerator that must not import
    torch into the viewer (its objects lengthen every later full garbage collection). The list agrees with
    torch's own."""
    pytest.importorskip("torch")
    code = ("import sys\nfrom nucseg.models.device import accelerator_possible, available_devices\n"
            "listed = available_devices()\nimported = 'torch' in sys.modules\nimport torch\n"
            "print(','.join(listed), imported, accelerator_possible(), torch.cuda.is_available())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    listed, imported, possible, cuda = done.stdout.split()
    assert imported == possible  # torch imported exactly where an accelerator may be there
    if possible == "False":
        assert listed == "cpu" and cuda == "False"
    # and with torch already imported, the list is torch's: unchanged by the shortcut
    first = "import torch\nfrom nucseg.models.device import available_devices\nprint(','.join(available_devices()))"
    again = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[-1] == listed
