"""Fine-tuning state that breaks (issue 21, fault 7): a full disk, a truncated checkpoint, an --out that is a file.
Each ends in one line and exit 2, or resumes from the last intact checkpoint; nothing half-written is left."""

from __future__ import annotations

import errno
import json
import resource
from pathlib import Path

import pytest
from test_cli_finetune import folders  # noqa: F401 (fixture: two blob tiles and their labels)
from test_finetune import (
    TINY,
    drain,
    epochs_of,
    tiny_model,  # noqa: F401 - fixture
    tiny_pairs,
)

from nucseg.cli import main
from nucseg.config import FinetuneConfig

FAST = ["--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "64", "--batch-size", "2", "--device", "cpu",
        "--threads", "1", "--augment", "flips", "--quiet", "--keep-worse"]


def one_line_error(capsys) -> str:
    """The one error line on stderr (after the line saying what will be trained, if any), no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("fine-tuning ")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("nucseg finetune: error: "), err
    return lines[0]


def test_a_config_write_on_a_full_disk_leaves_no_empty_file(tmp_path):
    config = FinetuneConfig()
    path = tmp_path / "finetune_config.json"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))  # every write fails as on a full disk (SIGXFSZ is ignored)
    try:
        with pytest.raises(Exception) as caught:
            config.write_json(path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    from nucseg.errors import StoreError

    assert isinstance(caught.value, StoreError) and str(path) in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # neither a 0-byte config nor a temporary file


def test_resume_after_a_full_disk_left_an_empty_config(tiny_model, folders, tmp_path, capsys):  # noqa: F811
    images, labels = folders
    out = tmp_path / "run"
    out.mkdir()
    (out / "finetune_config.json").write_bytes(b"")  # what a full disk left at the start of the first run
    capsys.readouterr()
    code = main(["finetune", "--images", str(images), "--labels", str(labels), "--out", str(out),
                 "--base", str(tiny_model), *FAST, "--resume"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err and "finetune_config.json" in captured.err
    assert json.loads((out / "finetune_config.json").read_text())["epochs"] == 1
    assert (out / "model.safetensors").is_file()


def _two_checkpoints(model: Path, out: Path) -> tuple[FinetuneConfig, list]:
    """A run of 3 epochs cut short after epoch 2 was checkpointed."""
    from nucseg.training.finetune import iter_finetune

    pairs = tiny_pairs()
    config = FinetuneConfig(base_model=str(model), **{**TINY, "epochs": 3})
    gen = iter_finetune(pairs[:2], pairs[2:], config, out)
    for record in gen:
        if record.kind == "epoch" and record.info["epoch"] == 2:
            gen.close()
            break
    return config, pairs


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_checkpoint_resumes_from_the_last_intact_one(tiny_model, tmp_path):  # noqa: F811
    from nucseg.training.finetune import iter_finetune

    out = tmp_path / "run"
    config, pairs = _two_checkpoints(tiny_model, out)
    _truncate(out / "checkpoints" / "epoch-0002" / "weights.safetensors")
    records, result = drain(iter_finetune(pairs[:2], pairs[2:], config, out, resume=True))
    notes = [r.stage for r in records if r.kind == "note"]
    assert len(notes) == 1 and "epoch-0002" in notes[0] and "epoch 1" in notes[0]
    assert epochs_of(records) == [2, 3]  # epoch 2 is trained again from checkpoint 1
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert (out / "model.safetensors").is_file()


def test_no_intact_checkpoint_gives_one_line(tiny_model, folders, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    _two_checkpoints(tiny_model, out)
    for checkpoint in (out / "checkpoints").glob("epoch-*"):
        _truncate(checkpoint / "weights.safetensors")
    images, labels = folders
    capsys.readouterr()
    code = main(["finetune", "--images", str(images), "--labels", str(labels), "--out", str(out),
                 "--base", str(tiny_model), *FAST, "--resume"])
    assert code == 2
    assert "no intact checkpoint" in one_line_error(capsys)


def test_out_naming_a_file_gives_one_line(tiny_model, folders, tmp_path, capsys):  # noqa: F811
    images, labels = folders
    out = tmp_path / "model.safetensors"
    out.write_text("mine")
    for resume in ([], ["--resume"]):
        code = main(["finetune", "--images", str(images), "--labels", str(labels), "--out", str(out),
                     "--base", str(tiny_model), *FAST, *resume])
        assert code == 2
        assert str(out) in one_line_error(capsys)
    assert out.read_text() == "mine"


@pytest.mark.parametrize("raised", ["OSError", "SafetensorError"])
def test_a_full_disk_while_checkpointing_gives_one_line_then_resume_finishes(tiny_model, folders, tmp_path,  # noqa: F811
                                                                            capsys, monkeypatch, raised):
    from safetensors import SafetensorError

    from nucseg.training import checkpoint

    real = checkpoint.save_file

    def full(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 64)
        if raised == "OSError":
            raise OSError(errno.ENOSPC, "No space left on device")
        # what safetensors raises on a full disk (seen on a full tmpfs)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    images, labels = folders
    out = tmp_path / "run"
    argv = ["finetune", "--images", str(images), "--labels", str(labels), "--out", str(out),
            "--base", str(tiny_model), *FAST]
    capsys.readouterr()
    assert main(argv) == 2
    line = one_line_error(capsys)
    assert "disk is full" in line and "--resume" in line
    assert not list((out / "checkpoints").glob(".*")) and not list(out.glob(".*"))  # nothing half-written
    monkeypatch.setattr(checkpoint, "save_file", real)
    code = main([*argv, "--resume"])
    assert code == 0, capsys.readouterr().err
    assert (out / "model.safetensors").is_file()
