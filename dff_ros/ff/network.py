"""An FF network: layers wired by their ``from`` indices, plus optional softmax / PON heads."""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch
from torch import nn

from dff_ros.ff.layers import length_normalize
from dff_ros.ff.learners import FFLearner, GroupsLearner, PONLearner, Scratch, SoftmaxLearner, scratch_tensor

T = TypeVar("T")


def seeded(seed: int, part: int, make: Callable[[], T]) -> T:
    """Build a part (layer ``part``, or the head) from its own seed, so a server hosting only
    layer k initialises it exactly as the single-process network does."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + part)
        return make()


def build_layer(spec, seed: int) -> nn.Module:
    # evaluation mode unless a learner is training it (a BatchNorm then uses its running statistics)
    return seeded(seed, spec.index, spec.build).eval()


def build_head(widths: Sequence[int], num_classes: int, seed: int) -> nn.Linear:
    """Softmax head on layers 1..L-1 (all but the first)."""
    return seeded(seed, 10_000, lambda: nn.Linear(sum(widths[1:]), num_classes))


class FFNetwork(nn.Module):
    """``specs`` are resolved layer specs (``dff_ros.config.LayerSpec``): build(), source, out_features."""

    def __init__(self, specs: Sequence, num_classes: int, algorithm: str = "ff", softmax_head: bool = False,
                 seed: int = 0, overlay: bool = True):
        super().__init__()
        # overlay false (unsupervised FF): the neutral pass is the plain image, no label pixels
        self.num_classes, self.algorithm, self.overlay = num_classes, algorithm, overlay
        self.sources = [s.source for s in specs]
        self.layers = nn.ModuleList([build_layer(s, seed) for s in specs])
        widths = [s.out_features for s in specs]
        self.head = build_head(widths, num_classes, seed) if softmax_head else None
        # PON: a softmax head per layer (cwc's class groups have no parameters)
        self.pon_heads = (nn.ModuleList([build_pon_head(s, num_classes, seed) for s in specs])
                          if algorithm == "pon" else None)

    @classmethod
    def from_config(cls, config) -> "FFNetwork":
        t = config.train
        return cls(config.layers, config.num_classes, t.algorithm,
                   softmax_head=t.algorithm == "ff" and "softmax" in t.classifiers, seed=t.seed, overlay=t.overlay)

    def forward_all(self, x: torch.Tensor | None, first: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Activities of every layer for input ``x`` (or from a given first-layer output)."""
        acts: list[torch.Tensor] = [] if first is None else [first]
        for layer, src in list(zip(self.layers, self.sources))[len(acts):]:
            acts.append(layer(x if src < 0 else acts[src]))
        return acts

    @staticmethod
    @torch.no_grad()
    def head_features(acts: Sequence[torch.Tensor], chunk: int = 512, scratch: Scratch | None = None) -> torch.Tensor:
        """Softmax-head input: normalised activities of all layers but the first, concatenated.
        Row chunks written into one output (``scratch``'s "head" tensor when given): normalising a whole chapter's
        activities at once made three full-size temporaries, and it ran three times slower beside
        another process than alone."""
        acts = [a if a.dim() == 2 else a.flatten(1) for a in acts[1:]]   # N-d activations: flat per sample
        rows = acts[0].shape[0]
        width = sum(a.shape[1] for a in acts)
        out = scratch_tensor(scratch, "head", (rows, width), acts[0].dtype)
        for start in range(0, rows, chunk):
            col = 0
            for a in acts:
                out[start:start + chunk, col:col + a.shape[1]] = length_normalize(a[start:start + chunk])
                col += a.shape[1]
        return out

    def make_learners(self, train) -> tuple[list, SoftmaxLearner | None]:
        """Per-layer learners and the softmax-head learner for a ``TrainConfig``."""
        heads = self.pon_heads if self.pon_heads is not None else [None] * len(self.layers)
        layer_learners = [make_layer_learner(l, train, self.num_classes, h) for l, h in zip(self.layers, heads)]
        head = make_head_learner(self.head, train) if self.head is not None else None
        return layer_learners, head


def _common(train) -> dict:
    return dict(optimizer=train.optimizer, total_epochs=train.epochs, cooldown=train.cooldown)


def build_pon_head(spec, num_classes: int, seed: int) -> nn.Linear:
    """PON: layer ``spec``'s own softmax head, seeded per layer (a server hosting the layer alone
    builds the one the single-process network has)."""
    return seeded(seed, 20_000 + spec.index, lambda: nn.Linear(spec.out_features, num_classes))


def make_layer_learner(layer: nn.Module, train, num_classes: int, pon_head: nn.Linear | None = None):
    """The learner of one layer for ``train.algorithm`` (pon: with its head)."""
    if train.algorithm == "pon":
        return make_pon_learner(layer, pon_head, train)
    if train.algorithm == "cwc":
        return GroupsLearner(layer, num_classes, lr=train.lr, **_common(train))
    return make_ff_learner(layer, train)


def make_ff_learner(layer: nn.Module, train) -> FFLearner:
    return FFLearner(layer, lr=train.lr, threshold=train.threshold, goodness_kind=train.goodness,
                     peer_normalization=train.peer_normalization, loss=train.ff_loss, **_common(train))


def make_pon_learner(layer: nn.Module, head: nn.Linear, train) -> PONLearner:
    return PONLearner(layer, head, lr=train.lr, head_lr=train.head_lr, **_common(train))


def make_head_learner(head: nn.Linear, train) -> SoftmaxLearner:
    return SoftmaxLearner(head, lr=train.head_lr, **_common(train))
