"""The corrections store: atomic writes, no overwrites, provenance, remove / undo, export, clear refusals."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fake_models import blob_image
from nucseg.errors import InvalidInputError, StoreError
from nucseg.training.corrections import CorrectionStore, corrections_changed


@pytest.fixture
def store(tmp_path):
    return CorrectionStore(tmp_path / "corrections")


def provenance(**extra):
    return {"source": "/data/slide.svs", "level": 0, "region": (10, 20, 64, 80), "mpp": 0.25,
            "model": "nucseg-default", **extra}


def test_default_root_follows_nucseg_home(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCSEG_HOME", str(tmp_path / "home"))
    assert CorrectionStore().root == tmp_path / "home" / "corrections"


def test_add_saves_pair_with_provenance_and_hashes(store):
    image, labels = blob_image((64, 80), n=5, seed=1)
    seen = []
    corrections_changed.connect(seen.append)
    try:
        entry = store.add(image, labels, provenance(region=np.array([10, 20, 64, 80])))
    finally:
        corrections_changed.disconnect(seen.append)
    assert seen == [store.root]
    assert entry.n_nuclei == 5 and entry.shape == (64, 80)
    data = json.loads((entry.folder / "entry.json").read_text())
    assert data["provenance"]["region"] == [10, 20, 64, 80] and data["provenance"]["model"] == "nucseg-default"
    assert set(data["sha256"]) == {"image", "labels"} and data["created"]
    img, lab = entry.load()
    assert np.array_equal(img, image) and np.array_equal(lab, labels) and lab.dtype == np.uint32
    pair = store.pairs()[0]
    assert pair.name == entry.id and pair.source == "/data/slide.svs"
    assert store.get(entry.id) == entry and len(store) == 1


def test_ids_are_unique_and_nothing_is_overwritten(store):
    image, labels = blob_image((48, 48), n=3, seed=2)
    entries = [store.add(image, labels, provenance()) for _ in range(5)]
    assert len({e.id for e in entries}) == 5
    assert [e.id for e in store.entries()] == [e.id for e in entries]  # oldest first
    before = {e.id: (e.folder / "labels.tif").read_bytes() for e in entries}
    store.add(*blob_image((48, 48), n=4, seed=3), provenance())
    assert all((store.get(i).folder / "labels.tif").read_bytes() == b for i, b in before.items())


def test_a_failed_write_leaves_no_entry_behind(store, monkeypatch):
    import tifffile

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(StoreError, match="disk full"):
        store.add(*blob_image((48, 48), n=3, seed=2), provenance())
    assert store.entries() == []
    assert [p.name for p in store.root.iterdir()] == ["entries"]  # no temporary folder left


def test_refuses_empty_labels_and_mismatched_shapes(store):
    image, labels = blob_image((48, 48), n=3, seed=2)
    with pytest.raises(InvalidInputError, match="no nucleus"):
        store.add(image, np.zeros_like(labels), provenance())
    with pytest.raises(InvalidInputError, match="differ in size"):
        store.add(image, labels[:40], provenance())
    with pytest.raises(InvalidInputError, match="too small"):
        store.add(image[:8, :8], labels[:8, :8], provenance())
    with pytest.raises(InvalidInputError, match="2-D"):
        store.add(image, np.stack([labels, labels]), provenance())
    assert len(store) == 0


def test_remove_moves_to_trash_and_undo_restores_in_reverse_order(store):
    a = store.add(*blob_image((48, 48), n=3, seed=1), provenance())
    b = store.add(*blob_image((48, 48), n=4, seed=2), provenance())
    store.remove(a.id)
    store.remove(b.id)
    assert store.entries() == []
    assert (store.trash_dir / a.id / "image.png").is_file()  # never deleted
    with pytest.raises(StoreError, match="use undo"):
        store.get(a.id)
    assert store.undo().id == b.id
    assert store.undo().id == a.id
    assert store.undo() is None
    assert {e.id for e in store.entries()} == {a.id, b.id}
    assert len(np.unique(store.pairs([a.id])[0].labels)) - 1 == a.n_nuclei


def test_damaged_files_are_detected(store):
    entry = store.add(*blob_image((48, 48), n=3, seed=1), provenance())
    path = entry.folder / "labels.tif"
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(StoreError, match="sha256"):
        store.pairs()


def test_export_is_a_finetune_ready_folder(store, tmp_path):
    from nucseg.training.dataset import load_pairs

    entries = [store.add(*blob_image((48, 64), n=3, seed=s), provenance()) for s in (1, 2)]
    dest = store.export(tmp_path / "export")
    pairs = load_pairs(dest / "images", dest / "labels")
    assert sorted(p.name for p in pairs) == sorted(e.id for e in entries)
    assert len(json.loads((dest / "corrections.json").read_text())) == 2
    with pytest.raises(StoreError, match="never overwrite"):
        store.export(dest)


def test_pairs_come_at_the_models_resolution_when_asked(store):
    image, labels = blob_image((40, 50), n=3, seed=4)
    store.add(image, labels, provenance(mpp=0.5))  # from a 20x slide
    store.add(image, labels, provenance(mpp=None))  # a tile that did not say
    assert [p.labels.shape for p in store.pairs()] == [(40, 50), (40, 50)]
    assert [p.labels.shape for p in store.pairs(model_mpp=0.25)] == [(80, 100), (40, 50)]
    assert store.entries()[0].mpp == 0.5 and store.entries()[1].mpp is None
