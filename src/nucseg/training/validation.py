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

    losses, ious, f1s, ajis = [], [], [], []
    for prob, pair in zip(probs, pairs):
        mask = pair.reviewed
        target = instance_targets(pair.labels)
        if mask is not None:
            target = np.concatenate([target, mask[None].astype(np.float32)])  # the weight channel
        target = torch.from_numpy(target)[None]
        logits = torch.logit(torch.from_numpy(prob).clamp(1e-4, 1 - 1e-4))[None]
        losses.append(float(nucseg_loss(logits, target, fg_loss)["loss"]))
        pred_fg, true_fg = prob[0] > foreground_cut(prob[0], postprocess), pair.labels > 0
        truth, pred = pair.labels, probabilities_to_instances(prob, postprocess)
        if mask is not None:
            pred_fg, true_fg, truth, pred = pred_fg & mask, true_fg & mask, truth * mask, pred * mask
        inter = np.logical_and(pred_fg, true_fg).sum()
        union = np.logical_or(pred_fg, true_fg).sum()
        total = pred_fg.sum() + true_fg.sum()
        ious.append(inter / union if union else 1.0)
        f1s.append(2 * inter / total if total else 1.0)
        ajis.append(aji(truth, pred))
    return {
        "val_loss": float(np.mean(losses)),
        "val_iou": float(np.mean(ious)),
        "val_f1": float(np.mean(f1s)),
        "val_aji": float(np.mean(ajis)),
    }


def validate(net, spec, pairs, device, postprocess: PostprocessConfig, fg_loss: str = "focal+jaccard"):
    """Predict and score `pairs`; an empty list scores nothing."""
    if not pairs:
        return {}
    with torch.inference_mode():
        probs = predict_pairs(net, spec, pairs, device)
    return score_probabilities(probs, pairs, postprocess, fg_loss)
