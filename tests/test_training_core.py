"""Targets, augmentations and losses of the training code (fast, no network training)."""

import numpy as np
import pytest
import torch

from nucseg.training.augment import color_jitter, flip_rotate, stain_jitter
from nucseg.training.dataset import PatchSampler, TrainingPair, sample_patch, split_pairs
from nucseg.training.losses import focal_loss, nucseg_loss, soft_jaccard_loss
from nucseg.training.targets import instance_targets


def two_touching_squares():
    labels = np.zeros((20, 30), np.uint32)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2  # shares a border with 1
    return labels


def test_targets_part_touching_nuclei_and_peak_at_centres():
    t = instance_targets(two_touching_squares())
    fg, contour, dist = t
    assert fg.sum() == 200
    assert contour[5:15, 14].all() and contour[5:15, 15].all()  # a 2-px line between the two nuclei
    assert dist.max() == pytest.approx(1.0)
    assert dist[contour > 0].max() < 0.5  # borders are low, centres high
    assert dist[9:11, 9:11].min() == pytest.approx(1.0, abs=0.25)
    assert (t[:, fg == 0] == 0).all()


def test_flip_rotate_moves_image_and_labels_together():
    rng = np.random.default_rng(0)
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    labels = image[..., 0].astype(np.uint32)
    for _ in range(8):
        a, b = flip_rotate(rng, image, labels)
        assert np.array_equal(a[..., 0], b)


def test_colour_augmentations_keep_shape_and_change_colour_mildly():
    rng = np.random.default_rng(1)
    image = np.random.default_rng(2).integers(30, 230, (32, 32, 3), dtype=np.uint8)
    for fn in (stain_jitter, color_jitter):
        out = fn(rng, image)
        assert out.shape == image.shape and out.dtype == np.uint8
        diff = np.abs(out.astype(int) - image).mean()
        assert 0 < diff < 40


def test_patches_from_images_smaller_than_a_patch():
    labels = two_touching_squares()
    image = np.full((*labels.shape, 3), 200, np.uint8)
    image[labels > 0] = 80
    pair = TrainingPair(image, labels, "tiny")
    img, tgt = sample_patch(np.random.default_rng(0), pair, 64, ("flips", "rot90", "stain", "scale"))
    assert img.shape == (64, 64, 3) and tgt.shape == (4, 64, 64) and (tgt[3] == 1).all()
    dark = img.mean(axis=2) < 140
    assert (tgt[0] > 0).sum() > 0 and np.mean(dark == (tgt[0] > 0)) > 0.9  # targets follow the pixels


def test_sampler_mixes_original_data():
    a = TrainingPair(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint32), "a")
    b = TrainingPair(np.full((64, 64, 3), 255, np.uint8), np.zeros((64, 64), np.uint32), "b")
    images, _ = PatchSampler([a], 32, (), extra=([b], 0.5)).sample_batch(np.random.default_rng(0), 4)
    assert sorted(int(i.mean()) for i in images) == [0, 0, 255, 255]


def test_split_is_reproducible_and_keeps_both_sides():
    pairs = [TrainingPair(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint32), str(i)) for i in range(5)]
    t1, v1 = split_pairs(pairs, 0.2, seed=3)
    t2, v2 = split_pairs(pairs, 0.2, seed=3)
    assert [p.name for p in v1] == [p.name for p in v2] and len(v1) == 1 and len(t1) == 4
    assert split_pairs(pairs[:1], 0.5)[1] == []


def test_losses_are_low_for_right_answers_and_high_for_wrong():
    target = torch.from_numpy(instance_targets(two_touching_squares()))[None]
    good = torch.logit(target.clamp(0.02, 0.98))
    bad = -good
    assert nucseg_loss(good, target)["loss"] < nucseg_loss(bad, target)["loss"]
    assert focal_loss(good[:, 0], target[:, 0]) < focal_loss(bad[:, 0], target[:, 0])
    assert soft_jaccard_loss(good[:, 0], target[:, 0]) < 0.1 < soft_jaccard_loss(bad[:, 0], target[:, 0])


def test_checkpoint_records_the_new_epoch_after_a_resume(tmp_path):
    """A resumed run's state carries the old epoch; the next checkpoint must still say the new one."""
    from nucseg.training.checkpoint import load_checkpoint, save_checkpoint

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 2, net, opt, {"history": [], "best_score": 0.5})
    state = load_checkpoint(tmp_path, net, opt, torch.device("cpu"))
    assert state["epoch"] == 2
    save_checkpoint(tmp_path, 3, net, opt, state)
    assert load_checkpoint(tmp_path, net, opt, torch.device("cpu"))["epoch"] == 3
    # the newest two are kept, so a damaged newest one falls back to the one before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002", "epoch-0003", "latest.json"]


def test_rescaled_patches_keep_whole_labels_and_follow_the_pixels():
    from nucseg.training.dataset import _rescale

    labels = two_touching_squares()
    image = np.where(labels[..., None] > 0, 80, 200).astype(np.uint8).repeat(3, axis=2)
    for side in (16, 40):  # shrink and enlarge
        img, lab = _rescale(image[:, :20], labels[:, :20], (side, side))
        assert img.shape == (side, side, 3) and lab.shape == (side, side)
        assert set(np.unique(lab)) <= {0, 1, 2}  # nearest neighbour: no blended label values
        assert np.mean((img[..., 0] < 140) == (lab > 0)) > 0.9


def test_patch_dataset_depends_only_on_seed_and_index():
    import torch.utils.data
    from test_finetune import tiny_pairs

    from nucseg.training.dataset import PatchDataset

    pairs = tiny_pairs()
    augs = ("flips", "rot90", "stain", "color", "scale", "blur")
    a, b = PatchDataset(pairs, 64, augs, seed=7, length=10), PatchDataset(pairs, 64, augs, seed=7, length=10)
    for i in (3, 0, 3):  # any order, any instance
        assert np.array_equal(a[i][0], b[i][0]) and np.array_equal(a[i][1], b[i][1])
    assert not np.array_equal(a[3][0], a[4][0])
    assert not np.array_equal(a[3][0], PatchDataset(pairs, 64, augs, seed=8, length=10)[3][0])
    with pytest.raises(IndexError):
        a[10]
    images, targets = next(iter(torch.utils.data.DataLoader(a, batch_size=4)))
    assert images.shape == (4, 64, 64, 3) and images.dtype == torch.uint8
    assert targets.shape == (4, 4, 64, 64) and targets.dtype == torch.float32


def test_pairs_at_another_resolution_are_resampled_to_the_models():
    from fake_models import blob_image
    from nucseg.training.dataset import TrainingPair, at_model_resolution

    image, labels = blob_image((60, 90), n=6, seed=2)
    pair = TrainingPair(image, labels, "tile")
    twice = at_model_resolution(pair, 0.5, 0.25)  # a 20x tile for a 40x model: nuclei twice as many pixels across
    assert twice.image.shape == (120, 180, 3) and twice.labels.shape == (120, 180) and twice.name == "tile"
    assert set(np.unique(twice.labels)) == set(np.unique(labels))
    assert np.count_nonzero(twice.labels) == pytest.approx(4 * np.count_nonzero(labels), rel=0.05)
    assert at_model_resolution(pair, 0.125, 0.25).labels.shape == (30, 45)
    assert at_model_resolution(pair, None, 0.25) is pair  # unknown: taken as the model's
    assert at_model_resolution(pair, 0.26, 0.25) is pair  # within inference's tolerance: pixels as they are


def test_pixels_outside_the_reviewed_mask_add_no_loss_and_get_no_gradient():
    """Unreviewed labels (an uncorrected prediction) must not teach the model, whatever they say."""
    from nucseg.config import LOSSES

    labels = two_touching_squares()
    target = torch.from_numpy(instance_targets(labels))[None]
    weight = torch.zeros(1, 1, *labels.shape)
    weight[..., :, : labels.shape[1] // 2] = 1  # the left half was reviewed
    targets = torch.cat([target, weight], dim=1)
    outside = weight[0, 0] == 0
    rng = torch.Generator().manual_seed(0)
    for loss_name in LOSSES:
        base = torch.randn(1, 3, *labels.shape, generator=rng)
        logits = base.clone().requires_grad_(True)
        loss = nucseg_loss(logits, targets, loss_name)["loss"]
        loss.backward()
        assert logits.grad[:, :, outside].abs().max() == 0  # no gradient outside
        assert logits.grad[:, :, ~outside].abs().max() > 0
        # anything outside (other predictions, other "truth") leaves the loss as it is
        changed_logits = base.clone()
        changed_logits[:, :, outside] = torch.randn(int(outside.sum()), generator=rng)
        changed_targets = targets.clone()
        changed_targets[:, :3][:, :, outside] = 1 - changed_targets[:, :3][:, :, outside]
        again = nucseg_loss(changed_logits, changed_targets, loss_name)["loss"]
        assert torch.allclose(loss.detach(), again, atol=1e-6), loss_name
        # and a full weight is the plain loss
        plain = nucseg_loss(base, target, loss_name)["loss"]
        full = nucseg_loss(base, torch.cat([target, torch.ones_like(weight)], dim=1), loss_name)["loss"]
        assert torch.allclose(plain, full, atol=1e-6)


def test_patches_are_drawn_around_reviewed_pixels_and_weigh_only_them():
    from fake_models import blob_image

    image, labels = blob_image((300, 300), n=30, seed=3)
    reviewed = np.zeros(labels.shape, bool)
    reviewed[200:260, 20:90] = True  # one small reviewed rectangle in a large prediction
    pair = TrainingPair(image, labels, "tile", reviewed=reviewed)
    rng = np.random.default_rng(0)
    for _ in range(30):
        _, targets = sample_patch(rng, pair, 64, ("flips", "rot90", "scale"))
        assert targets[3].any()  # every patch holds reviewed pixels: none is wasted on unchecked labels
        assert set(np.unique(targets[3])) <= {0.0, 1.0}
    without = sample_patch(np.random.default_rng(0), TrainingPair(image, labels, "tile"), 64, ())[1]
    assert (without[3] == 1).all()
    # images are picked by reviewed area: a tile with a tiny reviewed corner is drawn less often
    other = TrainingPair(image, labels, "full")
    picks = [PatchSampler._pick(rng, [pair, other]).name for _ in range(400)]
    assert 0.02 < picks.count("tile") / 400 < 0.12  # 4,200 of 94,200 reviewed pixels: 4.5 %


def test_reviewed_masks_follow_resampling_and_validation_scores_only_reviewed_pixels():
    from fake_models import blob_image
    from nucseg.config import PostprocessConfig
    from nucseg.training.dataset import at_model_resolution
    from nucseg.training.validation import score_probabilities

    image, labels = blob_image((64, 96), n=6, seed=5)
    reviewed = np.zeros(labels.shape, bool)
    reviewed[:, :48] = True
    pair = TrainingPair(image, labels, "tile", reviewed=reviewed)
    assert at_model_resolution(pair, 0.5, 0.25).reviewed[:, :96].all()
    assert not at_model_resolution(pair, 0.5, 0.25).reviewed[:, 96:].any()
    prob = instance_targets(labels)  # a perfect prediction...
    wrong = prob.copy()
    wrong[:, :, 48:] = 1 - wrong[:, :, 48:]  # ...wrong only where nobody reviewed the labels
    post = PostprocessConfig()
    perfect = score_probabilities([prob], [pair], post)
    assert score_probabilities([wrong], [pair], post) == pytest.approx(perfect)
    assert score_probabilities([wrong], [TrainingPair(image, labels, "tile")], post)["val_iou"] < 0.8
    with pytest.raises(Exception, match="no pixel is marked"):
        TrainingPair(image, labels, "tile", reviewed=np.zeros_like(reviewed))
