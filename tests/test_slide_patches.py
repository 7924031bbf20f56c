"""Whole-slide results can be corrected (issue 20, item 4), core part: a region of the zarr labels becomes an
editable patch; accepted edits go back block by block, write-ahead (a crash mid-write is finished by `recover`),
undoably (the previous blocks are kept), new nuclei never reuse an id of the slide, and an erased nucleus leaves no
piece outside the patch; a threshold change keeps accepted patches."""

from __future__ import annotations

import numpy as np
import pytest

from fake_models import blob_image


@pytest.fixture
def result(tmp_path):
    """A slide-sized zarr result (labels in 1024 px chunks, with its stored pyramid), and its labels in memory."""
    import zarr

    from nucseg.inference.result_store import zarr_pyramid

    _, small = blob_image((300, 300), n=60, seed=5, radius=(6, 14))
    labels = np.zeros((2300, 2100), np.uint32)
    for k, (y, x) in enumerate((y, x) for y in range(0, 2300, 300) for x in range(0, 2100, 300)):
        tile = np.rot90(small, k % 4)[: 2300 - y, : 2100 - x]
        labels[y : y + tile.shape[0], x : x + tile.shape[1]] = np.where(tile > 0, tile + k * 1000, 0)
    root = zarr.open_group(str(tmp_path / "slide.zarr"), mode="w-")
    array = root.create_array("labels", shape=labels.shape, chunks=(1024, 1024), dtype="uint32", fill_value=0)
    array[:] = labels
    zarr_pyramid(array, min_size=512)
    return array, labels


def level(array, k):
    import zarr

    return np.asarray(zarr.open_group(array.store, mode="r")["pyramid"][f"labels-{2 ** k}"][:])


def edit(patch):
    """Erase a nucleus on the patch's border, paint a new one with an id used elsewhere in the slide."""
    edited = patch.labels.copy()
    border = np.unique(np.concatenate([edited[0], edited[-1], edited[:, 0], edited[:, -1]]))
    inner = np.setdiff1d(np.unique(edited), border)
    erased = int(inner[1])
    edited[edited == erased] = 0
    edited[5:15, 5:15] = 1  # id 1 belongs to a nucleus far away: the new one must get a new id
    return edited, erased


def test_accept_writes_the_patch_back_block_by_block_and_undo_restores_it(result):
    from nucseg.jobs import slide_patches as sp

    array, original = result
    patch = sp.open_patch(array, (1000, 980, 120, 100))  # across four chunks
    y, x, h, w = patch.box
    assert y <= 1000 and x <= 980 and h >= 120 and w >= 100
    inside = np.unique(original[1000:1120, 980:1080])
    for nucleus in inside[inside > 0]:  # the nuclei the region touches are whole in the patch
        assert (patch.labels == nucleus).sum() == (original == nucleus).sum()
    edited, erased = edit(patch)
    top = int(original.max())
    entry = sp.accept_patch(array, patch, edited)
    assert entry.status == sp.APPLIED and 1 <= entry.blocks <= 4 and entry.new_ids == 1  # changed chunks only
    now = np.asarray(array[:])
    assert not (now == erased).any()
    new_id = now[y + 10, x + 10]
    assert new_id == top + 1 and (now == 1).sum() == (original == 1).sum()  # id 1 elsewhere untouched
    outside = np.ones(original.shape, bool)
    outside[y : y + h, x : x + w] = False
    assert np.array_equal(now[outside], original[outside])
    assert sp.max_id(array) == top + 1
    assert np.array_equal(level(array, 1), now[::2, ::2]) and np.array_equal(level(array, 2), now[::4, ::4])
    undone = sp.undo_patch(array)
    assert undone.status == sp.UNDONE and np.array_equal(np.asarray(array[:]), original)
    assert np.array_equal(level(array, 1), original[::2, ::2])
    assert sp.undo_patch(array) is None  # nothing left to undo; the entry keeps both versions
    assert [e.status for e in sp.patch_entries(array)] == [sp.UNDONE]


def test_an_erased_nucleus_reaching_beyond_the_patch_leaves_no_piece(result):
    from nucseg.jobs import slide_patches as sp

    array, original = result
    patch = sp.open_patch(array, (400, 400, 60, 60), grow=0)  # not grown: border nuclei are cut
    border = np.unique(np.concatenate([patch.labels[0], patch.labels[-1], patch.labels[:, 0], patch.labels[:, -1]]))
    cut = [int(i) for i in border if i and (original == i).sum() > (patch.labels == i).sum()]
    assert cut
    edited = patch.labels.copy()
    edited[edited == cut[0]] = 0
    sp.accept_patch(array, patch, edited)
    assert not (np.asarray(array[:]) == cut[0]).any()


def test_a_crash_mid_write_is_finished_by_recover(result, monkeypatch):
    from nucseg.jobs import slide_patches as sp

    array, original = result
    patch = sp.open_patch(array, (1000, 980, 120, 100))
    edited, _ = edit(patch)
    real = sp._update_pyramid

    def crash(*args):
        raise KeyboardInterrupt  # the process dies after the blocks, before the entry says "applied"

    monkeypatch.setattr(sp, "_update_pyramid", crash)
    with pytest.raises(KeyboardInterrupt):
        sp.accept_patch(array, patch, edited)
    assert [e.status for e in sp.patch_entries(array)] == [sp.WRITING]
    monkeypatch.setattr(sp, "_update_pyramid", real)
    assert sp.recover(array) == 1
    (entry,) = sp.patch_entries(array)
    assert entry.status == sp.APPLIED
    now = np.asarray(array[:])
    y, x, h, w = patch.box
    assert (now[y : y + h, x : x + w] > 0).sum() != (original[y : y + h, x : x + w] > 0).sum()
    assert np.array_equal(level(array, 1), now[::2, ::2])


def test_a_patch_opened_before_another_was_accepted_is_refused(result):
    from nucseg.errors import StoreError
    from nucseg.jobs import slide_patches as sp

    array, _ = result
    first = sp.open_patch(array, (200, 200, 80, 80))
    second = sp.open_patch(array, (220, 220, 80, 80))
    sp.accept_patch(array, first, edit(first)[0])
    with pytest.raises(StoreError, match="changed under this patch"):
        sp.accept_patch(array, second, edit(second)[0])
    assert sp.accept_patch(array, sp.open_patch(array, (1500, 1500, 50, 50)), sp.open_patch(
        array, (1500, 1500, 50, 50)).labels) is None  # nothing edited: nothing written


def test_threshold_change_keeps_accepted_patches(result, tmp_path):
    import zarr

    from nucseg.jobs import slide_patches as sp

    array, original = result
    patch = sp.open_patch(array, (600, 700, 90, 90))
    edited, _ = edit(patch)
    sp.accept_patch(array, patch, edited)
    accepted = np.asarray(array[:])
    group = zarr.open_group(array.store, mode="a")
    fresh = group.create_array("labels-tuned", shape=original.shape, chunks=(1024, 1024), dtype="uint32",
                               fill_value=0)
    fresh[:] = np.where(original % 3 == 0, 0, original)  # other thresholds: a third of the nuclei dropped
    assert sp.replay_patches(array, fresh) == 1
    y, x, h, w = patch.box
    now = np.asarray(fresh[:])
    window = now[y : y + h, x : x + w]
    same = accepted[y : y + h, x : x + w]
    assert np.array_equal(window > 0, same > 0)  # the accepted patch as it was
    pairs = np.unique(np.stack([window[window > 0], same[same > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    assert window[window > 0].min() > original.max()  # its ids clash with no fresh nucleus
    again = group.create_array("labels-again", shape=original.shape, chunks=(1024, 1024), dtype="uint32",
                               fill_value=0)
    again[:] = original
    assert sp.replay_patches(fresh, again) == 1  # a second threshold change, made from the first one's array
    assert np.array_equal(np.asarray(again[y : y + h, x : x + w]) > 0, same > 0)
