"""Losses for the three heads. The foreground loss is selectable; the thesis's focal + Jaccard is the default."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2))
    union = p.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) - inter
    return (1 - (inter + eps) / (union + eps)).mean()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2))
    return (1 - (2 * inter + eps) / (p.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + eps)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = torch.exp(-bce)
    return ((1 - pt) ** gamma * bce).mean()


def foreground_loss(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if name == "focal+jaccard":
        # focal is ~10x smaller than BCE at the same error; the factor keeps both terms in play
        return 10.0 * focal_loss(logits, target) + soft_jaccard_loss(logits, target)
    if name == "bce+dice":
        return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)
    if name == "ce":
        return F.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"unknown loss {name!r}")


def nucseg_loss(logits: torch.Tensor, targets: torch.Tensor, fg_loss: str = "focal+jaccard") -> dict[str, torch.Tensor]:
    """Loss terms for (B, 3, H, W) logits against (B, 3, H, W) targets (foreground, contour, distance).

    Returns a dict with the terms and their sum under "loss".
    """
    fg = foreground_loss(fg_loss, logits[:, 0], targets[:, 0])
    contour = F.binary_cross_entropy_with_logits(logits[:, 1], targets[:, 1]) + soft_dice_loss(
        logits[:, 1], targets[:, 1]
    )
    # distance is a soft target in [0, 1]: BCE with soft labels keeps its scale close to the other terms
    distance = F.binary_cross_entropy_with_logits(logits[:, 2], targets[:, 2])
    return {"loss": fg + contour + distance, "foreground": fg, "contour": contour, "distance": distance}
