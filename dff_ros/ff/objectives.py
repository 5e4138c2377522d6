"""Goodness, the FF loss (Hinton 2022) and class-group goodness (CwC, Papachristodoulou et al. 2024)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def goodness(h: torch.Tensor, kind: str = "sum") -> torch.Tensor:
    """Per-row (per-sample) goodness: sum or mean of squared activities."""
    sq = h.pow(2) if h.dim() == 2 else h.pow(2).flatten(1)
    return sq.mean(dim=1) if kind == "mean" else sq.sum(dim=1)


def ff_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, threshold: float) -> torch.Tensor:
    """softplus(theta - g_pos) + softplus(g_neg - theta), averaged over the batch.

    Pushes positive goodness above theta and negative goodness below it.
    """
    return (F.softplus(threshold - g_pos) + F.softplus(g_neg - threshold)).mean()


def symmetric_ff_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, threshold: float, a: float = 4.0) -> torch.Tensor:
    """softplus(-a (g_pos - g_neg) / theta), averaged over the batch (Trifecta's symmetric loss,
    with theta scaling sum goodness as mean goodness is scaled): each positive sample's goodness
    is pushed above its negative's, with no fixed level either has to reach."""
    return F.softplus(-a * (g_pos - g_neg) / threshold).mean()


def class_goodness(h: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[N, num_classes]: the mean squared activity of each class's group of channels (units of a
    flat layer): the channels split into ``num_classes`` equal groups in order. These are the
    scores a channel-wise competitive layer is trained on with cross-entropy and classifies
    by, in one pass and without negative data."""
    n, c = h.shape[0], h.shape[1]
    if c % num_classes:
        raise ValueError(f"{c} channels do not split into {num_classes} class groups")
    return h.pow(2).reshape(n, num_classes, -1).mean(dim=2)
