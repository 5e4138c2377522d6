"""One hosted layer of a DFF activation pipeline: trains on the chunks that reach it and
returns the chunks to pass downstream. The server node is a thin ROS adapter around this.

Schedules (same meaning as the reference trainer, so results match it):
  stream:   each chunk is one minibatch: one local update, then its activities go on;
  chapters: a chapter's chunks are collected, the layer trains C epochs on them, then the
            whole chapter goes on, recomputed with the updated layer.

Recovery: after a server is lost the master resends the chapters from the first one some
layer still lacks, under a new ``attempt``; chunks of an older attempt are stale. A layer's
state after each chapter (``checkpoint``) lets a replacement continue (``resume``), and every
layer trains each update once and in order:
  chapters: a chapter it has already trained is only passed on, and a chapter that skips ahead
            of the layer is dropped;
  stream:   a minibatch at or before the last one it trained is only passed on (layers run a
            window of minibatches apart, so a live layer is partway into a chapter when the
            master resends it).
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from dff_ros.cores import CoreShare
from dff_ros.ff.chapter import layer_step, train_chapter
from dff_ros.ff.classifiers import label_candidates
from dff_ros.ff.history import EpochMeans
from dff_ros.ff.layers import length_normalize
from dff_ros.ff.learners import Activities, Scratch, make_inputs
from dff_ros.ff.network import build_layer, build_pon_head, make_layer_learner
from dff_ros.ff.objectives import goodness
from dff_ros.ff.overlay import overlay_neutral
from dff_ros.ff.schedule import chapters
from dff_ros.parts.state import load_part_state, nonfinite, part_state
from dff_ros.parts.versions import Parameters
from dff_ros import weights
from dff_ros.pipeline.chunks import ChunkError, InferChunk, TrainChunk


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels on the wire -> the float32 [0, 1] the reference trainer uses."""
    return images.to(torch.float32).div_(255.0) if images.dtype == torch.uint8 else images.to(torch.float32)


def check_finite(name: str, t: torch.Tensor | None) -> None:
    """A float tensor from the wire with NaN or inf in it would poison the layer (one NaN row
    turns every weight NaN): ChunkError."""
    if t is not None and nonfinite({name: t}):
        raise ChunkError(f"{name} has NaN or infinite values")


class LayerStopped(RuntimeError):
    """The host was stopped mid-chapter (its server shuts down, or the model was deleted)."""


class LayerHost:
    """What a hosted DFF layer does with a chunk: trains on it (chapters or stream), passes its
    activities on, answers inference."""
    def __init__(self, spec, train, num_classes: int, *, last: bool,
                 on_checkpoint: Callable[[Parameters], None] | None = None):
        """``on_checkpoint``: called with ``checkpoint()`` as soon as a chapter is trained,
        before the chapter's outputs are computed (chapters schedule)."""
        if train.algorithm not in ("ff", "pon", "cwc"):
            raise ValueError(f"algorithm {train.algorithm!r} is not served by the DFF pipeline (use ff, pon or cwc)")
        self.spec, self.train_cfg, self.num_classes, self.last = spec, train, num_classes, last
        self.on_checkpoint = on_checkpoint
        self.first = spec.source < 0
        # pon, cwc: trained and scored on its own class scores (a head, or class groups), neutral pass only
        self.scores = train.layer_scores
        self.neutral = "softmax" in train.classifiers or self.scores  # the neutral pass feeds a head, or is all
        self.overlay = train.overlay   # labels overlaid on the images (all but hybrid negative images)
        self.layer = build_layer(spec, train.seed)
        head = build_pon_head(spec, num_classes, train.seed) if train.algorithm == "pon" else None
        self.learner = make_layer_learner(self.layer, train, num_classes, head)
        self._chapters = {c.index: c for c in chapters(train.epochs, train.splits)}
        self._pending: dict[int, dict[int, TrainChunk]] = {}   # chapter -> seq -> chunk
        self.samples = 0
        self.busy_seconds = 0.0
        self.loss_sum, self.loss_count = 0.0, 0
        self.epoch = 0
        self.chapter = 0
        self.chapters_done = 0   # chapters 0..chapters_done-1 are trained
        self.stream_done = (0, -1, -1)  # stream: (chapter, epoch, seq) of the last minibatch trained
        self.attempt = 0         # the newest attempt seen (see note_attempt)
        self.stale = 0           # chunks of an older attempt, or of a chapter out of order
        self.history = EpochMeans()  # per-epoch loss and training accuracy (plots)
        self.timeline: dict[int, list[float]] = {}  # chapter -> [start, end] of its training (time.time())
        self.scratch = Scratch()     # the chapter's concatenated inputs, written over every chapter
        self.stopped = False         # set from another thread: training ends at the next minibatch
        self.cores = CoreShare()     # see use_cores
        self.above_finished: Callable[[], bool] = lambda: False

    def use_cores(self, solo_threads: int, above_finished: Callable[[], bool]) -> None:
        """Chapters schedule, layers sharing a machine's cores: train with ``solo_threads`` torch
        threads while no other layer has work. Nothing is above the first layer but the master's
        feeding, and nothing is above another once ``above_finished()`` (the final chapter's
        input is here); nothing is below the last layer, nor below any layer in its first
        chapter (the layers below wait for it). The layer's numbers stay those of 1 thread on
        this CPU (README, "Results and thread counts")."""
        self.cores, self.above_finished = CoreShare(solo_threads), above_finished

    def _alone(self, chapter: int) -> bool:
        """No other layer of this pipeline has work while this one trains ``chapter``."""
        return (self.first or chapter == len(self._chapters) - 1 or self.above_finished()) and \
            (self.last or chapter == 0)

    def stop(self) -> None:
        self.stopped = True

    # ------------------------------------------------------------------ training
    def note_attempt(self, chunk: TrainChunk) -> None:
        """Called as chunks arrive, before they queue: chunks of older attempts still queued
        are then skipped instead of trained. Only a chunk that fits the layer counts (its values
        are checked later, by ``train``): a malformed one must not make every real chunk stale."""
        self._check_train(chunk, values=False)
        self.attempt = max(self.attempt, chunk.attempt)

    def train(self, chunk: TrainChunk) -> list[TrainChunk]:
        """Process one incoming chunk; return the chunks to publish downstream (maybe none)."""
        self._check_train(chunk)
        if self.stopped:
            raise LayerStopped(f"layer {self.spec.index} stopped")
        self.attempt = max(self.attempt, chunk.attempt)
        if chunk.attempt < self.attempt:
            self.stale += 1
            return []
        start = time.perf_counter()
        try:
            if self.train_cfg.schedule == "stream":
                return [self._train_stream(chunk)]
            return self._collect_chapter(chunk)
        finally:
            self.busy_seconds += time.perf_counter() - start

    def _inputs(self, chunk: TrainChunk) -> Activities:
        if not self.first:
            return chunk.acts
        neg_images = None if self.overlay else images_to_float(chunk.neg_images)
        return make_inputs(images_to_float(chunk.images), chunk.labels, chunk.neg_labels, self.num_classes,
                           self.neutral, neg_images=neg_images)

    def _train_stream(self, chunk: TrainChunk) -> TrainChunk:
        key = (chunk.chapter, chunk.epoch, chunk.seq)
        if key <= self.stream_done:   # trained before a recovery: only pass it on
            return self._downstream(chunk, self._forward(self._inputs(chunk)), chunk.seq, chunk.count)
        if chunk.epoch != self.epoch:
            self.epoch, self.loss_sum, self.loss_count = chunk.epoch, 0.0, 0
            self.learner.set_epoch(chunk.epoch)
        self.chapter = chunk.chapter
        began = time.time()
        out, metrics = self.learner.train_step(self._inputs(chunk))
        self._busy(chunk.chapter, began)
        self.history.add(chunk.epoch, float(metrics["loss"]), float(metrics["accuracy"]))
        self.loss_sum += float(metrics["loss"])
        self.loss_count += 1
        self.samples += len(chunk)
        self.stream_done = key
        if self._chapters[chunk.chapter].ends_at(chunk.epoch, chunk.seq, chunk.count):
            self.chapters_done = chunk.chapter + 1
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.checkpoint())
        return self._downstream(chunk, out, chunk.seq, chunk.count)

    def _collect_chapter(self, chunk: TrainChunk) -> list[TrainChunk]:
        for c in [c for c, got in self._pending.items() if next(iter(got.values())).attempt < chunk.attempt]:
            self.stale += len(self._pending.pop(c))   # a newer attempt resends these chapters
        got = self._pending.setdefault(chunk.chapter, {})
        if chunk.seq in got:
            raise ChunkError(f"chapter {chunk.chapter}: chunk {chunk.seq} arrived twice")
        counts = {p.count for p in got.values()}
        if counts and chunk.count not in counts:   # then seqs 0..count-1 could never be complete
            raise ChunkError(f"chapter {chunk.chapter}: chunk {chunk.seq} says {chunk.count} chunks, the chapter's "
                             f"others {counts.pop()}")
        got[chunk.seq] = chunk
        if len(got) < chunk.count:
            return []
        del self._pending[chunk.chapter]
        parts = [got[i] for i in range(chunk.count)]
        if chunk.chapter > self.chapters_done:   # an older attempt's chapter, ahead of this layer
            self.stale += len(parts)
            return []
        if chunk.chapter < self.chapters_done:   # trained before a recovery: only pass it on
            return [self._downstream(p, self._forward(self._inputs(p)), p.seq, p.count) for p in parts]
        return self._train_chapter(chunk.chapter, parts)

    def _train_chapter(self, chapter: int, parts: list[TrainChunk]) -> list[TrainChunk]:
        t = self.train_cfg
        inputs = [self._inputs(p) for p in parts]
        full = Activities.concat(inputs, scratch=self.scratch)
        self.chapter, self.loss_sum, self.loss_count = chapter, 0.0, 0

        def done(epoch: int, loss: float, rows: int) -> None:
            if self.stopped:
                raise LayerStopped(f"layer {self.spec.index} stopped in chapter {chapter}")
            if epoch != self.epoch:
                self.epoch, self.loss_sum, self.loss_count = epoch, 0.0, 0
            self.loss_sum, self.loss_count, self.samples = self.loss_sum + loss, self.loss_count + 1, self.samples + rows

        batches = 0

        def solo_check(epoch: int, loss: float, rows: int) -> None:
            nonlocal batches
            done(epoch, loss, rows)
            batches += 1
            self.cores.recheck(batches, lambda: self._alone(chapter))   # the layers above may have finished

        began = time.time()
        self.cores.use(self._alone(chapter))
        try:
            train_chapter(self.learner, layer_step(self.learner, full), len(full), self._chapters[chapter],
                          seed=t.seed, part=self.spec.index, batch_size=t.batch_size,
                          on_batch=solo_check if self.cores.solo else done, history=self.history)
            self._busy(chapter, began)
            self.chapters_done = chapter + 1
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.checkpoint())
            return [self._downstream(p, self._forward(a), p.seq, p.count) for p, a in zip(parts, inputs)]
        finally:
            self.cores.release()

    def _forward(self, inputs: Activities) -> Activities:
        """The chunk's activities to pass on. Nothing reads the last layer's positive and
        negative passes (only the head's features go on), so it computes the neutral pass only."""
        return (inputs.neutral_only() if self.last else inputs).map(self.layer)

    def _busy(self, chapter: int, began: float) -> None:
        span = self.timeline.setdefault(chapter, [began, began])
        span[1] = time.time()

    def _downstream(self, chunk: TrainChunk, out: Activities, seq: int, count: int) -> TrainChunk:
        features = self._features(chunk.features, out.neutral)
        if self.last:  # nothing reads the last layer's pos/neg: only the head features go on
            out = None
        return TrainChunk(chunk.chapter, chunk.epoch, seq, count, chunk.labels, acts=out, features=features,
                          attempt=chunk.attempt)

    def _features(self, so_far: torch.Tensor | None, neutral: torch.Tensor | None) -> torch.Tensor | None:
        """Softmax-head features: normalised neutral activities of every layer but the first."""
        if neutral is None or self.spec.index == 0 or "softmax" not in self.train_cfg.classifiers:
            return so_far
        mine = length_normalize(neutral)
        mine = mine if mine.dim() == 2 else mine.flatten(1)   # N-d activations: flat per sample
        return mine if so_far is None else torch.cat([so_far, mine], dim=1)

    def _check_train(self, chunk: TrainChunk, *, values: bool = True) -> None:
        """ChunkError if ``chunk`` does not fit this layer (``values``: also no NaN or inf)."""
        n = len(chunk)
        finite = check_finite if values else (lambda name, t: None)
        if self.first:
            if chunk.images is None:
                raise ChunkError("the first layer needs images")
            if not self.overlay and chunk.neg_images is None:
                raise ChunkError("the first layer needs neg_images (hybrid negatives)")
            if self.overlay and chunk.neg_labels is None and not self.scores:
                raise ChunkError("the first layer needs neg_labels")
            for name, x in (("images", chunk.images), ("neg_images", None if self.overlay else chunk.neg_images)):
                # one flat row per image (an N-d first layer views it as its in_shape)
                if x is not None and tuple(x.shape) != (n, self.spec.in_features):
                    raise ChunkError(f"{name} {list(x.shape)}, expected {[n, self.spec.in_features]} (flat rows of "
                                     f"{list(self.spec.in_shape)} images)")
            labels = [chunk.labels] + ([chunk.neg_labels] if self.overlay and not self.scores else [])
        else:
            a = chunk.acts
            if self.scores:
                if a is None or a.neutral is None:
                    raise ChunkError(f"layer {self.spec.index} needs neutral activities ({self.train_cfg.algorithm})")
            elif a is None or a.pos is None or a.neg is None:
                raise ChunkError(f"layer {self.spec.index} needs pos and neg activities")
            if self.neutral and a.neutral is None:
                raise ChunkError(f"layer {self.spec.index} needs neutral activities (softmax head)")
            for name, t in (("pos", a.pos), ("neg", a.neg), ("neutral", a.neutral)):
                if t is not None and tuple(t.shape) != (n, *self.spec.in_shape):
                    raise ChunkError(f"{name} {list(t.shape)}, expected {[n, *self.spec.in_shape]}")
                finite(name, t)
            labels = [chunk.labels]
        finite("features", chunk.features)
        for lab in labels:
            if lab.dim() != 1 or lab.shape[0] != n or lab.dtype != torch.int64 or \
                    (n and (int(lab.min()) < 0 or int(lab.max()) >= self.num_classes)):
                raise ChunkError(f"labels must be int64 [{n}] in 0..{self.num_classes - 1}")
        if chunk.chapter not in self._chapters:
            raise ChunkError(f"chapter {chunk.chapter} outside 0..{len(self._chapters) - 1}")
        if not 0 <= chunk.seq < chunk.count:
            raise ChunkError(f"seq {chunk.seq} outside 0..{chunk.count - 1}")
        if n == 0:
            raise ChunkError("empty chunk")

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def infer(self, chunk: InferChunk) -> InferChunk:
        start = time.perf_counter()
        try:
            return self._infer(chunk)
        finally:
            self.busy_seconds += time.perf_counter() - start

    def _infer(self, chunk: InferChunk) -> InferChunk:
        c = self.num_classes
        n = len(chunk)
        if n == 0:
            raise ChunkError("empty chunk")
        if self.first:
            if chunk.images is None or tuple(chunk.images.shape[1:]) != (self.spec.in_features,):
                raise ChunkError(f"the first layer needs images {['B', self.spec.in_features]} (flat rows of "
                                 f"{list(self.spec.in_shape)} images)")
            x = images_to_float(chunk.images)
            if self.scores:
                return self._scored(chunk, self.layer(overlay_neutral(x, c)), torch.zeros(n, c))
            # the goodness classifier skips the first layer; without overlays (hybrid) there is none
            candidates = label_candidates(self.layer, x, c) if self.overlay else None
            neutral = self.layer(overlay_neutral(x, c) if self.overlay else x)
            good = torch.zeros(n, c)
        elif self.scores:
            shape = self.spec.in_shape
            if chunk.neutral is None or tuple(chunk.neutral.shape) != (n, *shape):
                raise ChunkError(f"neutral must be {[n, *shape]}")
            if chunk.goodness is None or tuple(chunk.goodness.shape) != (n, c):
                raise ChunkError(f"goodness must be [{n}, {c}] (the class-group scores so far)")
            for name in ("neutral", "goodness", "features"):
                check_finite(name, getattr(chunk, name))
            return self._scored(chunk, self.layer(chunk.neutral), chunk.goodness)
        else:
            shape = self.spec.in_shape
            if self.overlay and (chunk.candidates is None or tuple(chunk.candidates.shape) != (n * c, *shape)):
                raise ChunkError(f"candidates must be {[n * c, *shape]}")
            if chunk.neutral is None or tuple(chunk.neutral.shape) != (n, *shape):
                raise ChunkError(f"neutral must be {[n, *shape]}")
            if chunk.goodness is None or tuple(chunk.goodness.shape) != (n, c):
                raise ChunkError(f"goodness must be [{n}, {c}]")
            for name in ("neutral", "candidates", "goodness", "features"):
                check_finite(name, getattr(chunk, name))
            neutral = self.layer(chunk.neutral)
            candidates, good = None, chunk.goodness
            if self.overlay:
                candidates = self.layer(chunk.candidates)
                good = good + goodness(candidates, self.train_cfg.goodness).view(n, c)
        features = self._features(chunk.features, neutral)
        if self.last:
            return InferChunk(chunk.seq, chunk.count, chunk.labels, goodness=good, features=features)
        return InferChunk(chunk.seq, chunk.count, chunk.labels, candidates=candidates, goodness=good,
                          neutral=neutral, features=features)

    def _scored(self, chunk: InferChunk, neutral: torch.Tensor, so_far: torch.Tensor) -> InferChunk:
        """pon, cwc: this layer's class log-probabilities (its head's, or its class groups'),
        added to those of the layers before it (``goodness``: pon_all, cwc_all) and as
        ``features`` (the last layer's: pon_last, cwc_last)."""
        mine = F.log_softmax(self.learner.logits(neutral), dim=1)
        if self.last:
            return InferChunk(chunk.seq, chunk.count, chunk.labels, goodness=so_far + mine, features=mine)
        return InferChunk(chunk.seq, chunk.count, chunk.labels, goodness=so_far + mine, neutral=neutral, features=mine)

    # ------------------------------------------------------------------ weights
    def state_dict(self) -> dict:
        """What the layer's weights file holds (``dff_ros.weights.layer_state``)."""
        return weights.layer_state(self.learner, self.samples)

    def load_state_dict(self, state: dict) -> None:
        self.samples = weights.load_layer_state(self.learner, state)

    def checkpoint(self) -> Parameters:
        """The layer after its last trained chapter, optimizer included: what a replacement
        host needs to continue."""
        return Parameters(self.spec.index, self.chapters_done, part_state(self.learner, optimizer=True),
                          {"samples": self.samples, **self.history.state()})

    def resume(self, p: Parameters) -> None:
        if p.part != self.spec.index or not 0 <= p.version <= len(self._chapters):
            raise ValueError(f"checkpoint of part {p.part} after {p.version} chapters does not fit layer "
                             f"{self.spec.index} ({len(self._chapters)} chapters)")
        load_part_state(self.learner, p.tensors)
        self.chapters_done = self.chapter = p.version
        self.stream_done = (p.version, -1, -1)
        self.samples = int(p.meta.get("samples", 0))
        self.history = EpochMeans()
        self.history.load(p.meta)

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.loss_count if self.loss_count else float("nan")
