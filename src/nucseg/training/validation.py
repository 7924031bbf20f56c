"""Scoring a network on whole validation images, the way it will be used: tiled, then post-processed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nucseg.config import PostprocessConfig, TilingConfig
from nucseg.inference.postprocess import probabilities_to_instances
from nucseg.inference.predict_array import predict_probabilities
from nucseg.models.registry import ModelSpec
from nucseg.training.dataset import TrainingPair
from nucseg.training.losses import nucseg_loss
from nucseg.training.targets import instance_targets

VALIDATION_TILING = TilingConfig(tile_size=512, overlap=64, batch_size=2)


def predict_pairs(net, spec: ModelSpec, pairs: Sequence[TrainingPair], device, tiling=VALIDATION_TILING):
    """(C, H, W) probabilities for each pair's image."""
    net.eval()
    return [predict_probabilities(net, p.image, spec, device, tiling) for p in pairs]


def score_probabilities(
    probs: Sequence[np.ndarray],
    pairs: Sequence[TrainingPair],
    postprocess: PostprocessConfig,
    fg_loss: str = "focal+jaccard",
) -> dict[str, float]:
    """Mean loss, pixel IoU and F-score (Dice) of the foreground, and AJI of the instances, over images."""
    from nucseg.metrics.matching import aji

    losses, ious, f1s, ajis = [], [], [], []
    for prob, pair in zip(probs, pairs):
        target = torch.from_numpy(instance_targets(pair.labels))[None]
        logits = torch.logit(torch.from_numpy(prob).clamp(1e-4, 1 - 1e-4))[None]
        losses.append(float(nucseg_loss(logits, target, fg_loss)["loss"]))
        pred_fg, true_fg = prob[0] > postprocess.foreground_threshold, pair.labels > 0
        inter = np.logical_and(pred_fg, true_fg).sum()
        union = np.logical_or(pred_fg, true_fg).sum()
        total = pred_fg.sum() + true_fg.sum()
        ious.append(inter / union if union else 1.0)
        f1s.append(2 * inter / total if total else 1.0)
        ajis.append(aji(pair.labels, probabilities_to_instances(prob, postprocess)))
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
