"""Packaging contracts: the core stays free of Qt, the manifest's commands import, the CLI answers."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CORE_MODULES = [
    "nucseg", "nucseg.config", "nucseg.errors", "nucseg.cli", "nucseg.io.slides", "nucseg.io.masks", "nucseg.io.export",
    "nucseg.models.registry", "nucseg.models.build", "nucseg.inference.predict", "nucseg.inference.postprocess",
    "nucseg.metrics.report", "nucseg.metrics.overlays", "nucseg.training.finetune", "nucseg.training.corrections",
]


def test_core_imports_no_qt_or_napari():
    code = (
        "import importlib, json, sys\n"
        f"for m in {CORE_MODULES!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'superqt', 'vispy'))\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_importing_nucseg_is_cheap():
    out = subprocess.run([sys.executable, "-c", "import nucseg, sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def manifest_commands():
    manifest = yaml.safe_load((ROOT / "napari.yaml").read_text())
    return [c["python_name"] for c in manifest["contributions"]["commands"]]


@pytest.mark.parametrize("python_name", manifest_commands())
def test_every_manifest_command_imports(python_name):
    module, _, attr = python_name.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_manifest_is_valid_and_found_by_npe2():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-nucseg")
    assert manifest.name == "napari-nucseg"
    assert (ROOT / "src" / "nucseg" / "napari.yaml").resolve() == (ROOT / "napari.yaml").resolve()
    result = subprocess.run([str(Path(sys.executable).parent / "npe2"), "validate", "napari-nucseg"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_lists_subcommands():
    out = subprocess.run([str(Path(sys.executable).parent / "nucseg"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for sub in ("info", "predict", "evaluate", "finetune", "demo", "models"):
        assert sub in out.stdout
