"""Single-process reference trainer: the N=1 baseline every distributed run is compared with.

Two schedules over E epochs in S chapters (C = E/S epochs each):
  stream:   every minibatch passes through all layers, each layer updating on it and handing
            its activities on (what the DFF activation pipeline does across nodes);
  chapters: layer by layer, each layer trains C epochs on the cached outputs of the layer
            before it, then its outputs are recomputed for the next (PFF Algorithm 2, N=1).
Negative labels are refreshed at chapter boundaries.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from dff_ros.weights import NETWORK_FORMAT as WEIGHTS_FORMAT, load_weights, save_atomic
from dff_ros.ff.chapter import chapter_data, head_step, layer_step, train_chapter
from dff_ros.ff.classifiers import accuracy, goodness_scores
from dff_ros.ff.history import EpochMeans, curves
from dff_ros.ff.learners import Activities, Scratch, make_inputs
from dff_ros.ff.negatives import NegativeLabels
from dff_ros.ff.network import FFNetwork
from dff_ros.ff.schedule import chapters
from dff_ros.progress import Progress



class ReferenceTrainer:
    """The single-process trainer: the whole model on one machine, the result every distributed mode
    must reproduce."""
    def __init__(self, config, data: dict[str, torch.Tensor], *, progress: bool = True,
                 eval_every: int = 0, log: Callable[[str], None] = print):
        """``eval_every`` k > 0: also test after every k chapters (time not counted as training)."""
        t = config.train
        torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)
        self.config, self.t, self.log = config, t, log
        self.show_progress, self.eval_every = progress, eval_every
        self.train_x, self.train_y = data["train_images"], data["train_labels"]
        self.test_x, self.test_y = data["test_images"], data["test_labels"]
        if t.train_subset:
            self.train_x, self.train_y = self.train_x[:t.train_subset], self.train_y[:t.train_subset]
        if t.test_subset:
            self.test_x, self.test_y = self.test_x[:t.test_subset], self.test_y[:t.test_subset]
        self.net = FFNetwork.from_config(config)
        self.learners, self.head_learner = self.net.make_learners(t)
        self.num_classes = config.num_classes
        self.negatives = (NegativeLabels(t.negatives, self.train_y, self.num_classes, t.seed + 1,
                                         lag=t.negatives_lag or 1) if t.algorithm == "ff" and t.overlay else None)
        self.needs_neutral = self.head_learner is not None or t.layer_scores
        self.generator = torch.Generator().manual_seed(t.seed)
        self.scratch = Scratch()   # chapter-sized tensors, written over every chapter
        self.histories = {f"layer_{i}": EpochMeans() for i in range(len(self.learners))}
        if self.head_learner is not None:
            self.histories["head"] = EpochMeans()

    # ------------------------------------------------------------------ training
    def fit(self) -> dict:
        t, n = self.t, len(self.train_y)
        units_per_epoch = n if t.schedule == "stream" else n * (len(self.learners) + (self.head_learner is not None))
        self.progress = Progress(t.epochs * units_per_epoch, f"train {self.config.name}", enabled=self.show_progress)
        train_seconds = neg_seconds = 0.0
        curve = []
        for chapter in chapters(t.epochs, t.splits):
            t0 = time.perf_counter()
            neg = self.negatives.for_chapter(chapter.index) if self.negatives is not None else None
            if t.schedule == "stream":
                self._stream_chapter(chapter, neg)
            else:
                self._layerwise_chapter(chapter, neg)
            t1 = time.perf_counter()
            self._score_negatives(chapter.index)
            neg_seconds += time.perf_counter() - t1
            train_seconds += time.perf_counter() - t0
            if self.eval_every and (chapter.index + 1) % self.eval_every == 0 and chapter.index + 1 < t.splits:
                curve.append({"epoch": chapter.epochs[-1], "train_seconds": round(train_seconds, 1),
                              "accuracy": self.evaluate()})
                self.log(f"epoch {curve[-1]['epoch']}: test accuracy {curve[-1]['accuracy']}")
        self.scratch.clear()
        start = time.perf_counter()
        acc = self.evaluate()
        eval_seconds = time.perf_counter() - start
        curve.append({"epoch": t.epochs, "train_seconds": round(train_seconds, 1), "accuracy": acc})
        return {
            "model": self.config.name,
            "config": self.config.to_dict(),
            "accuracy": acc,
            "train_seconds": round(train_seconds, 2),
            "negatives_seconds": round(neg_seconds, 2),
            "eval_seconds": round(eval_seconds, 2),
            "samples_per_second": round(n * t.epochs / train_seconds, 1),
            "train_samples": n,
            "test_samples": len(self.test_y),
            "threads": torch.get_num_threads(),
            "history": curves(self.histories, t.epochs),
            "curve": curve,
        }

    def _score_negatives(self, chapter: int) -> None:
        """Adaptive: score the negatives a later chapter will use with the network as it is now."""
        neg = self.negatives
        if neg is not None and neg.scores_after(chapter, self.t.splits):
            neg.score(chapter, goodness_scores(self.net, self.train_x, self.t.goodness, self.t.eval_batch_size,
                                                  self.t.negatives_dtype))

    def _set_epoch(self, epoch: int) -> None:
        for learner in [*self.learners, self.head_learner]:
            if learner is not None:
                learner.set_epoch(epoch)

    def _stream_chapter(self, chapter, neg: torch.Tensor | None) -> None:
        t, sources = self.t, self.net.sources
        images, neg_images = chapter_data(self.train_x, self.config, chapter.index)
        for epoch in chapter.epochs:
            self._set_epoch(epoch)
            batches, loss = 0, 0.0
            for idx in torch.randperm(len(self.train_y), generator=self.generator).split(t.batch_size):
                a = make_inputs(images[idx], self.train_y[idx], None if neg is None else neg[idx],
                                self.num_classes, self.needs_neutral,
                                neg_images=None if neg_images is None else neg_images[idx])
                outs: list[Activities] = []
                for i, (learner, src) in enumerate(zip(self.learners, sources)):
                    out, metrics = learner.train_step(a if src < 0 else outs[src])
                    outs.append(out)
                    self.histories[f"layer_{i}"].add(epoch, float(metrics["loss"]), float(metrics["accuracy"]))
                loss += float(metrics["loss"])  # the last layer's, for the progress line
                if self.head_learner is not None:
                    feats = self.net.head_features([o.neutral for o in outs])
                    metrics = self.head_learner.train_step(feats, a.labels)
                    self.histories["head"].add(epoch, float(metrics["loss"]), float(metrics["accuracy"]))
                batches += 1
                self.progress.update(len(idx), epoch=epoch, loss=loss / batches)

    def _layerwise_chapter(self, chapter, neg: torch.Tensor | None) -> None:
        t = self.t
        images, neg_images = chapter_data(self.train_x, self.config, chapter.index)
        acts: dict[int, Activities] = {-1: make_inputs(images, self.train_y, neg, self.num_classes,
                                                       self.needs_neutral, scratch=self.scratch, neg_images=neg_images)}
        last = len(self.learners) - 1
        for i, (learner, src) in enumerate(zip(self.learners, self.net.sources)):
            inputs = acts[src]
            train_chapter(learner, layer_step(learner, inputs), len(inputs), chapter, seed=t.seed, part=i,
                          batch_size=t.batch_size, on_batch=self._on_batch(i), history=self.histories[f"layer_{i}"])
            if i < last:
                acts[i] = inputs.map(learner.layer, scratch=self.scratch, key=i)
            elif self.head_learner is not None:
                acts[i] = inputs.neutral_only().map(learner.layer, scratch=self.scratch, key=i)
        if self.head_learner is not None:
            n = len(self.learners)
            feats = self.net.head_features([acts[i].neutral for i in range(n)], scratch=self.scratch)
            train_chapter(self.head_learner, head_step(self.head_learner, feats, self.train_y), len(feats),
                          chapter, seed=t.seed, part=n, batch_size=t.batch_size, on_batch=self._on_batch("head"),
                          history=self.histories["head"])

    def _on_batch(self, name):
        def done(epoch: int, loss: float, rows: int) -> None:
            self.progress.update(rows, epoch=epoch, layer=name)
        return done

    # ------------------------------------------------------------------ evaluation, weights
    def evaluate(self) -> dict[str, float]:
        return {c: round(accuracy(self.net, self.test_x, self.test_y, c, self.t.goodness,
                                  self.t.eval_batch_size), 5) for c in self.t.classifiers}

    def save(self, path) -> None:
        save_network(self.net, self.config, path)


def save_network(net: FFNetwork, config, path) -> None:
    save_atomic({"format": WEIGHTS_FORMAT, "config": config.to_dict(), "state_dict": net.state_dict()}, path)


def load_network(path) -> tuple[FFNetwork, object]:
    """Rebuild a network saved by ``save_network`` (weights-only load; config re-validated)."""
    from dff_ros.config.schema import parse_model_config

    blob = load_weights(path)
    if not isinstance(blob, dict) or blob.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path}: not a dff_ros network file (expected format {WEIGHTS_FORMAT})")
    config = parse_model_config(blob["config"], f"{path}:config")
    net = FFNetwork.from_config(config)
    net.load_state_dict(blob["state_dict"])
    return net, config
