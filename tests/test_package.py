"""Packaging contracts: the core stays free of Qt, the manifest's commands import, the CLI answers."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CORE_MODULES = [
    "nucseg", "nucseg.config", "nucseg.errors", "nucseg.cli", "nucseg.io.slides", "nucseg.io.masks", "nucseg.io.export",
    "nucseg.models.registry", "nucseg.models.build", "nucseg.inference.predict", "nucseg.inference.postprocess",
    "nucseg.metrics.report", "nucseg.metrics.overlays", "nucseg.training.finetune", "nucseg.training.corrections.store",
    "nucseg.training.corrections.reviewed_regions",
    "nucseg.classify.store", "nucseg.classify.apply", "nucseg.classify.examples", "nucseg.classify.clicks",
    "nucseg.editing.tools", "nucseg.editing.grow", "nucseg.editing.maps", "nucseg.editing.history",
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


def test_licence_metadata_covers_the_shipped_data():
    """Code BSD-3, but the wheel ships CC BY-NC-SA weights, replay set and sample: the metadata says both, and
    the licence texts travel with them (tests/test_wheel_install.py checks the built wheel)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "BSD-3-Clause AND CC-BY-NC-SA-4.0"
    assert set(project["license-files"]) >= {"LICENSE", "LICENSE-DATA"}
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]  # PEP 639: the expression only
    for path in ("LICENSE-DATA", "src/nucseg/models/weights/LICENSE", "sample_data/LICENSE"):
        text = (ROOT / path).read_text()
        assert "CC BY-NC-SA 4.0" in text and "creativecommons.org/licenses/by-nc-sa/4.0/legalcode" in text
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "models/weights/LICENSE" in package_data["nucseg"] and "sample_data/*" in package_data["nucseg"]


def test_hub_listing_and_release_workflow():
    config = yaml.safe_load((ROOT / ".napari-hub" / "config.yml").read_text())
    assert config["visibility"] == "public" and config["labels"]["terms"]
    assert "CC BY-NC-SA" in (ROOT / ".napari-hub" / "DESCRIPTION.md").read_text()
    release = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    assert release[True]["push"]["tags"] == ["v*"]  # YAML reads the key `on` as True
    steps = " ".join(str(s.get("run", "")) + str(s.get("uses", "")) for s in release["jobs"]["build"]["steps"])
    assert "python -m build" in steps
    publish = release["jobs"]["publish"]
    assert publish["permissions"] == {"id-token": "write"}  # trusted publishing, no stored token
    assert any(s.get("uses", "").startswith("pypa/gh-action-pypi-publish") for s in publish["steps"])
    test = yaml.safe_load((ROOT / ".github" / "workflows" / "test.yml").read_text())
    assert any("make test" in s.get("run", "") for s in test["jobs"]["test"]["steps"])


def test_demo_says_what_its_scores_are():
    env = {**os.environ, "COLUMNS": "400"}  # argparse wraps help text, at hyphens too
    out = subprocess.run([str(Path(sys.executable).parent / "nucseg"), "demo", "--help"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0 and "validation" in out.stdout and "held-out" in out.stdout
