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


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A runtime cache of the test module's own, so its tests see exports happen (and never touch the user's)."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NUCSEG_CACHE", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def _workers_end_with_their_test(request):
    """A GUI test's thread workers (model loads, measurements, exports) finish before the next test starts and
    before Qt is torn down: a worker that finished after its signals' Qt objects were deleted aborted the whole
    pytest process (rc 134, 'GeneratorWorkerSignals has been deleted'), and one still running disturbed the next
    test's docks."""
    yield
    if "qtpy" not in __import__("sys").modules:
        return
    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    pool = QThreadPool.globalInstance()
    if pool.activeThreadCount() and not pool.waitForDone(60_000):
        pytest.fail(f"thread workers still running 60 s after {request.node.name}")
    if QApplication.instance() is not None:
        QApplication.processEvents()
