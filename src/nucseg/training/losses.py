"""Losses for the three heads. The foreground loss is selectable; the thesis's focal + Jaccard is the default.

Every term takes an optional per-pixel `weight` (B, H, W): 1 where the labels were reviewed, 0 where they were
not. Pixels of weight 0 add nothing to any term and get no gradient, so an unreviewed part of a correction
(an uncorrected prediction) never teaches the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    p = torch.sigmoid(logits)
    if weight is not None:
        p, target = p * weight, target * weight
    inter = (p * target).sum(dim=(1, 2))
    union = p.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) - inter
    return (1 - (inter + eps) / (union + eps)).mean()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    p = torch.sigmoid(logits)
    if weight is not None:
        p, target = p * weight, target * weight
    inter = (p * target).sum(dim=(1, 2))
    return (1 - (2 * inter + eps) / (p.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + eps)).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    return _weighted_mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"), weight)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = torch.exp(-bce)
    return _weighted_mean((1 - pt) ** gamma * bce, weight)


def foreground_loss(name: str, logits: torch.Tensor, target: torch.Tensor,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    if name == "focal+jaccard":
        # focal is ~10x smaller than BCE at the same error; the factor keeps both terms in play
        return 10.0 * focal_loss(logits, target, weight=weight) + soft_jaccard_loss(logits, target, weight=weight)
    if name == "bce+dice":
        return bce_loss(logits, target, weight) + soft_dice_loss(logits, target, weight=weight)
    if name == "ce":
        return bce_loss(logits, target, weight)
    raise ValueError(f"unknown loss {name!r}")


def nucseg_loss(logits: torch.Tensor, targets: torch.Tensor, fg_loss: str = "focal+jaccard") -> dict[str, torch.Tensor]:
    """Loss terms for (B, 3, H, W) logits against (B, 3 or 4, H, W) targets (foreground, contour, distance and,
    optionally, the reviewed-pixel weight of `nucseg.training.dataset.sample_patch`).

    Returns a dict with the terms and their sum under "loss".
    """
    weight = targets[:, 3] if targets.shape[1] > 3 else None
    fg = foreground_loss(fg_loss, logits[:, 0], targets[:, 0], weight)
    contour = bce_loss(logits[:, 1], targets[:, 1], weight) + soft_dice_loss(logits[:, 1], targets[:, 1],
                                                                              weight=weight)
    # distance is a soft target in [0, 1]: BCE with soft labels keeps its scale close to the other terms
    distance = bce_loss(logits[:, 2], targets[:, 2], weight)
    return {"loss": fg + contour + distance, "foreground": fg, "contour": contour, "distance": distance}
