"""One chapter of one part (a layer or the softmax head): C epochs of minibatch updates on
inputs the layers before it computed (PFF Algorithms 1-2, lines 6-9).

The sequential reference, the DFF chapters host and the PFF workers all train a
(part, chapter) task through ``train_chapter`` with a generator seeded by (seed, part,
chapter), so a task draws the same minibatches wherever it runs and the distributed
schedules reproduce the sequential one.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from dff_ros.data.augment import chapter_images
from dff_ros.ff.history import EpochMeans
from dff_ros.ff.learners import Activities, PONLearner
from dff_ros.ff.negatives import hybrid_images
from dff_ros.ff.schedule import Chapter

Step = Callable[[torch.Tensor], dict]   # minibatch row indices -> metrics ("loss", "accuracy")


def chapter_data(images: torch.Tensor, config, chapter: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A chapter's training images (augmented as the config says) and its negative images
    (hybrid negatives; None when the negatives are labels)."""
    images = chapter_images(images, config, chapter)
    if config.train.negatives != "hybrid":
        return images, None
    return images, hybrid_images(images, config.data.image_shape, config.train.seed, chapter)


def task_generator(seed: int, part: int, chapter: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + part) * 100_003 + chapter)


class LayerStep:
    """One minibatch update of a layer's learner (``step(idx)``), and ``settle()`` once the
    chapter's updates are done (a BatchNorm's statistics recomputed over the chapter's inputs)."""

    def __init__(self, learner, inputs: Activities):
        # FF layers train on the positive/negative passes only (their neutral pass is recomputed
        # once per chapter by whoever needs it); PON layers train on the neutral pass. A layer that
        # reads label overlays in factored form needs no gather of the materialised passes.
        if isinstance(learner, PONLearner):
            view = inputs
        elif inputs.overlaid(learner.layer):
            view = Activities(None, None, None, inputs.labels, inputs.overlays)
        else:
            view = Activities(inputs.pos, inputs.neg, None, inputs.labels)
        self.learner, self.view = learner, view

    def __call__(self, idx: torch.Tensor) -> dict:
        return self.learner.train_step(self.view.select(idx))[1]

    def settle(self) -> None:
        self.learner.settle(self.view)


def layer_step(learner, inputs: Activities) -> LayerStep:
    return LayerStep(learner, inputs)


def head_step(head_learner, features: torch.Tensor, labels: torch.Tensor) -> Step:
    return lambda idx: head_learner.train_step(features[idx], labels[idx])


def train_chapter(learner, step: Step, rows: int, chapter: Chapter, *, seed: int, part: int, batch_size: int,
                  on_batch: Callable[[int, float, int], None] | None = None,
                  history: EpochMeans | None = None) -> float:
    """Train ``learner`` for the chapter's epochs; returns the mean loss of its last epoch.
    ``on_batch(epoch, loss, batch_rows)`` after every update (progress); ``history`` collects
    per-epoch loss and training accuracy."""
    generator = task_generator(seed, part, chapter.index)
    mean = float("nan")
    for epoch in chapter.epochs:
        learner.set_epoch(epoch)
        total, batches = 0.0, 0
        for idx in torch.randperm(rows, generator=generator).split(batch_size):
            metrics = step(idx)
            loss = float(metrics["loss"])
            if history is not None:
                history.add(epoch, loss, float(metrics.get("accuracy", math.nan)))
            total, batches = total + loss, batches + 1
            if on_batch is not None:
                on_batch(epoch, loss, len(idx))
        mean = total / max(batches, 1)
    if hasattr(step, "settle"):
        step.settle()
    return mean
