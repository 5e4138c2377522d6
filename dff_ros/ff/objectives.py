"""Goodness and the FF loss (Hinton 2022)."""
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
