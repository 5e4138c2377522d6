"""An FF network: layers wired by their ``from`` indices, plus optional softmax / PON heads."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dff_ros.ff.layers import length_normalize
from dff_ros.ff.learners import FFLearner, PONLearner, SoftmaxLearner


class FFNetwork(nn.Module):
    """``specs`` are resolved layer specs (``dff_ros.config.LayerSpec``): build(), source, out_features."""

    def __init__(self, specs: Sequence, num_classes: int, algorithm: str = "ff", softmax_head: bool = False):
        super().__init__()
        self.num_classes, self.algorithm = num_classes, algorithm
        self.sources = [s.source for s in specs]
        self.layers = nn.ModuleList([s.build() for s in specs])
        widths = [s.out_features for s in specs]
        self.head = nn.Linear(sum(widths[1:]), num_classes) if softmax_head else None
        self.pon_heads = (nn.ModuleList([nn.Linear(w, num_classes) for w in widths])
                          if algorithm == "pon" else None)

    @classmethod
    def from_config(cls, config) -> "FFNetwork":
        t = config.train
        return cls(config.layers, config.num_classes, t.algorithm,
                   softmax_head=t.algorithm == "ff" and "softmax" in t.classifiers)

    def forward_all(self, x: torch.Tensor | None, first: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Activities of every layer for input ``x`` (or from a given first-layer output)."""
        acts: list[torch.Tensor] = [] if first is None else [first]
        for layer, src in list(zip(self.layers, self.sources))[len(acts):]:
            acts.append(layer(x if src < 0 else acts[src]))
        return acts

    @staticmethod
    def head_features(acts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Softmax-head input: normalised activities of all layers but the first, concatenated."""
        return torch.cat([length_normalize(a) for a in acts[1:]], dim=1)

    def make_learners(self, train) -> tuple[list, SoftmaxLearner | None]:
        """Per-layer learners and the softmax-head learner for a ``TrainConfig``."""
        common = dict(optimizer=train.optimizer, total_epochs=train.epochs, cooldown=train.cooldown)
        if self.algorithm == "pon":
            layer_learners = [PONLearner(l, h, lr=train.lr, head_lr=train.head_lr, **common)
                              for l, h in zip(self.layers, self.pon_heads)]
        else:
            layer_learners = [FFLearner(l, lr=train.lr, threshold=train.threshold,
                                        goodness_kind=train.goodness,
                                        peer_normalization=train.peer_normalization, **common) for l in self.layers]
        head = SoftmaxLearner(self.head, lr=train.head_lr, **common) if self.head is not None else None
        return layer_learners, head
