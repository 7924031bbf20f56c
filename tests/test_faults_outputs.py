"""Bad output folders and their faults (issue 21): each case ends in one line naming the file and the fix, exit 2,
and nothing the user made is lost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from fake_models import blob_image, install_blobnet
from nucseg.cli import main
from nucseg.errors import StoreError

MODEL = ["--model", "unet-efficientnet-b0", "--quiet"]
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "nucseg" / "sample_data"
LAB = SAMPLE / "he_breast_monuseg_labels.png"


def one_line_error(capsys, command: str) -> str:
    """The error the CLI printed: exactly one line on stderr, no traceback; returns it."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"nucseg {command}: error: "), err
    return lines[0]


@pytest.fixture
def tiles(tmp_path, monkeypatch):
    install_blobnet(monkeypatch)
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i, n in enumerate([4, 6]):
        Image.fromarray(blob_image((110, 130), n=n, seed=i)[0]).save(folder / f"t{i}.png")
    return folder


# -- 1: --overwrite deletes any folder at an output path -------------------------------------------------------------

def test_overwrite_never_deletes_a_folder_it_did_not_write(tmp_path, capsys):
    mine = tmp_path / "d"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    assert main(["evaluate", "--truth", str(LAB), "--pred", str(LAB), "--csv", str(mine), "--overwrite"]) == 2
    line = one_line_error(capsys, "evaluate")
    assert str(mine) in line and "folder" in line
    assert (mine / "keep.txt").read_text() == "x"


def test_overwrite_replaces_its_own_zarr_but_not_a_foreign_folder(tmp_path):
    from nucseg.io.export import write_labels_zarr

    labels = np.zeros((40, 50), np.uint32)
    labels[5:15, 5:15] = 1
    ours = write_labels_zarr(labels, tmp_path / "ours.zarr")
    labels[20:30, 20:30] = 2
    write_labels_zarr(labels, ours, overwrite=True)  # our own output: replaced
    from nucseg.io.ngff import read_labels_ngff

    assert int(np.asarray(read_labels_ngff(ours)[0][0]).max()) == 2
    foreign = tmp_path / "user.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="did not write"):
        write_labels_zarr(labels, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_predict_overwrite_refuses_a_foreign_folder_before_any_work(tiles, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "t0_labels.zarr").mkdir(parents=True)
    (out / "t0_labels.zarr" / "keep.txt").write_text("x")
    assert main(["predict", str(tiles), "--out", str(out), "--format", "zarr", "--overwrite", *MODEL]) == 2
    assert "t0_labels.zarr" in one_line_error(capsys, "predict")
    assert (out / "t0_labels.zarr" / "keep.txt").read_text() == "x"
    assert not (out / "t1_labels.zarr").exists()  # refused before any input ran


# -- 6: an unwritable --out fails only after all the work, with a traceback -------------------------------------------

def _no_work(monkeypatch):
    """Make any segmentation fail loudly: the check must come before the work."""
    from nucseg.jobs import batch

    def work_started(*args, **kwargs):
        raise AssertionError("the batch started before --out was checked")

    monkeypatch.setattr(batch, "iter_local", work_started)


@pytest.mark.parametrize("case", ["file", "file-parent", "proc"])
def test_an_impossible_out_is_refused_before_any_work(tiles, tmp_path, monkeypatch, capsys, case):
    if case == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    (tmp_path / "a-file").write_text("mine")
    out = {"file": tmp_path / "a-file", "file-parent": tmp_path / "a-file" / "sub", "proc": Path("/proc/self")}[case]
    _no_work(monkeypatch)
    assert main(["predict", str(tiles), "--out", str(out), *MODEL]) == 2
    assert str(out) in one_line_error(capsys, "predict")
    assert (tmp_path / "a-file").read_text() == "mine"


def as_non_root(argv: list[str], tmp_path: Path) -> tuple[int, str]:
    """Run ``python -m nucseg ARGV`` where file permissions apply: as root, without the capabilities that let root
    read and write anything (setpriv); returns (exit code, stderr)."""
    import os
    import shutil
    import subprocess
    import sys

    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be made to apply")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([*prefix, sys.executable, "-m", "nucseg", *argv], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    return done.returncode, done.stderr


@pytest.mark.parametrize("case", ["read-only", "read-only-parent"])
def test_a_read_only_out_is_refused_before_any_work(tmp_path, case):
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked if case == "read-only" else locked / "sub"
    locked.chmod(0o555)
    try:
        code, err = as_non_root(["predict", str(SAMPLE / "he_breast_monuseg.png"), "--out", str(out), *MODEL],
                                tmp_path)
    finally:
        locked.chmod(0o755)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert str(out) in lines[0] and "Permission denied" in lines[0]


def test_a_disk_that_fills_mid_run_gives_one_line_and_no_partial_files(tiles, tmp_path, monkeypatch, capsys):
    import csv
    import errno

    from nucseg.jobs import batch

    real_write = tifffile.TiffWriter.write
    calls = []

    def fills_up(self, *args, **kwargs):  # the second input's labels meet a full disk half-way
        calls.append(1)
        if len(calls) >= 2:
            self._fh.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)

    class FullDiskWriter(csv.DictWriter):
        def writerows(self, rows):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile.TiffWriter, "write", fills_up)
    monkeypatch.setattr(batch.csv, "DictWriter", FullDiskWriter)
    out = tmp_path / "out"
    assert main(["predict", str(tiles), "--out", str(out), *MODEL]) == 2
    line = one_line_error(capsys, "predict")
    assert "disk is full" in line and "t1" in line and "--resume" in line
    assert sorted(p.name for p in out.iterdir()) == ["t0_labels.tif", "t0_predict.json"]  # no partial file left


# -- 8: --resume matches path + size only ---------------------------------------------------------------------------

def test_resume_redoes_nothing_silently_for_an_input_whose_content_changed(tmp_path, monkeypatch, capsys):
    import os

    install_blobnet(monkeypatch)
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    path = folder / "t.tif"
    tifffile.imwrite(path, blob_image((110, 130), n=4, seed=0)[0])  # uncompressed: the size depends on the shape
    assert main(["predict", str(path), "--out", str(out), *MODEL]) == 0
    stat = path.stat()
    tifffile.imwrite(path, blob_image((110, 130), n=7, seed=1)[0])  # another image of the same byte size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and even the same modification time
    assert path.stat().st_size == stat.st_size
    capsys.readouterr()
    assert main(["predict", str(path), "--out", str(out), *MODEL, "--resume"]) == 2
    line = one_line_error(capsys, "predict")
    assert "t.tif changed" in line and "--overwrite" in line
    assert main(["predict", str(path), "--out", str(out), *MODEL, "--resume", "--overwrite"]) == 0
    assert json.loads((out / "t_predict.json").read_text())["nuclei"] == 7


def test_the_fingerprint_of_a_large_input_samples_its_content_and_time(tmp_path, monkeypatch):
    import os

    from nucseg.jobs import predict_file

    monkeypatch.setattr(predict_file, "FINGERPRINT_WHOLE", 4096)
    monkeypatch.setattr(predict_file, "FINGERPRINT_BLOCK", 256)
    path = tmp_path / "big.svs"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))
    first = predict_file.input_fingerprint(path)
    assert first["bytes"] == 200_000 and "mtime_ns" in first
    stamp = path.stat()
    data[-1] ^= 0xFF  # the last block is always sampled
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert predict_file.input_fingerprint(path) != first
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert predict_file.input_fingerprint(path) != first  # same bytes, other time: taken as changed
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert predict_file.input_fingerprint(path) == first


# -- 14: --out equal to the input folder feeds the tool its own outputs next run ----------------------------------

def test_out_in_the_input_folder_does_not_feed_the_next_run_its_own_outputs(tiles, monkeypatch, capsys):
    assert main(["predict", str(tiles), "--out", str(tiles), "--format", "tif,csv", *MODEL]) == 0
    stamp = (tiles / "t0_labels.tif").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["predict", str(tiles), "--out", str(tiles), "--format", "tif,csv", *MODEL, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 of 2 inputs" in err and "skipped 2 output(s) of nucseg" in err and "error" not in err
    assert (tiles / "t0_labels.tif").stat().st_mtime_ns == stamp
    assert not list(tiles.glob("t0_labels_*"))  # its labels were not segmented as an input


def test_own_outputs_are_recognised_by_name_and_marker(tmp_path):
    from nucseg.io.export import write_labels_ome_tiff
    from nucseg.io.outputs import is_own_output, own_output_name

    assert own_output_name(tmp_path / "a.1_labels.tif") == ("tif", "a.1")
    assert own_output_name(tmp_path / "slide_predict.json") == ("summary", "slide")
    assert own_output_name(tmp_path / "slide.tif") is None
    labels = np.zeros((20, 20), np.uint32)
    ours = write_labels_ome_tiff(labels, tmp_path / "x_labels.tif")
    tifffile.imwrite(tmp_path / "truth_labels.tif", labels)  # a user's ground truth, named alike
    assert is_own_output(ours) and not is_own_output(tmp_path / "truth_labels.tif")


# -- 15: two runs into one --out -----------------------------------------------------------------------------------

def test_a_second_run_into_a_folder_in_use_is_refused_and_nothing_is_touched(tiles, tmp_path, capsys):
    from nucseg.io.outputs import LOCK_NAME, output_lock

    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out, "nucseg predict (the first run)"):
        assert main(["predict", str(tiles), "--out", str(out), *MODEL]) == 2
        line = one_line_error(capsys, "predict")
        assert "in use by nucseg predict (the first run)" in line and str(out) in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # no output, no summary written over
    assert not (out / LOCK_NAME).exists()  # released
    assert main(["predict", str(tiles), "--out", str(out), *MODEL]) == 0
    assert not (out / LOCK_NAME).exists()


def test_the_lock_of_a_run_that_died_is_taken_over(tiles, tmp_path, capsys):
    import socket
    import subprocess
    import sys

    from nucseg.io.outputs import LOCK_NAME

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                             "command": "nucseg predict"}))
    assert main(["predict", str(tiles), "--out", str(out), *MODEL]) == 0
    assert not (out / LOCK_NAME).exists()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "another-machine", "command": "nucseg predict"}))
    capsys.readouterr()
    assert main(["predict", str(tiles), "--out", str(out), *MODEL, "--overwrite"]) == 2
    line = one_line_error(capsys, "predict")
    assert "another-machine" in line and f"remove {out / LOCK_NAME}" in line


def test_a_run_given_overwrite_is_not_told_to_pass_overwrite(tiles, tmp_path, monkeypatch, capsys):
    from nucseg.io import export

    out = tmp_path / "out"
    real = export.write_labels_ome_tiff

    def someone_else_writes_too(labels, path, *args, **kwargs):  # the output appears while the input runs
        (out / "t0_labels.tif").write_bytes(b"written meanwhile")
        return real(labels, path, *args, **kwargs)

    monkeypatch.setattr(export, "write_labels_ome_tiff", someone_else_writes_too)
    code = main(["predict", str(tiles / "t0.png"), "--out", str(out), *MODEL, "--overwrite"])
    err = capsys.readouterr().err
    assert "pass --overwrite" not in err and code == 0, err
    assert tifffile.imread(out / "t0_labels.tif").max() == 4


# -- 17: temporary files survive a --resume that skips their input ---------------------------------------------------

def test_resume_removes_the_temporary_files_of_skipped_inputs(tiles, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(tiles), "--out", str(out), *MODEL]) == 0
    left = [".t0_labels.tif.0123abcd.partial", "..t0_labels.tif.0123abcd.partial.4567cdef.tmp",
            ".t1_predict.json.89abcdef.partial", ".batch_summary.csv.4242.partial"]
    for name in left:  # what a run killed before its inputs were redone and finished left behind
        (out / name).write_bytes(b"")
    capsys.readouterr()
    assert main(["predict", str(tiles), "--out", str(out), *MODEL, "--resume"]) == 0
    assert "skipped 2 of 2 inputs" in capsys.readouterr().err
    assert not list(out.glob(".*"))
