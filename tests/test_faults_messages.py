"""Inputs the tool may not read, and one-liners that named the wrong cause (issue 21, faults 13 and 16): each ends in
one line that names the file and the real fix, exit 2, no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_faults_outputs import MODEL, SAMPLE, as_non_root, one_line_error

from nucseg.cli import main

TILE = SAMPLE / "he_breast_monuseg.png"


def _one_line(code: int, err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"nucseg {command}: error: "), err
    return lines[0]


# -- 13: an unreadable input folder gives a PermissionError traceback ------------------------------------------------

@pytest.mark.parametrize("command", ["info", "predict"])
@pytest.mark.parametrize("target", ["folder", "file-in-folder"])
def test_an_unreadable_input_folder_gives_one_line(tmp_path, command, target):
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(TILE, locked / "a.png")
    path = locked if target == "folder" else locked / "a.png"
    extra = ["--out", str(tmp_path / "out"), *MODEL] if command == "predict" else []
    locked.chmod(0)
    try:
        code, err = as_non_root([command, str(path), *extra], tmp_path)
    finally:
        locked.chmod(0o755)
    line = _one_line(code, err, command)
    assert "permission denied" in line and str(path) in line


# -- 16: misleading one-liners ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["info", "predict"])
def test_a_permission_error_is_not_called_a_damaged_file(tmp_path, command):
    path = tmp_path / "a.png"
    shutil.copy(TILE, path)
    path.chmod(0)
    extra = ["--out", str(tmp_path / "out"), *MODEL] if command == "predict" else []
    code, err = as_non_root([command, str(path), *extra], tmp_path)
    line = _one_line(code, err, command)
    assert "permission denied" in line and "damaged" not in line and str(path) in line


def test_read_failure_of_a_permission_error_says_permission():
    from nucseg.io.base import read_failure

    err = PermissionError(13, "Permission denied", "/data/x.svs")
    message = str(read_failure(Path("/data/x.svs"), err))
    assert "permission denied" in message and "damaged" not in message
