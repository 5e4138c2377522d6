"""Units of work that travel between the master and the hosted layers."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dff_ros.ff.learners import Activities


@dataclass
class TrainChunk:
    """Training rows. From the master: images (uint8) + labels + neg_labels, or neg_images
    (uint8, unsupervised FF's hybrid negatives) instead of neg_labels. From layer k:
    its activities (pos/neg/neutral) and the softmax-head features of layers 1..k."""

    chapter: int
    epoch: int
    seq: int              # position in the epoch (stream) or chapter (chapters)
    count: int            # chunks in that epoch / chapter
    labels: torch.Tensor
    images: torch.Tensor | None = None
    neg_labels: torch.Tensor | None = None
    neg_images: torch.Tensor | None = None
    acts: Activities | None = None
    features: torch.Tensor | None = None
    attempt: int = 0      # the master's resume count: chunks of an older attempt are stale

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class InferChunk:
    """Inference rows: every label overlay's activities (goodness classifier), the neutral
    pass (softmax head) and the goodness accumulated over the layers after the first."""

    seq: int
    count: int
    labels: torch.Tensor | None = None
    images: torch.Tensor | None = None
    candidates: torch.Tensor | None = None   # [B*C, W]
    goodness: torch.Tensor | None = None     # [B, C]
    neutral: torch.Tensor | None = None      # [B, W]
    features: torch.Tensor | None = None     # [B, F]

    def __len__(self) -> int:
        for t in (self.images, self.goodness, self.neutral, self.features, self.labels):
            if t is not None:
                return int(t.shape[0])
        return 0


class ChunkError(ValueError):
    """A chunk that does not fit the layer receiving it (dropped with a log and a counter)."""
