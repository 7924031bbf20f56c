"""iter_finetune on tiny data: resume after a crash loses at most one epoch, Stop keeps the best epoch as a
loadable model, a kill -9 mid-epoch resumes from the last checkpoint, and the keep policies: a model not
better than its base on validation, or a stopped run, is a candidate until kept or discarded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from fake_models import blob_image
from nucseg.config import FinetuneConfig
from nucseg.progress import drive
from nucseg.training.dataset import TrainingPair

TINY = dict(epochs=2, steps_per_epoch=2, batch_size=2, patch_size=64, augmentations=("flips",),
            early_stopping_patience=0, plateau_patience=0, device="cpu", learning_rate=1e-3,
            num_threads=1)  # one thread: 30x faster than two when the cores are shared (OpenMP oversubscription)


def tiny_model_folder(parent: Path) -> Path:
    """An untrained EfficientNet-B0 UNet saved as a model folder (a stand-in for a shipped model)."""
    from nucseg.models.build import build_network, save_model
    from nucseg.models.registry import untrained_spec

    spec = untrained_spec("efficientnet-b0")
    return save_model(build_network(spec), spec, parent / "tiny", info={"description": "tiny test model"}).folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("models"))


def tiny_pairs(n: int = 3, shape=(96, 128)) -> list[TrainingPair]:
    return [TrainingPair(*blob_image(shape, n=8, seed=k), name=f"p{k}") for k in range(n)]


def drain(gen):
    """Run a generator to its end: (records, return value)."""
    records: list = []
    return records, drive(gen, records.append)


def epochs_of(records):
    return [r.info["epoch"] for r in records if r.kind == "epoch"]


def test_resume_after_a_crash_starts_at_the_next_epoch(tiny_model, tmp_path):
    from nucseg.models.registry import resolve_model
    from nucseg.training.finetune import iter_finetune

    pairs = tiny_pairs()
    config = FinetuneConfig(base_model=str(tiny_model), **{**TINY, "epochs": 3})
    out = tmp_path / "run"
    gen = iter_finetune(pairs[:2], pairs[2:], config, out)
    records = []
    for record in gen:  # a crash right after epoch 2 was checkpointed
        records.append(record)
        if record.kind == "epoch" and record.info["epoch"] == 2:
            gen.close()
            break
    assert records[0].kind == "preparing" and records[0].stage  # something to show at once, before the model loads
    baseline = next(r for r in records if r.kind == "baseline").info
    assert "val_aji" in baseline and "val_score" in baseline
    # one bar for the whole run: every record counts training steps over all epochs
    assert {r.total for r in records} == {6} and [r.done for r in records if r.kind == "epoch"] == [2, 4]
    assert [r.done for r in records] == sorted(r.done for r in records)
    steps = [r for r in records if r.kind == "progress"]
    assert [r.done for r in steps] == [1, 2, 3, 4] and steps[-1].stage.startswith("epoch 2 of 3, step 2 of 2, loss")
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["epoch"] == 2

    resumed, result = drain(iter_finetune(pairs[:2], pairs[2:], config, out, resume=True))
    assert epochs_of(resumed) == [3]
    assert [r.done for r in resumed if r.kind == "progress"] == [5, 6]  # the bar goes on where the run stopped
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.model_dir == out and not result.stopped
    assert result.before == baseline
    spec = resolve_model(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["validation"]["after"] and cfg["created"] and cfg["base_model"]["name"] == "tiny"
    assert spec.trained and cfg["best_epoch"] in (1, 2, 3)


def test_finished_runs_are_never_overwritten(tiny_model, tmp_path):
    from nucseg.errors import StoreError
    from nucseg.training.finetune import iter_finetune

    pairs = tiny_pairs(2)
    config = FinetuneConfig(base_model=str(tiny_model), **{**TINY, "epochs": 1, "steps_per_epoch": 1})
    drain(iter_finetune(pairs[:1], pairs[1:], config, tmp_path / "run"))
    for resume in (False, True):
        with pytest.raises(StoreError, match="never overwritten"):
            next(iter_finetune(pairs[:1], pairs[1:], config, tmp_path / "run", resume=resume))


def test_stop_keeps_the_best_epoch_and_makes_a_loadable_model(tiny_model, tmp_path):
    from nucseg.models.build import load_network
    from nucseg.training.finetune import iter_finetune

    pairs = tiny_pairs()
    config = FinetuneConfig(base_model=str(tiny_model), **{**TINY, "epochs": 5, "steps_per_epoch": 3})
    stop = threading.Event()
    records = []

    def stop_in_epoch_2(record):
        records.append(record)
        if record.kind == "progress" and record.info["epoch"] == 2 and record.info["step"] == 1:
            stop.set()

    result = drive(iter_finetune(pairs[:2], pairs[2:], config, tmp_path / "run", stop=stop), stop_in_epoch_2)
    assert result.stopped and epochs_of(records) == [1, 2]
    assert records[-1].info["partial"] is True and records[-1].done == 4  # 3 steps of epoch 1, 1 of epoch 2
    assert result.model_dir is not None and result.after
    best = [r for r in result.history if r["best"]][-1]
    assert result.after == {k: v for k, v in best.items() if k.startswith("val_") or k in ("tiles", "heldout")}
    net = load_network(result.model_dir)
    assert net is not None


def test_stop_before_any_step_writes_no_model(tiny_model, tmp_path):
    from nucseg.training.finetune import iter_finetune

    pairs = tiny_pairs(2)
    stop = threading.Event()
    stop.set()
    config = FinetuneConfig(base_model=str(tiny_model), **TINY)
    records, result = drain(iter_finetune(pairs[:1], pairs[1:], config, tmp_path / "run", stop=stop))
    assert result.model_dir is None and result.stopped and epochs_of(records) == []


KILL_SCRIPT = textwrap.dedent("""
    import sys, json
    sys.path.insert(0, {tests!r})
    from test_finetune import tiny_pairs, TINY
    from nucseg.config import FinetuneConfig
    from nucseg.training.finetune import iter_finetune

    pairs = tiny_pairs()
    config = FinetuneConfig(base_model={model!r}, **{{**TINY, "epochs": 3, "steps_per_epoch": 3}})
    for record in iter_finetune(pairs[:2], pairs[2:], config, {out!r}, resume=True):
        print(json.dumps({{"kind": record.kind, **{{k: record.info.get(k) for k in ("epoch", "step")}}}}), flush=True)
""")


@pytest.mark.slow
def test_kill_9_mid_epoch_resumes_from_the_last_checkpoint(tiny_model, tmp_path):
    from nucseg.training.finetune import iter_finetune

    out = tmp_path / "run"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), model=str(tiny_model), out=str(out))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:  # kill -9 in the middle of epoch 2 (epoch 1 is checkpointed)
            record = json.loads(line)
            if record["kind"] == "progress" and record["epoch"] == 2 and record["step"] == 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()

    pairs = tiny_pairs()
    config = FinetuneConfig(base_model=str(tiny_model), **{**TINY, "epochs": 3, "steps_per_epoch": 3})
    records, result = drain(iter_finetune(pairs[:2], pairs[2:], config, out, resume=True))
    assert epochs_of(records) == [2, 3]  # only the epoch in progress was lost
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("freeze", [True, False])
def test_norm_statistics_kept_unless_asked(tiny_model, tmp_path, freeze):
    """freeze_norm keeps the base model's batch-norm statistics; without it they adapt to the new tiles."""
    from safetensors.torch import load_file

    from nucseg.training.finetune import iter_finetune

    pairs = tiny_pairs(2)
    config = FinetuneConfig(base_model=str(tiny_model), freeze_norm=freeze,
                            **{**TINY, "epochs": 1, "steps_per_epoch": 2})
    _, result = drain(iter_finetune(pairs[:1], pairs[1:], config, tmp_path / "run"))
    before = load_file(str(tiny_model / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    stats = [k for k in before if k.endswith("running_mean")]
    moved = [k for k in stats if not (before[k].float() - after[k].float()).abs().max() < 1e-3]
    weights = [k for k in before if k.endswith(".weight") and before[k].ndim == 4]
    assert stats and any((before[k].float() - after[k].float()).abs().max() > 0 for k in weights)
    assert (moved == []) if freeze else (len(moved) > len(stats) // 2)


def with_replay(model: Path, parent: Path, n: int = 2) -> Path:
    """A copy of `model` that carries a replay set of `n` blob tiles, as the shipped default does."""
    import shutil

    import tifffile
    from PIL import Image

    folder = parent / f"{model.name}-replay"
    shutil.copytree(model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "name": folder.name}))
    for sub in ("images", "labels"):
        (folder / "replay" / sub).mkdir(parents=True)
    for k in range(n):
        image, labels = blob_image((96, 96), n=6, seed=100 + k)
        Image.fromarray(image).save(folder / "replay" / "images" / f"r{k}.jpg", quality=90)
        tifffile.imwrite(folder / "replay" / "labels" / f"r{k}.tif", labels)
    return folder


def test_replay_set_of_the_base_is_rehearsed_and_inherited(tiny_model, tmp_path):
    from nucseg.models.registry import resolve_model
    from nucseg.training.finetune import iter_finetune

    base = with_replay(tiny_model, tmp_path)
    pairs = tiny_pairs()
    config = FinetuneConfig(base_model=str(base), **{**TINY, "epochs": 1, "mix_original": 0.5})
    _, result = drain(iter_finetune(pairs[:2], pairs[2:], config, tmp_path / "run"))
    manifest = json.loads((result.model_dir / "data_manifest.json").read_text())
    assert [p["name"] for p in manifest["original"]] == ["r0", "r1"]
    assert manifest["original_source"] == f"replay set of {base.name}"
    # the new version rehearses the same data when it is fine-tuned in turn
    assert sorted(p.name for p in resolve_model(result.model_dir).replay_dir.glob("images/*")) == ["r0.jpg", "r1.jpg"]

    off = FinetuneConfig(base_model=str(base), **{**TINY, "epochs": 1, "mix_original": 0.0})
    _, result = drain(iter_finetune(pairs[:2], pairs[2:], off, tmp_path / "run-off"))
    manifest = json.loads((result.model_dir / "data_manifest.json").read_text())
    assert manifest["original"] == [] and "original_source" not in manifest


def test_sampler_draws_the_mixed_share_from_the_original_data():
    import numpy as np

    from nucseg.training.dataset import PatchSampler

    new = [TrainingPair(np.zeros((80, 80, 3), np.uint8), np.zeros((80, 80), np.uint32), "new")]
    old = [TrainingPair(np.full((80, 80, 3), 255, np.uint8), np.zeros((80, 80), np.uint32), "old")]
    sampler = PatchSampler(new, 64, (), extra=(old, 0.25))
    images, _ = sampler.sample_batch(np.random.default_rng(0), 8)
    assert [int(im.max()) for im in images] == [0] * 6 + [255] * 2


def scripted_validation(monkeypatch, ajis):
    """The held-out scoring in iter_finetune returns these scores in turn: the base model's first, then one per
    epoch."""
    import numpy as np

    from nucseg.training import finetune

    scores = iter(ajis)

    def fake(net, spec, heldout, *args, **kwargs):
        aji = next(scores)
        yield 0, len(heldout)
        tiles = [{"tile": g, "score": aji, "aji": aji, "nuclei": 100, "accepted": 0, "found": 100}
                 for g in dict.fromkeys(heldout.groups)]
        return ({"val_loss": 1 - aji, "val_iou": aji, "val_f1": aji, "val_aji": aji, "val_score": aji,
                 "heldout": heldout.kind, "tiles": tiles},
                [np.zeros(p.labels.shape, np.uint32) for p in heldout.pairs])

    monkeypatch.setattr(finetune, "iter_heldout_scores", fake)


def test_a_version_worse_than_its_base_is_not_registered_unless_asked(tiny_model, tmp_path, monkeypatch):
    """Seen: AJI 0.988 -> 0.857 was saved as a new version without a word. The best epoch is compared with the
    base on the same validation images; "if_better" leaves a worse model as a candidate, never a version."""
    from nucseg.models.registry import resolve_model
    from nucseg.models.versions import is_candidate, register_candidate
    from nucseg.training.finetune import NOT_BETTER, iter_finetune

    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path / "home"))
    scripted_validation(monkeypatch, [0.988, 0.80, 0.857])
    pairs = tiny_pairs()
    config = FinetuneConfig(base_model=str(tiny_model), **TINY)
    out = tmp_path / "run"
    _, result = drain(iter_finetune(pairs[:2], pairs[2:], config, out, keep="if_better"))
    assert result.verdict == NOT_BETTER and result.best_epoch == 2 and result.after["val_score"] == 0.857
    assert result.model_dir is None and result.pending and is_candidate(out)
    assert not (out / "config.json").exists()  # nothing loads it as a model by accident
    assert json.loads((out / "candidate.json").read_text())["validation"]["verdict"] == NOT_BETTER
    # resuming the finished run trains nothing and returns the same decision; keep="always" keeps it
    records, again = drain(iter_finetune(pairs[:2], pairs[2:], config, out, resume=True, keep="always"))
    assert [r.kind for r in records] == ["baseline"] and again.model_dir == out and not again.pending
    assert resolve_model(out).trained and again.before["val_score"] == 0.988
    with pytest.raises(Exception, match="no model waiting"):
        register_candidate(out)


def test_a_better_version_is_registered_and_the_best_epoch_kept(tiny_model, tmp_path, monkeypatch):
    from nucseg.training.finetune import BETTER, iter_finetune

    scripted_validation(monkeypatch, [0.5, 0.6, 0.7, 0.65])
    pairs = tiny_pairs()
    config = FinetuneConfig(base_model=str(tiny_model), **{**TINY, "epochs": 3})
    records, result = drain(iter_finetune(pairs[:2], pairs[2:], config, tmp_path / "run", keep="if_better"))
    assert result.verdict == BETTER and result.model_dir == tmp_path / "run" and result.best_epoch == 2
    assert json.loads((result.model_dir / "config.json").read_text())["best_epoch"] == 2
    assert result.steps_done == result.steps_planned == 6


def test_stop_leaves_the_choice_and_says_how_many_steps_ran(tiny_model, tmp_path, monkeypatch):
    from nucseg.models import versions
    from nucseg.training.finetune import iter_finetune

    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path / "home"))
    pairs = tiny_pairs()
    config = FinetuneConfig(base_model=str(tiny_model), **{**TINY, "epochs": 5, "steps_per_epoch": 4})
    out = versions.new_version_dir(tiny_model)
    stop = threading.Event()

    def stop_after_two_steps(record):
        if record.kind == "progress" and record.info["step"] == 2:
            stop.set()

    result = drive(iter_finetune(pairs[:2], pairs[2:], config, out, stop=stop, keep="ask"), stop_after_two_steps)
    assert result.stopped and result.steps_done == 2 and result.steps_planned == 20 and result.pending
    assert versions.list_versions() == [] and versions.pending_candidates() == [out]
    assert versions.unfinished_runs() == []  # over: not offered for resuming, only for the decision
    trashed = versions.discard_candidate(out)
    assert not out.exists() and (trashed / "model.safetensors").is_file() and not (trashed / "checkpoints").exists()
    assert versions.pending_candidates() == [] and versions.list_versions() == []
