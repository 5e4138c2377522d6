"""Local learners: one layer (or head) with its own optimizer; one call is one local update.

The same learners run inside the single-process trainer and inside a ROS server node, so
the distributed modes train exactly what the reference trains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from dff_ros.ff.layers import length_normalize
from dff_ros.ff.objectives import class_goodness, ff_loss, goodness, symmetric_ff_loss
from dff_ros.ff.overlay import blank_labels, overlay, overlay_neutral
from dff_ros.ff.schedule import lr_factor


class Scratch:
    """Chapter-sized tensors kept from one chapter to the next and written over.

    A layer-wise chapter makes the same large tensors every time (inputs, each layer's
    outputs, the head's features: about 2 GB for the default model on MNIST). Fresh ones
    cost a page fault per 4 KiB on first touch, and the kernel's page work slows down most
    when another process (a PFF node) runs beside it; written-over ones cost nothing.
    Only for tensors that are dead by the time the same key is asked for again."""

    def __init__(self):
        self._tensors: dict = {}

    def get(self, key, shape, dtype: torch.dtype) -> torch.Tensor:
        shape = torch.Size(shape)
        t = self._tensors.get(key)
        if t is None or t.shape != shape or t.dtype != dtype:
            self._tensors[key] = None   # let the old one go before making the new one
            t = self._tensors[key] = torch.empty(shape, dtype=dtype)
        return t

    def clear(self) -> None:
        self._tensors.clear()


def scratch_tensor(scratch: Scratch | None, key, shape, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype) if scratch is None else scratch.get(key, shape, dtype)


@dataclass
class Overlays:
    """First-layer inputs in factored form: the images with their label pixels zeroed, and the
    negative pass's labels (the positive pass's are the rows' true labels)."""

    blank: torch.Tensor
    neg_labels: torch.Tensor | None
    num_classes: int

    def select(self, index: torch.Tensor | slice) -> "Overlays":
        return Overlays(self.blank[index], None if self.neg_labels is None else self.neg_labels[index],
                        self.num_classes)


PASSES = ("pos", "neg", "neutral")


@dataclass
class Activities:
    """What flows from layer to layer in training.

    pos/neg: activities of the positive and negative passes (FF); neutral: activities of the
    neutral-label pass (softmax head, PON); labels: true labels of the rows; overlays: for the
    first layer's inputs (label overlays of images), the same passes in factored form.
    """

    pos: torch.Tensor | None
    neg: torch.Tensor | None
    neutral: torch.Tensor | None
    labels: torch.Tensor
    overlays: Overlays | None = None

    def select(self, index: torch.Tensor | slice) -> "Activities":
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Activities(pick(self.pos), pick(self.neg), pick(self.neutral), self.labels[index],
                          None if self.overlays is None else self.overlays.select(index))

    @staticmethod
    def concat(parts: list["Activities"], *, scratch: Scratch | None = None) -> "Activities":
        """The rows of ``parts`` one after another (every part has the same passes);
        ``scratch``: written into its tensors under ("concat", name)."""
        def cat(name, ts):
            if ts[0] is None:
                return None
            shape = (sum(len(t) for t in ts), *ts[0].shape[1:])
            return torch.cat(ts, out=scratch_tensor(scratch, ("concat", name), shape, ts[0].dtype))

        first = parts[0]
        overlays = None if first.overlays is None else Overlays(
            cat("blank", [p.overlays.blank for p in parts]), cat("neg_labels", [p.overlays.neg_labels for p in parts]),
            first.overlays.num_classes)
        return Activities(*(cat(n, [getattr(p, n) for p in parts]) for n in PASSES),
                          cat("labels", [p.labels for p in parts]), overlays)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def passes(self) -> list[str]:
        return [n for n in PASSES if getattr(self, n) is not None]

    def neutral_only(self) -> "Activities":
        """Just the neutral pass: all the softmax head needs of the last layer (its positive and
        negative passes would feed nothing)."""
        return Activities(None, None, self.neutral, self.labels, self.overlays)

    def forward(self, layer, passes: tuple[str, ...] = ("pos", "neg")) -> torch.Tensor:
        """``layer`` on the named passes, rows concatenated in that order. Label overlays go
        through the layer's ``forward_overlaid`` when it has one: one matmul for every pass."""
        if self.overlaid(layer):
            o = self.overlays
            labels = {"pos": self.labels, "neg": o.neg_labels, "neutral": None}
            return layer.forward_overlaid(o.blank, [labels[n] for n in passes], o.num_classes)
        xs = [getattr(self, n) for n in passes]
        return layer(xs[0] if len(xs) == 1 else torch.cat(xs))

    def overlaid(self, layer) -> bool:
        """``layer`` computes these passes from the factored overlays (``forward``)."""
        return self.overlays is not None and hasattr(layer, "forward_overlaid")

    @torch.no_grad()
    def map(self, layer, chunk: int = 512, *, scratch: Scratch | None = None, key=None) -> "Activities":
        """``layer`` applied to every pass (``forward``); labels kept. Row chunks small enough
        that each one's intermediates stay in cache, written straight into one output per pass
        (no concatenating copy): a forward pass over a whole chapter then takes little memory
        bandwidth, which another process on the same machine (a PFF node) shares.
        ``scratch``: the outputs are its tensors under (``key``, pass)."""
        rows = len(self)
        # one call for all passes where they share the matmul, else one per pass
        groups = [tuple(self.passes())] if self.overlaid(layer) else [(n,) for n in self.passes()]
        out: dict[str, torch.Tensor] = {}
        for start in range(0, rows, chunk) if rows else [0]:
            part = self.select(slice(start, start + chunk))
            for names in groups:
                y = part.forward(layer, names)
                for name, y_pass in zip(names, y.split(len(part)) if rows else [y] * len(names)):
                    if name not in out:
                        out[name] = scratch_tensor(scratch, (key, name), (rows, *y_pass.shape[1:]), y_pass.dtype)
                    out[name][start:start + len(y_pass)] = y_pass
        return Activities(out.get("pos"), out.get("neg"), out.get("neutral"), self.labels)


def make_inputs(images: torch.Tensor, labels: torch.Tensor, neg_labels: torch.Tensor | None,
                num_classes: int, neutral: bool, *, scratch: Scratch | None = None,
                neg_images: torch.Tensor | None = None) -> Activities:
    """Label-overlaid first-layer inputs: positive, negative (FF) and neutral (heads, PON);
    ``scratch``: written into its tensors under ("inputs", pass). ``neg_images`` (unsupervised
    FF): no label overlay at all; the images are the positive and neutral pass, these the negative."""
    if neg_images is not None:
        return Activities(pos=images, neg=neg_images, neutral=images if neutral else None, labels=labels)

    def out(name):
        return scratch_tensor(scratch, ("inputs", name), images.shape, images.dtype)

    return Activities(
        pos=overlay(images, labels, num_classes, out=out("pos")) if neg_labels is not None else None,
        neg=overlay(images, neg_labels, num_classes, out=out("neg")) if neg_labels is not None else None,
        neutral=overlay_neutral(images, num_classes, out=out("neutral")) if neutral else None,
        labels=labels,
        overlays=Overlays(blank_labels(images, num_classes, out=out("blank")), neg_labels, num_classes),
    )


def make_optimizer(name: str, groups: Iterable[dict]) -> torch.optim.Optimizer:
    groups = list(groups)
    for g in groups:
        g["base_lr"] = g["lr"]
    if name == "adam":
        try:  # the fused kernel is several times cheaper per step on CPU
            return torch.optim.Adam(groups, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(groups)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}")


def _hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Training accuracy of a minibatch (no gradient)."""
    return (logits.detach().argmax(dim=1) == labels).float().mean()


class _Learner:
    optimizer: torch.optim.Optimizer
    passes: tuple[str, ...] = ()   # the passes of Activities it trains on

    def __init__(self, total_epochs: int, cooldown: bool):
        self.total_epochs, self.cooldown = total_epochs, cooldown

    def set_epoch(self, epoch: int) -> None:
        """Apply the lr cooldown for this 1-based global epoch."""
        f = lr_factor(epoch, self.total_epochs, self.cooldown)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * f

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def settle(self, a: Activities, rows: int = 10_000, chunk: int = 500) -> None:
        """After a chapter: recompute a BatchNorm's running statistics over (the first ``rows``
        of) the chapter's inputs with the weights as trained ("precise BN"). The running
        averages lag behind weights that moved with every update, and the next layer's inputs
        and every test are computed with them. Deterministic; nothing to do without a BatchNorm."""
        layer = getattr(self, "layer", None)
        norms = [m for m in layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if layer else []
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None   # a plain average over the batches below
        view = a.select(slice(0, rows))
        with torch.no_grad():
            for start in range(0, len(view), chunk):
                part = view.select(slice(start, start + chunk))
                self._training(layer, lambda: part.forward(layer, self.passes))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum

    def _training(self, module: nn.Module, fn):
        """``fn()`` with ``module`` in training mode (batch statistics for a BatchNorm), then back
        in evaluation mode, where every other pass (next layer's inputs, testing) runs it."""
        module.train()
        try:
            return fn()
        finally:
            module.eval()


class FFLearner(_Learner):
    """An FF layer trained on goodness: high for positive data, low for negative."""
    passes = ("pos", "neg")

    def __init__(self, layer: nn.Module, *, lr: float, threshold: float | None, goodness_kind: str,
                 optimizer: str, total_epochs: int, cooldown: bool, peer_normalization: float = 0.0,
                 loss: str = "threshold"):
        super().__init__(total_epochs, cooldown)
        if loss not in ("threshold", "symmetric"):
            raise ValueError(f"unknown FF loss {loss!r}")
        self.peer_normalization, self.symmetric = peer_normalization, loss == "symmetric"
        self.running_mean: torch.Tensor | None = None
        if threshold is None:  # mean squared activity of 1 (Hinton: theta = number of units)
            threshold = float(layer.out_features) if goodness_kind == "sum" else 1.0
        self.layer, self.threshold, self.goodness_kind = layer, threshold, goodness_kind
        self.optimizer = make_optimizer(optimizer, [{"params": layer.parameters(), "lr": lr}])

    def train_step(self, a: Activities) -> tuple[Activities, dict]:
        n = len(a)
        h = self._training(self.layer, lambda: a.forward(self.layer, ("pos", "neg")))  # one matmul, both passes
        g = goodness(h, self.goodness_kind)
        g_pos, g_neg = g[:n], g[n:]
        loss = (symmetric_ff_loss if self.symmetric else ff_loss)(g_pos, g_neg, self.threshold)
        if self.peer_normalization > 0:
            loss = loss + self.peer_normalization * self._peer_loss(h[:n])
        self._step(loss)
        h = h.detach()
        neutral = None
        if a.neutral is not None:
            with torch.no_grad():
                neutral = a.forward(self.layer, ("neutral",))
        out = Activities(h[:n], h[n:], neutral, a.labels)
        with torch.no_grad():  # share of samples on the right side of the threshold (symmetric: of their negative)
            separated = ((g_pos > g_neg).sum() / float(n) if self.symmetric else
                         ((g_pos > self.threshold).sum() + (g_neg < self.threshold).sum()) / (2.0 * n))
        return out, {"loss": loss.detach(), "accuracy": separated,
                     "g_pos": g_pos.detach().mean(), "g_neg": g_neg.detach().mean()}

    def _peer_loss(self, h_pos: torch.Tensor) -> torch.Tensor:
        """Peer normalisation (loeweX/Forward-Forward): pull every unit's running mean positive
        activity towards the layer average so no unit dies or dominates."""
        mean = h_pos.mean(dim=0)
        prev = self.running_mean if self.running_mean is not None else torch.full_like(mean, 0.5)
        self.running_mean = 0.9 * prev + 0.1 * mean
        loss = (self.running_mean.mean() - self.running_mean).pow(2).mean()
        self.running_mean = self.running_mean.detach()
        return loss


class PONLearner(_Learner):
    """Performance-Optimized Network layer (PFF 4.4): layer + its own softmax head, trained
    jointly by local backprop on the neutral-label pass; no negatives."""
    passes = ("neutral",)

    def __init__(self, layer: nn.Module, head: nn.Linear, *, lr: float, head_lr: float,
                 optimizer: str, total_epochs: int, cooldown: bool):
        super().__init__(total_epochs, cooldown)
        self.layer, self.head = layer, head
        self.optimizer = make_optimizer(optimizer, [{"params": layer.parameters(), "lr": lr},
                                                    {"params": head.parameters(), "lr": head_lr}])

    def train_step(self, a: Activities) -> tuple[Activities, dict]:
        h = self._training(self.layer, lambda: a.forward(self.layer, ("neutral",)))
        logits = self.logits(h)
        loss = F.cross_entropy(logits, a.labels)
        self._step(loss)
        return Activities(None, None, h.detach(), a.labels), {"loss": loss.detach(),
                                                              "accuracy": _hits(logits, a.labels)}

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(length_normalize(h))


class GroupsLearner(PONLearner):
    """Channel-wise competitive layer (CwC): trained by cross-entropy on its class groups'
    goodness (``class_goodness``), on the neutral-label pass; no negatives, no head parameters."""

    def __init__(self, layer: nn.Module, num_classes: int, *, lr: float, optimizer: str, total_epochs: int,
                 cooldown: bool):
        _Learner.__init__(self, total_epochs, cooldown)
        self.layer, self.head, self.num_classes = layer, None, num_classes
        self.optimizer = make_optimizer(optimizer, [{"params": layer.parameters(), "lr": lr}])

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return class_goodness(h, self.num_classes)


class SoftmaxLearner(_Learner):
    """Linear softmax head on features the FF layers produced; no gradient reaches them."""

    def __init__(self, head: nn.Linear, *, lr: float, optimizer: str, total_epochs: int, cooldown: bool):
        super().__init__(total_epochs, cooldown)
        self.head = head
        self.optimizer = make_optimizer(optimizer, [{"params": head.parameters(), "lr": lr}])

    def train_step(self, features: torch.Tensor, labels: torch.Tensor) -> dict:
        logits = self.head(features.detach())
        loss = F.cross_entropy(logits, labels)
        self._step(loss)
        return {"loss": loss.detach(), "accuracy": _hits(logits, labels)}
