"""Negative labels: AdaptiveNEG, RandomNEG, FixedNEG (PFF section 5). Never the true label."""
from __future__ import annotations

from typing import Callable

import torch


def random_wrong_labels(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform over the num_classes-1 wrong labels: shift the true label by 1..C-1."""
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + shift) % num_classes


def hardest_wrong_labels(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The wrong label the network rates best: argmax of scores [N, C] with the true label masked."""
    masked = scores.clone()
    masked[torch.arange(labels.shape[0]), labels] = float("-inf")
    return masked.argmax(dim=1)


class NegativeLabels:
    """Negative label per training sample, refreshed at chapter boundaries as the strategy says.

    adaptive: hardest wrong label under the current network, recomputed per chapter
              (the first chapter uses random ones: an untrained network rates nothing);
    random:   a random wrong label, redrawn per chapter;
    fixed:    a random wrong label drawn once.
    Random draws depend only on (seed, chapter), so every node of a distributed run that
    starts at chapter j draws the labels the sequential run uses there.
    """

    def __init__(self, strategy: str, labels: torch.Tensor, num_classes: int, seed: int):
        if strategy not in ("adaptive", "random", "fixed"):
            raise ValueError(f"unknown negative strategy {strategy!r}")
        self.strategy, self.labels, self.num_classes, self.seed = strategy, labels, num_classes, seed
        self.current: torch.Tensor | None = None

    def for_chapter(self, chapter: int, scores_fn: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """Labels for this chapter; ``scores_fn`` gives [N, C] goodness scores (adaptive only)."""
        if self.strategy == "adaptive" and chapter > 0:
            if scores_fn is None:
                raise ValueError("adaptive negatives need the network's goodness scores")
            self.current = hardest_wrong_labels(scores_fn(), self.labels)
        elif self.current is None or self.strategy != "fixed":
            draw = 0 if self.strategy == "fixed" else chapter
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + draw)
            self.current = random_wrong_labels(self.labels, self.num_classes, generator)
        return self.current
