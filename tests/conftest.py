"""Fixtures shared by the whole test suite. Keep them generic; module-specific fixtures live in their modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: the repository root (this file's parent's parent)
ROOT = Path(__file__).resolve().parents[1]
#: the project's shared, read-only data folder (real slides and MoNuSeg / DSB tiles with ground truth)
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()

os.environ.setdefault("QT_API", "pyqt6")


def pytest_configure(config):
    # tests build torch models after viewers exist, as the widgets do: load Triton as the widgets would
    from nucseg._napari._native import isolate_triton

    isolate_triton()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs ../shared/data (the project's shared data folder), not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _runtime_cache(tmp_path_factory):
    """Networks exported for ONNX Runtime (nucseg.models.runtime) go to a cache of the session, not the user's."""
    previous = os.environ.get("NUCSEG_CACHE")
    os.environ["NUCSEG_CACHE"] = str(tmp_path_factory.mktemp("nucseg-cache"))
    yield
    if previous is None:
        os.environ.pop("NUCSEG_CACHE", None)
    else:
        os.environ["NUCSEG_CACHE"] = previous
