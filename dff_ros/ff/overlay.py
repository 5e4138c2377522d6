"""Label overlay for supervised FF: the first ``num_classes`` pixels carry the label."""
from __future__ import annotations

import torch


def overlay(images: torch.Tensor, labels: torch.Tensor, num_classes: int = 10, *,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Copy of ``images`` [N, D] with pixels 0..num_classes-1 replaced by one-hot ``labels``
    (into ``out`` when given)."""
    x = blank_labels(images, num_classes, out=out)
    x[torch.arange(x.shape[0]), labels] = 1.0
    return x


def blank_labels(images: torch.Tensor, num_classes: int = 10, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Copy of ``images`` with the label pixels zeroed, what all its overlays share (into ``out``
    when given)."""
    x = images.clone() if out is None else out.copy_(images)
    x[:, :num_classes] = 0.0
    return x


def overlay_neutral(images: torch.Tensor, num_classes: int = 10, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Copy with the label pixels all 1/num_classes: the input of the softmax and PON paths
    (into ``out`` when given)."""
    x = images.clone() if out is None else out.copy_(images)
    x[:, :num_classes] = 1.0 / num_classes
    return x


def overlay_all_labels(images: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """[N*num_classes, D]: every image once with each label; row n*C + c carries label c."""
    n = images.shape[0]
    x = images.repeat_interleave(num_classes, dim=0)
    x[:, :num_classes] = torch.eye(num_classes, dtype=images.dtype).repeat(n, 1)
    return x
