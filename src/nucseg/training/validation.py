"""Scoring a network on whole validation images, the way it will be used: tiled, then post-processed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nucseg.config import ENCODER_STRIDE, PostprocessConfig, TilingConfig
from nucseg.inference.postprocess import foreground_cut, probabilities_to_instances
from nucseg.inference.predict import predict_probabilities
from nucseg.models.registry import ModelSpec
from nucseg.training.dataset import TrainingPair
from nucseg.training.losses import nucseg_loss
from nucseg.training.targets import instance_targets

VALIDATION_TILING = TilingConfig(tile_size=512, overlap=64, batch_size=2)


def tiling_for(shape: Sequence[int], tiling: TilingConfig = VALIDATION_TILING) -> TilingConfig:
    """`tiling`, with the tile shrunk to the image (rounded up to the encoder stride) when the image is smaller.

    Small corrected regions (e.g. 96 x 128) would otherwise be padded to a whole 512 x 512 tile: 20x the pixels.
    """
    side = -(-max(int(shape[0]), int(shape[1])) // ENCODER_STRIDE) * ENCODER_STRIDE
    if side >= tiling.tile_size:
        return tiling
    return TilingConfig(tile_size=side, overlap=min(tiling.overlap, side // 4), batch_size=tiling.batch_size)


def predict_pairs(net, spec: ModelSpec, pairs: Sequence[TrainingPair], device, tiling=VALIDATION_TILING):
    """(C, H, W) probabilities for each pair's image."""
    net.eval()
    return [predict_probabilities(net, p.image, spec, device, tiling_for(p.labels.shape, tiling)) for p in pairs]


def score_probabilities(
    probs: Sequence[np.ndarray],
    pairs: Sequence[TrainingPair],
    postprocess: PostprocessConfig,
    fg_loss: str = "focal+jaccard",
) -> dict[str, float]:
    """Mean loss, pixel IoU and F-score (Dice) of the foreground, and AJI of the instances, over images.

    A pair with a reviewed mask is scored inside it only: its other pixels hold labels nobody checked.
    """
    from nucseg.metrics.matching import aji

    rows = []
    for prob, pair in zip(probs, pairs):
        row = _pixel_scores(prob, pair, postprocess, fg_loss)
        truth, pred = pair.labels, probabilities_to_instances(prob, postprocess)
        if pair.reviewed is not None:
            truth, pred = truth * pair.reviewed, pred * pair.reviewed
        row["val_aji"] = aji(truth, pred)
        rows.append(row)
    return {key: float(np.mean([r[key] for r in rows])) for key in ("val_loss", "val_iou", "val_f1", "val_aji")}


def _pixel_scores(prob: np.ndarray, pair: TrainingPair, postprocess: PostprocessConfig, fg_loss: str
                  ) -> dict[str, float]:
    """Loss, foreground IoU and Dice of one image's probabilities, inside its reviewed mask when it has one."""
    mask = pair.reviewed
    target = instance_targets(pair.labels)
    if mask is not None:
        target = np.concatenate([target, mask[None].astype(np.float32)])  # the weight channel
    target = torch.from_numpy(target)[None]
    logits = torch.logit(torch.from_numpy(prob).clamp(1e-4, 1 - 1e-4))[None]
    loss = float(nucseg_loss(logits, target, fg_loss)["loss"])
    pred_fg, true_fg = prob[0] > foreground_cut(prob[0], postprocess), pair.labels > 0
    if mask is not None:
        pred_fg, true_fg = pred_fg & mask, true_fg & mask
    inter = np.logical_and(pred_fg, true_fg).sum()
    union = np.logical_or(pred_fg, true_fg).sum()
    total = pred_fg.sum() + true_fg.sum()
    return {"val_loss": loss, "val_iou": float(inter / union) if union else 1.0,
            "val_f1": float(2 * inter / total) if total else 1.0}


def validate(net, spec, pairs, device, postprocess: PostprocessConfig, fg_loss: str = "focal+jaccard"):
    """Predict and score `pairs`; an empty list scores nothing."""
    if not pairs:
        return {}
    with torch.inference_mode():
        probs = predict_pairs(net, spec, pairs, device)
    return score_probabilities(probs, pairs, postprocess, fg_loss)


def iter_heldout_scores(net, spec, heldout, device, postprocess: PostprocessConfig, fg_loss: str = "focal+jaccard",
                        reference: Sequence[np.ndarray] | None = None):
    """Score `net` on held-out crops (`nucseg.training.holdout.HeldOut`), yielding ``(done, total)`` after each
    crop; returns ``(scores, instances)``.

    `scores` holds the means of `score_probabilities` (val_loss, val_iou, val_f1), AJI pooled over the crops
    (``val_aji``), the held-out score that decides (``val_score``: AJI with the outlines the person accepted credited
    whole, `nucseg.training.holdout.heldout_parts`) and per tile (``tiles``: one record per correction). With
    `reference` None the network is the base model: its own instances are the reference the accepted outlines
    come from, and `instances` is what to pass as `reference` when scoring the fine-tuned weights.
    """
    from nucseg.training.holdout import Parts, heldout_parts

    pairs, total = heldout.pairs, len(heldout.pairs)
    if not total:
        return {}, []
    net.eval()
    pooled: dict[str, Parts] = {}
    instances, per_crop = [], []
    yield 0, total
    with torch.inference_mode():
        for k, pair in enumerate(pairs):
            prob = predict_probabilities(net, pair.image, spec, device, tiling_for(pair.labels.shape))
            per_crop.append(_pixel_scores(prob, pair, postprocess, fg_loss))
            pred = probabilities_to_instances(prob, postprocess)
            instances.append(pred)
            ref = pred if reference is None else reference[k]
            group = heldout.groups[k]
            pooled[group] = pooled.get(group, Parts()) + heldout_parts(pair.labels, pred, ref, pair.reviewed)
            yield k + 1, total
    everything = sum(pooled.values(), Parts())
    scores = {key: float(np.mean([s[key] for s in per_crop])) for key in ("val_loss", "val_iou", "val_f1")}
    scores.update(val_aji=everything.aji, val_score=everything.score, heldout=heldout.kind, tiles=[
        {"tile": group, "score": p.score, "aji": p.aji, "nuclei": p.nuclei, "accepted": p.accepted, "found": p.found}
        for group, p in pooled.items()])
    return scores, instances
