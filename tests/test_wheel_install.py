"""The built wheel, installed into a fresh virtual environment, runs `nucseg demo` offline from itself.

How "clean" the environment is, and why: the wheel is built from a copy of the source tree (`python -m build
--wheel --no-isolation`, so no download) and installed with `pip --no-index --no-deps` into a new venv created
without system site-packages: nothing of the source tree, no editable install. Its dependencies (torch,
segmentation-models-pytorch, zarr...) cannot be installed offline from an index, and reinstalling torch from a
local cache would take most of the time budget, so the venv sees the shared test venv's installed packages through
a `.pth` file pointing at a folder of links to them, from which every trace of napari-nucseg is left out (the
editable install's path file, its dist-info and any `nucseg` package). The demo's process has network sockets
disabled (`sitecustomize`) and HF_HUB_OFFLINE=1, and it reports which `nucseg` it imported: the installed one,
inside the new venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what the wheel is built from (src/nucseg/napari.yaml and sample_data are links into these)
TREE = ["pyproject.toml", "README.md", "LICENSE", "LICENSE-DATA", "napari.yaml", "sample_data", "src"]
SITECUSTOMIZE = textwrap.dedent('''
    """No network for this interpreter; at exit, write which nucseg was imported to $NUCSEG_REPORT."""
    import atexit, json, os, socket, sys

    def _refuse(*args, **kwargs):
        raise OSError("network disabled by tests/test_wheel_install.py")

    _connect = socket.socket.connect
    def _connect_local(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse()
        return _connect(self, address)

    socket.socket.connect = _connect_local
    socket.socket.connect_ex = lambda self, address: _connect_local(self, address)
    socket.getaddrinfo = _refuse
    socket.create_connection = _refuse

    @atexit.register
    def _report():
        module = sys.modules.get("nucseg")
        path = os.environ.get("NUCSEG_REPORT")
        if path:
            with open(path, "w") as fh:
                json.dump({"nucseg": getattr(module, "__file__", None), "path": sys.path}, fh)
''')


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in TREE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)


def _shared_packages_without_nucseg(dest: Path) -> Path:
    """A folder of links to every installed package of this interpreter except napari-nucseg itself."""
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.endswith(".pth") or name.startswith(("nucseg", "napari_nucseg", "__editable__")):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo_offline(tmp_path):
    pytest.importorskip("build")
    tree, dist = tmp_path / "tree", tmp_path / "dist"
    tree.mkdir()
    _copy_tree(tree)
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(tree)],
         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    (wheel,) = dist.glob("napari_nucseg-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    # without PYTHONPATH: a source tree on it that holds the editable install's egg-info made pip see the package
    # as installed already and install nothing
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--no-deps", "--quiet",
          str(wheel)], env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = _shared_packages_without_nucseg(tmp_path / "deps")
    (site / "_shared_test_packages.pth").write_text(f"{deps}\n")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)

    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", NUCSEG_HOME=str(tmp_path / "home"), NUCSEG_REPORT=str(report),
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", MPLBACKEND="Agg")
    out = tmp_path / "demo"
    demo = _run([str(venv / "bin" / "nucseg"), "demo", "--out", str(out), "--device", "cpu"], cwd=tmp_path,
                env=env, timeout=300)

    imported = json.loads(report.read_text())["nucseg"]
    assert Path(imported).resolve().is_relative_to(site.resolve()), imported  # the wheel's, not the source tree
    assert str(ROOT) not in imported and "/work/main/src" not in json.loads(report.read_text())["path"]
    metrics = json.loads((out / "demo_metrics.json").read_text())
    assert metrics["metrics"]["dice"] > 0.8 and metrics["metrics"]["tp"] > 80 and metrics["mpp"] == 0.25
    assert (out / "demo_side_by_side.png").stat().st_size > 10_000 and (out / "demo_labels.tif").is_file()
    assert "validation" in demo.stdout and "held-out test" in demo.stdout  # what the sample's scores are

    facts = json.loads(_run([str(python), "-c", textwrap.dedent("""
        import json, importlib.metadata as md, nucseg
        from pathlib import Path
        dist = md.distribution("napari-nucseg")
        package = Path(nucseg.__file__).parent
        print(json.dumps({"license": dist.metadata["License-Expression"],
                          "license_files": sorted(Path(f).name for f in dist.files if "licenses" in str(f)),
                          "weights_license": (package / "models" / "weights" / "LICENSE").is_file(),
                          "sample_license": (package / "sample_data" / "LICENSE").is_file(),
                          "manifest": (package / "napari.yaml").is_file()}))
        """)], env=env).stdout)
    assert facts == {"license": "BSD-3-Clause AND CC-BY-NC-SA-4.0", "license_files": ["LICENSE", "LICENSE-DATA"],
                     "weights_license": True, "sample_license": True, "manifest": True}
