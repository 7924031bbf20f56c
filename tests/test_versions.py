"""Model versions: unique new folders, rename / delete / export, and the shipped models left alone."""

from __future__ import annotations

import json

import pytest

from nucseg.errors import StoreError
from nucseg.models import versions


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def fake_version(folder, base="nucseg-default", before=0.5, after=0.6):
    """A model folder with a tiny weights file (enough for listing, renaming and moving)."""
    import torch
    from safetensors.torch import save_file

    from nucseg.models.registry import sha256_of

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    cfg = {"name": folder.name, "encoder": "efficientnet-b0", "created": "2024-01-01T00:00:00+00:00",
           "base_model": {"name": base}, "description": "test",
           "validation": {"before": {"val_aji": before}, "after": {"val_aji": after}},
           "sha256": sha256_of(folder / "model.safetensors")}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "latest.json").write_text("{}")
    return folder


def test_new_version_dirs_are_unique_and_fresh(home):
    dirs = [versions.new_version_dir("nucseg-default") for _ in range(3)]
    assert len(set(dirs)) == 3
    assert all(d.is_dir() and not any(d.iterdir()) and d.parent == home / "models" for d in dirs)
    assert dirs[0].name.startswith("nucseg-default-ft-")
    assert versions.new_version_dir("/some/folder/my model").name.startswith("my-model-ft-")


def test_list_versions_with_scores(home):
    fake_version(home / "models" / "v1", before=0.4, after=0.55)
    (home / "models" / "unfinished").mkdir()
    (home / "models" / "unfinished" / "finetune_config.json").write_text("{}")
    listed = versions.list_versions()
    assert [v.name for v in listed] == ["v1"]
    assert listed[0].base == "nucseg-default" and listed[0].after == {"val_aji": 0.55}
    assert "0.400 -> 0.550" in listed[0].summary()
    assert versions.unfinished_runs() == [home / "models" / "unfinished"]


def test_rename_refuses_existing_targets_and_bad_names(home):
    fake_version(home / "models" / "v1")
    fake_version(home / "models" / "v2")
    seen = []
    versions.versions_changed.connect(lambda: seen.append(1))
    new = versions.rename("v1", "breast-v1")
    assert new == home / "models" / "breast-v1" and json.loads((new / "config.json").read_text())["name"] == "breast-v1"
    assert seen
    with pytest.raises(StoreError, match="already exists"):
        versions.rename("breast-v1", "v2")
    for bad in ("../x", "a/b", "", ".hidden", "unet-resnet34"):
        with pytest.raises(StoreError):
            versions.rename("v2", bad)
    assert (home / "models" / "v2" / "model.safetensors").is_file()


def test_delete_moves_to_trash_and_needs_confirmation(home):
    folder = fake_version(home / "models" / "v1")
    with pytest.raises(StoreError, match="confirmation"):
        versions.delete("v1", confirm=False)
    assert folder.is_dir()
    trashed = versions.delete("v1", confirm=True)
    assert not folder.exists() and (trashed / "model.safetensors").is_file()
    assert trashed.parent == home / "trash" / "models"
    fake_version(home / "models" / "v1")
    assert versions.delete(str(home / "models" / "v1"), confirm=True) != trashed  # never overwrites the trash


def test_shipped_models_are_never_renamed_or_deleted(home, monkeypatch, tmp_path):
    from nucseg.models import registry

    shipped = fake_version(tmp_path / "weights" / "nucseg-default")
    monkeypatch.setattr(registry, "SHIPPED_DIR", shipped.parent)
    monkeypatch.setattr(versions, "SHIPPED_DIR", shipped.parent)
    for call in (lambda: versions.delete("nucseg-default", confirm=True),
                 lambda: versions.delete(str(shipped), confirm=True),
                 lambda: versions.rename("nucseg-default", "x"),
                 lambda: versions.rename(str(shipped), "x")):
        with pytest.raises(StoreError, match="shipped"):
            call()
    assert (shipped / "model.safetensors").is_file()
    with pytest.raises(StoreError, match="not a fine-tuned version"):
        versions.delete(str(tmp_path), confirm=True)
    assert tmp_path.is_dir()


def test_the_real_shipped_folder_is_protected():
    from nucseg.models.registry import SHIPPED_DIR

    assert versions.is_shipped(SHIPPED_DIR / "nucseg-default")
    with pytest.raises(StoreError):
        versions.delete(SHIPPED_DIR / "nucseg-default", confirm=True)


def test_export_copies_without_training_state_and_loads(home, tmp_path):
    from nucseg.models.registry import resolve_model

    fake_version(home / "models" / "v1")
    dest = versions.export_version("v1", tmp_path / "out" / "v1-copy")
    assert resolve_model(dest).folder == dest.resolve()
    assert not (dest / "checkpoints").exists()
    with pytest.raises(StoreError, match="never overwrite"):
        versions.export_version("v1", dest)


def test_discard_training_state_only_on_finished_models(home):
    folder = fake_version(home / "models" / "v1")
    versions.discard_training_state(folder)
    assert not (folder / "checkpoints").exists() and (folder / "model.safetensors").is_file()
    run = home / "models" / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(StoreError, match="resume"):
        versions.discard_training_state(run)


def test_versions_token_changes_when_versions_appear_from_any_process_and_when_kept_renamed_deleted(home):
    """The segment widget's model list must follow versions made elsewhere (e.g. `nucseg finetune` in a
    terminal), where the in-process `versions_changed` signal cannot reach: it polls this token."""
    import os

    seen = [versions.versions_token()]
    fake_version(home / "models" / "a")  # written by "another process": no signal here
    seen.append(versions.versions_token())
    run = versions.new_version_dir("nucseg-default")  # an unfinished run is not a version
    (run / "finetune_config.json").write_text("{}")
    seen.append(versions.versions_token())
    candidate = fake_version(run)
    os.replace(candidate / "config.json", candidate / "candidate.json")  # finished, waiting for a decision
    assert versions.is_candidate(run) and versions.versions_token() == seen[-1]
    emitted = []

    def count():
        emitted.append(1)

    versions.versions_changed.connect(count)
    try:
        versions.register_candidate(run)
        seen.append(versions.versions_token())
        versions.rename("a", "b")
        seen.append(versions.versions_token())
        versions.delete("b", confirm=True)
        seen.append(versions.versions_token())
    finally:
        versions.versions_changed.disconnect(count)
    assert seen[1] != seen[0] and seen[2] == seen[1]
    assert len(set(seen[2:])) == 4 and len(emitted) == 3
    assert [name for name, _ in seen[-1]] == [run.name]
