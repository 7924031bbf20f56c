"""Inputs the tool may not read, and one-liners that named the wrong cause (issue 21, faults 13 and 16): each ends in
one line that names the file and the real fix, exit 2, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


@pytest.mark.parametrize("fraction", [0.5, 0.7])
def test_a_truncated_svs_says_truncated_and_no_tifffile_line_leaks(shared_data, tmp_path, capsys, fraction):
    svs = (shared_data / "slides" / "small_HE.svs").read_bytes()
    path = tmp_path / "cut.svs"
    path.write_bytes(svs[: int(len(svs) * fraction)])  # at 0.7 the first image survives, the later ones are lost
    assert main(["info", str(path)]) == 2
    line = one_line_error(capsys, "info")
    assert "truncated" in line and "copy it again" in line and str(path) in line
    # outside pytest (whose log capture hides it) tifffile's own log line reached stderr as well
    done = subprocess.run([sys.executable, "-m", "nucseg", "info", str(path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=300)
    assert done.returncode == 2 and done.stderr.strip() == line, done.stderr


def test_evaluate_takes_our_own_zarr_as_a_label_image(tmp_path, capsys):
    from nucseg.io.export import write_labels_zarr
    from nucseg.io.masks import read_labels

    lab = SAMPLE / "he_breast_monuseg_labels.png"
    pred = write_labels_zarr(read_labels(lab), tmp_path / "x_labels.zarr")
    assert main(["evaluate", "--truth", str(lab), "--pred", str(pred), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["f1"] == 1.0 and scores["fn"] == 0
    folder = tmp_path / "plain"
    folder.mkdir()
    assert main(["evaluate", "--truth", str(lab), "--pred", str(folder)]) == 2
    assert str(folder) in one_line_error(capsys, "evaluate")


def test_a_negative_threads_per_worker_is_not_blamed_on_the_model(tmp_path, capsys):
    code = main(["predict", str(TILE), "--out", str(tmp_path / "out"), *MODEL, "--workers", "1",
                 "--threads-per-worker", "-1"])
    assert code == 2
    line = one_line_error(capsys, "predict")
    assert "--threads-per-worker -1" in line and "model" not in line
