"""Adaptive negatives in the DFF pipeline: the master scores them.

Chapter j's negative labels are the wrong labels that the network after chapter j - lag rates
best (``dff_ros.ff.negatives``). In DFF mode the layers live on the servers, but each publishes
its state after every chapter anyway (the checkpoint a replacement resumes from), so the master
already receives the network it needs. It rebuilds that network from the checkpoints and scores
the training set itself: scoring adds no bytes to the wire. Scoring on the servers instead would
send C label-overlaid copies of the training set through every layer (C times an epoch's
activations) and the scores back.

The default lag is the layer count for the chapters schedule (layer k trains chapter j while the
last layer is L - 1 - k chapters behind, so the network after chapter j - L is complete just as
layer 0 needs chapter j's labels: the pipeline never waits for scoring) and 1 for the stream
schedule (every layer finishes a chapter within a window of minibatches of the first).
"""
from __future__ import annotations

import threading
import time

import torch

from dff_ros.ff.classifiers import goodness_scores
from dff_ros.ff.network import FFNetwork
from dff_ros.parts.state import load_part_state, part_state


def dff_negatives_lag(config) -> int:
    """The lag adaptive negatives use in a DFF pipeline (``train.negatives_lag``, or the default
    above)."""
    t = config.train
    return t.negatives_lag or (len(config.layers) if t.schedule == "chapters" else 1)


def adaptive(config) -> bool:
    t = config.train
    return t.algorithm == "ff" and t.negatives == "adaptive" and t.overlay


def scored_versions(config) -> set[int]:
    """The checkpoint versions whose network scores some chapter's negatives (version s + 1 is
    the network after chapter s, which scores chapter s + lag)."""
    lag, splits = dff_negatives_lag(config), config.train.splits
    return {s + 1 for s in range(splits) if s + lag < splits} if adaptive(config) else set()


def checkpoint_depth(config) -> int:
    """How many checkpoints per layer its topic keeps: one for recovery, lag + 1 when the master
    scores adaptive negatives from them (a master that takes a run over still finds the
    networks of the chapters it has to score)."""
    return dff_negatives_lag(config) + 1 if adaptive(config) else 1


def layer_shapes(config) -> list[dict[str, tuple]]:
    """Per layer, the tensors (names and shapes) its state holds, optimizer left out."""
    net = FFNetwork.from_config(config)
    learners, _ = net.make_learners(config.train)
    return [{k: tuple(v.shape) for k, v in part_state(learner, optimizer=False).items()} for learner in learners]


def _fits(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple]) -> bool:
    """Every tensor of the layer, of its shape, and nothing else (but the peer-normalisation mean a
    trained FF layer adds)."""
    return (all(k in tensors and tuple(tensors[k].shape) == shape for k, shape in shapes.items())
            and set(tensors) - set(shapes) <= {"running_mean"})


class NetworkSnapshots:
    """Every layer's state after the chapters whose network scores a later chapter's negatives,
    collected from the layers' checkpoints as they arrive (thread-safe: the transport calls
    ``add``, the driver ``take``).

    ``versions``: the checkpoint versions to keep (version v = after chapter v - 1);
    ``shapes``: ``layer_shapes``, to turn away a checkpoint that does not fit its layer (it would
    stop the run when the master scores with it)."""

    def __init__(self, layers: int, versions: set[int], shapes: list[dict[str, tuple]] | None = None):
        self.layers, self.wanted, self.shapes = layers, set(versions), shapes
        self.kept: dict[int, dict[int, dict[str, torch.Tensor]]] = {}   # version -> layer -> tensors
        self.newest: dict[int, tuple[int, dict[str, torch.Tensor]]] = {}  # layer -> (version, tensors)
        self.changed = threading.Condition()

    def add(self, layer: int, version: int, tensors: dict[str, torch.Tensor]) -> bool:
        """Keep it if it is wanted; False: it does not fit layer ``layer`` (dropped)."""
        tensors = {k: v for k, v in tensors.items() if not k.startswith("optim.")}   # scoring needs no moments
        if not 0 <= layer < self.layers or (self.shapes is not None and not _fits(tensors, self.shapes[layer])):
            return False
        with self.changed:
            if version in self.wanted:
                self.kept.setdefault(version, {})[layer] = tensors
            if layer not in self.newest or version >= self.newest[layer][0]:
                self.newest[layer] = (version, tensors)
            self.changed.notify_all()
        return True

    def take(self, version: int, wait: float = 0.0) -> tuple[list[dict[str, torch.Tensor]], dict[int, int]] | None:
        """The network at ``version``: per layer its tensors, and ``{layer: version used}`` for
        layers whose checkpoint of that version went by unseen (a master that took the run over
        after it was replaced on the topic): their oldest later checkpoint stands in. None while
        some layer has not got that far (waits up to ``wait`` seconds for it)."""
        deadline = time.monotonic() + wait
        with self.changed:
            while True:
                got = self.kept.get(version, {})
                missing = [i for i in range(self.layers) if i not in got]
                if all(i in self.newest and self.newest[i][0] > version for i in missing):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)
            stand_ins = {}
            for i in missing:
                later = sorted(v for v, by_layer in self.kept.items() if v > version and i in by_layer)
                stand_ins[i] = later[0] if later else self.newest[i][0]
            states = [got[i] if i in got else (self.kept[stand_ins[i]][i] if stand_ins[i] in self.kept
                                               else self.newest[i][1]) for i in range(self.layers)]
            self.wanted.discard(version)
            self.kept.pop(version, None)
            return states, stand_ins


class NegativesScorer:
    """Scores the training set with a network rebuilt from layer states, as the reference
    trainer scores it with its own (same function, same inputs: the results are its bits)."""

    def __init__(self, config):
        self.config = config
        self.net = FFNetwork.from_config(config)
        self.learners, _ = self.net.make_learners(config.train)

    def scores(self, states: list[dict[str, torch.Tensor]], images: torch.Tensor) -> torch.Tensor:
        """[N, C] goodness of ``images`` (float32 in [0, 1]) with every label overlaid."""
        for learner, tensors in zip(self.learners, states):
            load_part_state(learner, tensors)
        t = self.config.train
        return goodness_scores(self.net, images, t.goodness, t.eval_batch_size, t.negatives_dtype)
