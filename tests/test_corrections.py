"""The corrections store: atomic writes, no overwrites, provenance, remove / undo, export, clear refusals."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fake_models import blob_image
from nucseg.errors import InvalidInputError, StoreError
from nucseg.training.corrections.store import CorrectionStore, corrections_changed


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
        entry = store.add(image, labels, provenance(region=np.array([10, 20, 64, 80])), reviewed=True)
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
    a = store.add(*blob_image((48, 48), n=3, seed=1), provenance(), reviewed=True)
    b = store.add(*blob_image((48, 48), n=4, seed=2), provenance(), reviewed=True)
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
    entry = store.add(*blob_image((48, 48), n=3, seed=1), provenance(), reviewed=True)
    path = entry.folder / "labels.tif"
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(StoreError, match="sha256"):
        store.pairs()


def test_export_is_a_finetune_ready_folder(store, tmp_path):
    from nucseg.training.dataset import load_pairs

    entries = [store.add(*blob_image((48, 64), n=3, seed=s), provenance(), reviewed=True) for s in (1, 2)]
    dest = store.export(tmp_path / "export")
    pairs = load_pairs(dest / "images", dest / "labels")
    assert sorted(p.name for p in pairs) == sorted(e.id for e in entries)
    assert len(json.loads((dest / "corrections.json").read_text())) == 2
    with pytest.raises(StoreError, match="never overwrite"):
        store.export(dest)


def test_pairs_come_at_the_models_resolution_when_asked(store):
    image, labels = blob_image((40, 50), n=3, seed=4)
    reviewed = np.zeros(labels.shape, bool)
    reviewed[:20] = True
    store.add(image, labels, provenance(mpp=0.5), reviewed=reviewed)  # from a 20x slide
    store.add(image, labels, provenance(mpp=None), reviewed=True)  # a tile that did not say
    assert [p.labels.shape for p in store.pairs()] == [(40, 50), (40, 50)]
    assert [p.labels.shape for p in store.pairs(model_mpp=0.25)] == [(80, 100), (40, 50)]
    assert store.pairs(model_mpp=0.25)[0].reviewed[:40].all() and not store.pairs(model_mpp=0.25)[0].reviewed[40:].any()
    assert store.entries()[0].mpp == 0.5 and store.entries()[1].mpp is None


def test_reviewed_masks_are_kept_beside_each_entry_and_checked(store):
    image, labels = blob_image((64, 80), n=5, seed=1)
    reviewed = np.zeros(labels.shape, bool)
    reviewed[8:40, 10:70] = True
    entry = store.add(image, labels, provenance(), reviewed=reviewed)
    assert entry.reviewed == "mask" and entry.reviewed_fraction == pytest.approx(reviewed.mean())
    assert (entry.folder / "reviewed.png").is_file() and "reviewed" in entry.sha256
    assert np.array_equal(entry.load_reviewed(), reviewed)
    pair = store.pairs()[0]
    assert np.array_equal(pair.reviewed, reviewed)
    whole = store.add(image, labels, provenance(), reviewed=np.ones_like(reviewed))  # all of it: no mask file
    assert whole.reviewed == "all" and not (whole.folder / "reviewed.png").exists()
    assert store.pairs([whole.id])[0].reviewed is None
    with pytest.raises(InvalidInputError, match="reviewed"):
        store.add(image, labels, provenance(), reviewed=np.zeros_like(reviewed))
    with pytest.raises(InvalidInputError, match="differ in size"):
        store.add(image, labels, provenance(), reviewed=reviewed[:10])
    path = entry.folder / "reviewed.png"
    os.chmod(path, 0o644)
    from PIL import Image

    Image.fromarray(np.full(labels.shape, 255, np.uint8)).save(path)  # someone "reviewed" it all by hand
    with pytest.raises(StoreError, match="sha256"):
        store.pairs([entry.id])


def test_an_entry_nobody_marked_as_reviewed_is_not_trained_on_until_the_person_says_so(store):
    """The store used to take a whole unreviewed prediction as training truth."""
    old = store.add(*blob_image((48, 48), n=3, seed=1), provenance())  # as saved before reviewed regions
    kept = store.add(*blob_image((48, 48), n=3, seed=2), provenance(), reviewed=True)
    assert old.reviewed is None and [e.id for e in store.unreviewed()] == [old.id]
    assert [p.name for p in store.pairs()] == [kept.id]
    with pytest.raises(StoreError, match="no reviewed region"):
        store.pairs([old.id])
    entry_json = (old.folder / "entry.json").read_bytes()
    marked = store.mark_reviewed(old.id)
    assert marked.reviewed == "all" and (old.folder / "entry.json").read_bytes() == entry_json  # not rewritten
    assert sorted(p.name for p in store.pairs()) == sorted([old.id, kept.id]) and store.unreviewed() == []
    with pytest.raises(StoreError, match="already records"):
        store.mark_reviewed(old.id)


def test_export_carries_the_reviewed_masks(store, tmp_path):
    image, labels = blob_image((48, 64), n=3, seed=1)
    reviewed = np.zeros(labels.shape, bool)
    reviewed[:, :30] = True
    masked = store.add(image, labels, provenance(), reviewed=reviewed)
    whole = store.add(image, labels, provenance(), reviewed=True)
    unreviewed = store.add(image, labels, provenance())
    dest = store.export(tmp_path / "export")
    from PIL import Image

    assert sorted(p.stem for p in (dest / "images").iterdir()) == sorted([masked.id, whole.id])
    assert np.array_equal(np.asarray(Image.open(dest / "reviewed" / f"{masked.id}.png")) > 127, reviewed)
    assert (np.asarray(Image.open(dest / "reviewed" / f"{whole.id}.png")) == 255).all()
    summary = {e["id"]: e["reviewed"] for e in json.loads((dest / "corrections.json").read_text())}
    assert summary == {masked.id: "mask", whole.id: "all", unreviewed.id: None}
