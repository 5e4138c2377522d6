"""Negative labels: AdaptiveNEG, RandomNEG, FixedNEG (PFF section 5), never the true label; and
negative images for unsupervised FF (hybrid images, Hinton 2022 section 3.1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

HYBRID_BLURS = 10   # how often the random mask is blurred: larger regions from each image


def hybrid_images(images: torch.Tensor, shape: tuple[int, int, int], seed: int, chapter: int) -> torch.Tensor:
    """Negative images for unsupervised FF: each image A mixed with another one B of the set as
    A * mask + B * (1 - mask), the mask a random image blurred repeatedly with [1/4, 1/2, 1/4] in
    both directions and thresholded at 0.5 (the DFF paper's CIFAR-10 recipe). Long-range
    correlations are wrong, short-range ones right. Drawn from (seed, chapter) only, so every
    node of a distributed run draws the same ones."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 900_001 + chapter)
    n = len(images)
    c, h, w = shape
    mask = torch.rand(n, 1, h, w, generator=g)
    kernel = torch.tensor([0.25, 0.5, 0.25])
    for _ in range(HYBRID_BLURS):
        mask = F.conv2d(F.pad(mask, (1, 1, 0, 0), mode="replicate"), kernel.view(1, 1, 1, 3))
        mask = F.conv2d(F.pad(mask, (0, 0, 1, 1), mode="replicate"), kernel.view(1, 1, 3, 1))
    mask = (mask > 0.5).to(images.dtype)
    partner = (torch.arange(n) + torch.randint(1, max(n, 2), (n,), generator=g)) % max(n, 1)   # never itself
    a = images.reshape(n, c, h, w)
    return (a * mask + a[partner] * (1 - mask)).reshape(n, -1)


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

    adaptive: hardest wrong label under the network as it was ``lag`` chapters before: the
              labels for chapter j are scored right after chapter j - lag (``score``). lag 1 is
              Hinton's and the sequential PFF's; a distributed node uses the network it holds
              itself (All-Layers: the one it finished N chapters ago), so it waits for no one.
              Chapters before the first scored one use random labels (an untrained network
              rates nothing);
    random:   a random wrong label, redrawn per chapter;
    fixed:    a random wrong label drawn once.
    Random draws depend only on (seed, chapter), so every node of a distributed run that
    starts at chapter j draws the labels the sequential run uses there.
    """

    def __init__(self, strategy: str, labels: torch.Tensor, num_classes: int, seed: int, *, lag: int = 1):
        if strategy not in ("adaptive", "random", "fixed"):
            raise ValueError(f"unknown negative strategy {strategy!r}")
        if lag < 1:
            raise ValueError(f"adaptive negatives lag must be >= 1, got {lag}")
        self.strategy, self.labels, self.num_classes, self.seed, self.lag = strategy, labels, num_classes, seed, lag
        self.current: torch.Tensor | None = None
        self.scored: dict[int, torch.Tensor] = {}    # chapter -> adaptive labels for it

    def scored_from(self, chapter: int) -> int | None:
        """The chapter after which chapter ``chapter``'s labels are scored (None: not scored)."""
        return chapter - self.lag if self.strategy == "adaptive" and chapter >= self.lag else None

    def scores_after(self, chapter: int, splits: int) -> bool:
        """Whether some chapter's labels are scored with the network after ``chapter``."""
        return self.strategy == "adaptive" and chapter + self.lag < splits

    def score(self, after_chapter: int, scores: torch.Tensor) -> int:
        """Adaptive: keep the labels ``scores`` [N, C] (the network after ``after_chapter``)
        give for chapter after_chapter + lag; returns that chapter."""
        target = after_chapter + self.lag
        self.scored[target] = hardest_wrong_labels(scores, self.labels)
        return target

    def for_chapter(self, chapter: int) -> torch.Tensor:
        if self.scored_from(chapter) is not None:
            if chapter not in self.scored:
                raise KeyError(f"adaptive negatives for chapter {chapter} were never scored "
                               f"(after chapter {chapter - self.lag})")
            self.current = self.scored.pop(chapter)
        elif self.current is None or self.strategy != "fixed":
            draw = 0 if self.strategy == "fixed" else chapter
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + draw)
            self.current = random_wrong_labels(self.labels, self.num_classes, generator)
        return self.current
