"""`nucseg finetune` end to end on two tiny pairs; the output folder loads with `nucseg predict --model`."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_finetune import tiny_model  # noqa: F401 - fixture

from fake_models import blob_image
from nucseg.cli import main

FAST = ["--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "64", "--batch-size", "2", "--device", "cpu", "--threads", "1",
        "--augment", "flips", "--quiet"]
#: the tiny untrained model may well get worse in two steps: tests of other things keep whatever comes out
KEEP = [*FAST, "--keep-worse"]


@pytest.fixture
def folders(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for k in range(2):
        image, lab = blob_image((96, 128), n=8, seed=k)
        Image.fromarray(image).save(images / f"tile{k}.png")
        tifffile.imwrite(labels / f"tile{k}_labels.tif", lab)
    return images, labels


def test_finetune_then_predict_with_the_new_model(tiny_model, folders, tmp_path, capsys):  # noqa: F811
    images, labels = folders
    out = tmp_path / "model"
    code = main(["finetune", "--images", str(images), "--labels", str(labels), "--out", str(out),
                 "--base", str(tiny_model), *KEEP])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "epoch 1/1" in captured.out and "AJI" in captured.out and f"model: {out}" in captured.out
    assert "before" in captured.out and "after" in captured.out
    assert (out / "model.safetensors").is_file() and not (out / "checkpoints").exists()

    pred = tmp_path / "pred"
    code = main(["predict", str(images / "tile0.png"), "--out", str(pred), "--model", str(out),
                 "--tile-size", "128", "--overlap", "32", "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    result = tifffile.imread(pred / "tile0_labels.tif")
    assert result.shape == (96, 128) and result.dtype == np.uint32


def test_bad_inputs_exit_2_with_one_line(tiny_model, folders, tmp_path, capsys):  # noqa: F811
    images, labels = folders
    cases = [
        ["--images", str(images), "--labels", str(tmp_path / "missing"), "--out", str(tmp_path / "a")],
        ["--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "b"), "--val-images", str(images)],
        ["--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "c"), "--mix-original", "0.3"],
        ["--images", str(images), "--labels", str(labels), "--out", str(images)],  # not empty: never overwritten
        ["--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "d"), "--lr", "-1"],
        ["--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "e"), "--base", "no-such-model"],
        ["--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "f"), "--mpp", "0"],
    ]
    for args in cases:
        capsys.readouterr()
        code = main(["finetune", *FAST, "--base", str(tiny_model), *args])
        err = capsys.readouterr().err.strip()
        assert code == 2, args
        assert err.startswith("nucseg finetune: error:") and "\n" not in err and "Traceback" not in err


def test_resume_continues_with_the_saved_settings(tiny_model, folders, tmp_path, capsys):  # noqa: F811
    from nucseg.config import FinetuneConfig
    from nucseg.jobs.finetune import folder_pairs
    from nucseg.training.finetune import iter_finetune

    images, labels = folders
    out = tmp_path / "run"
    config = FinetuneConfig(base_model=str(tiny_model), epochs=2, steps_per_epoch=2, batch_size=2, patch_size=64,
                            augmentations=("flips",), device="cpu", num_threads=1)
    train, val, _ = folder_pairs(images, labels, config=config)  # as the command line splits them
    gen = iter_finetune(train, val, config, out)
    for record in gen:  # interrupted after epoch 1
        if record.kind == "epoch":
            gen.close()
            break
    code = main(["finetune", "--images", str(images), "--labels", str(labels), "--out", str(out), "--resume",
                 "--quiet", "--keep-worse"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "epoch 2/2" in captured.out and "epoch 1/2" not in captured.out
    assert (out / "model.safetensors").is_file()


def test_mix_original_uses_the_base_models_replay_set(tiny_model, folders, tmp_path, capsys):  # noqa: F811
    import json

    from test_finetune import with_replay

    images, labels = folders
    base = with_replay(tiny_model, tmp_path)
    out = tmp_path / "model"
    code = main(["finetune", "--images", str(images), "--labels", str(labels), "--out", str(out),
                 "--base", str(base), "--mix-original", "0.5", *KEEP])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{base.name}'s replay set at 50% of each batch" in captured.err
    assert json.loads((out / "data_manifest.json").read_text())["original_source"] == f"replay set of {base.name}"


def test_mpp_resamples_the_images_to_the_base_models_resolution(tiny_model, folders):  # noqa: F811
    import argparse

    from nucseg.cli.finetune import load_data
    from nucseg.config import FinetuneConfig

    images, labels = folders
    args = argparse.Namespace(images=images, labels=labels, val_images=images, val_labels=labels,
                              original_images=None, original_labels=None, mix_original=0.0, mpp=None, reviewed=None)
    config = FinetuneConfig(base_model=str(tiny_model), mix_original=0.0)
    assert {p.labels.shape for p in load_data(args, config)[0]} == {(96, 128)}
    args.mpp = 0.5  # 20x images for the tiny model's 0.25 um/px
    train, val, _ = load_data(args, config)
    assert {p.labels.shape for p in train + val} == {(192, 256)}


def test_a_worse_model_is_not_registered_unless_keep_worse(tiny_model, folders, tmp_path, capsys, monkeypatch):  # noqa: F811
    from test_finetune import scripted_validation

    from nucseg.cli.finetune import NOT_KEPT
    from nucseg.models.registry import resolve_model

    images, labels = folders
    out = tmp_path / "model"
    scripted_validation(monkeypatch, [0.988, 0.857])
    args = ["finetune", "--images", str(images), "--labels", str(labels), "--out", str(out), "--base",
            str(tiny_model), "--val-fraction", "0.5", *FAST]
    code = main(args)
    captured = capsys.readouterr()
    assert code == NOT_KEPT, captured.err
    assert "NOT better than its base model on the 2 held-out regions of 2 corrections: held-out score 0.988 -> 0.857" \
           in captured.out
    assert "NOT registered" in captured.err and "--keep-worse" in captured.err
    assert not (out / "config.json").exists() and (out / "model.safetensors").is_file()
    from nucseg.errors import NucsegError

    with pytest.raises(NucsegError):
        resolve_model(out)  # nothing loads it as a model
    code = main([*args, "--resume", "--keep-worse"])  # the person keeps it after all: no training again
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "epoch" not in captured.out and f"model: {out}" in captured.out
    assert resolve_model(out).trained and not (out / "checkpoints").exists()


def test_reviewed_masks_from_a_store_export_limit_what_the_cli_learns(tiny_model, folders, tmp_path, capsys):  # noqa: F811
    from nucseg.cli.finetune import load_data
    from nucseg.config import FinetuneConfig

    images, labels = folders
    reviewed = tmp_path / "reviewed"
    reviewed.mkdir()
    mask = np.zeros((96, 128), np.uint8)
    mask[:, :64] = 255
    Image.fromarray(mask).save(reviewed / "tile0.png")
    import argparse

    args = argparse.Namespace(images=images, labels=labels, val_images=None, val_labels=None, reviewed=reviewed,
                              original_images=None, original_labels=None, mpp=None, mix_original=None)
    train, _, _ = load_data(args, FinetuneConfig(base_model=str(tiny_model), mix_original=0.0,
                                                 validation_fraction=0.0))
    by_name = {p.name: p for p in train}
    assert by_name["tile0"].reviewed[:, :64].all() and not by_name["tile0"].reviewed[:, 64:].any()
    assert by_name["tile1"].reviewed is None  # no mask: reviewed as a whole
