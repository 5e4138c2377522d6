"""The master's side of a DFF activation pipeline, independent of the transport: feed
training chunks with bounded in-flight work, train the softmax head on what comes out of
the last layer, run test-set inference and score it.

The transport gives two callables (send a TrainChunk / InferChunk to the first layer) and
puts what the last layer publishes into ``results`` (a queue.Queue).
"""
from __future__ import annotations

import queue
import time
from typing import Callable

import torch
import torch.nn.functional as F

from dff_ros.ff.chapter import chapter_data, head_step, train_chapter
from dff_ros.ff.history import EpochMeans
from dff_ros.ff.learners import Scratch
from dff_ros.ff.network import build_head, make_head_learner
from dff_ros.ff.negatives import NegativeLabels
from dff_ros.ff.schedule import chapters
from dff_ros.parts.state import load_part_state, part_state
from dff_ros.pipeline.chunks import InferChunk, TrainChunk
from dff_ros.pipeline.host import images_to_float
from dff_ros.pipeline.scoring import NegativesScorer, NetworkSnapshots, dff_negatives_lag
from dff_ros.progress import Progress


class PipelineStalled(RuntimeError):
    """Nothing came out of the pipeline for too long (a server died or a message was lost)."""


class ServerLost(RuntimeError):
    """A server hosting layers stopped answering (no heartbeat for ``silent_seconds``)."""

    def __init__(self, server: str, silent_seconds: float):
        super().__init__(f"{server} sent no heartbeat for {silent_seconds:.1f} s")
        self.server, self.silent_seconds = server, silent_seconds


def check_supported(config) -> None:
    t = config.train
    if t.algorithm not in ("ff", "pon", "cwc"):
        raise ValueError(f"{config.source}: train.algorithm: the DFF pipeline runs 'ff', 'pon' or 'cwc' "
                         f"(got {t.algorithm!r})")
    for spec in config.layers:
        if spec.source != spec.index - 1:
            raise ValueError(f"{config.source}: model[{spec.index}].from: the DFF pipeline runs sequential "
                             "models (every layer reads the one before it)")


def _matrix(t: torch.Tensor | None, rows: int, width: int, name: str) -> str | None:
    """Why ``t`` is not a finite float32 [rows, width] matrix (None: it is)."""
    if t is None or t.dtype != torch.float32 or tuple(t.shape) != (rows, width):
        return f"{name} {None if t is None else list(t.shape)}, expected [{rows}, {width}] float32"
    if not bool(torch.isfinite(t).all()):
        return f"{name} not finite"
    return None


# where the last layer's inference results carry each classifier's class scores: goodness summed
# over the layers (pon_all, cwc_all: log-probabilities summed), or the last layer's own (features:
# the softmax head's input, or pon_last's and cwc_last's log-probabilities)
SCORED_IN = {"goodness": "goodness", "softmax": "features", "pon_all": "goodness", "pon_last": "features",
             "cwc_all": "goodness", "cwc_last": "features"}


def result_scores(classifier: str, goodness: torch.Tensor | None, features: torch.Tensor | None,
                  head: torch.nn.Module | None = None) -> torch.Tensor:
    """[N, C] class scores from the last layer's inference results (softmax: the head's
    log-probabilities of the features, computed here)."""
    scores = goodness if SCORED_IN[classifier] == "goodness" else features
    return F.log_softmax(head(scores), dim=1) if classifier == "softmax" else scores


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """Pixels go over the wire as bytes (4x less than float32); x/255 is restored exactly."""
    if images.dtype == torch.uint8:
        return images
    return (images * 255.0).round_().clamp_(0, 255).to(torch.uint8)


class PipelineDriver:
    """The master's side of a DFF pipeline: feeds chunks, trains the softmax head on the results,
    tests."""
    def __init__(self, config, data: dict[str, torch.Tensor], *, send_train: Callable[[TrainChunk], None],
                 send_infer: Callable[[InferChunk], None], results: "queue.Queue", chunk_rows: int = 1000,
                 window: int = 8, stall_seconds: float = 120.0, progress: bool = True,
                 log: Callable[[str], None] = print, health: Callable[[], None] = lambda: None,
                 recover: Callable[[ServerLost], int] | None = None, on_chapter: Callable[[], None] | None = None,
                 progress_listener: Callable[[Progress], None] | None = None,
                 layer_samples: Callable[[], int] | None = None, snapshots: NetworkSnapshots | None = None):
        """``health`` raises ServerLost when a server is gone; ``recover`` then has its layers
        hosted again and returns the first chapter some layer has not trained (without it a
        lost server ends the run). ``on_chapter``: after each chapter the head has trained
        (the master saves ``state()`` there). ``layer_samples``: the rows the layers have
        trained so far, summed (the master reads it off their heartbeats); the progress then
        counts the layers' work too and moves from the first minibatch, not only when results
        reach the head after the pipeline has filled. ``snapshots``: the layers' checkpoints
        that adaptive negatives are scored with (``scoring.scored_versions`` says which)."""
        check_supported(config)
        t = config.train
        self.config, self.t, self.log = config, t, log
        self.send_train, self.send_infer, self.results = send_train, send_infer, results
        self.chunk_rows, self.window, self.stall_seconds = chunk_rows, window, stall_seconds
        self.show_progress = progress
        self.health, self.recover, self.on_chapter = health, recover, on_chapter
        self.progress_listener = progress_listener
        self.layer_samples = layer_samples
        self.progress: Progress | None = None
        self._head_units = 0     # progress units from the head (rows x epochs trained)
        self.attempt = 0        # +1 per recovery; results of older attempts are stale
        self.head_done = 0      # chapters the softmax head has trained
        self.head_stream_done = (0, -1, -1)   # stream: (chapter, epoch, seq) the head trained last
        self.start_chapter = 0  # where fit() starts sending (see restore)
        x, y = data["train_images"], data["train_labels"]
        tx, ty = data["test_images"], data["test_labels"]
        if t.train_subset:
            x, y = x[:t.train_subset], y[:t.train_subset]
        if t.test_subset:
            tx, ty = tx[:t.test_subset], ty[:t.test_subset]
        self.train_x, self.train_y = as_uint8(x), y
        self.test_x, self.test_y = as_uint8(tx), ty
        c = config.num_classes
        # pon and cwc need no negatives (the first layer gets images and labels only); hybrid negatives
        # are images, made per chapter with the chapter's images (chapter_data)
        self.negatives = (NegativeLabels(t.negatives, self.train_y, c, t.seed + 1, lag=dff_negatives_lag(config))
                          if t.algorithm == "ff" and t.overlay else None)
        self.adaptive = self.negatives is not None and t.negatives == "adaptive"
        if self.adaptive and snapshots is None:
            raise ValueError("adaptive negatives need the layers' checkpoints (snapshots)")
        self.snapshots, self.scorer = snapshots, None
        self.scored: dict[int, torch.Tensor] = {}   # adaptive: chapter -> its labels (resent chapters reuse them)
        self.scoring_seconds = 0.0
        self.chapters = chapters(t.epochs, t.splits)   # the plan; looked up per stream result
        self.generator = torch.Generator().manual_seed(t.seed)
        self._epoch_rng: list[torch.Tensor] = []   # stream: generator state before each epoch's draw
        widths = [s.out_features for s in config.layers]
        self.head = build_head(widths, c, t.seed) if "softmax" in t.classifiers else None
        self.head_learner = make_head_learner(self.head, t) if self.head is not None else None
        self.head_history = EpochMeans()                      # per-epoch loss, training accuracy
        self.head_spans: dict[int, list[float]] = {}          # chapter -> [start, end] (time.time())
        self._pending: dict[int, dict[int, TrainChunk]] = {}
        self.head_seconds = 0.0
        self.scratch = Scratch()     # the head's chapter features, written over every chapter
        self.rejected = 0            # results that were not what this run sent (see _rejected)
        self._order: tuple[int, list[torch.Tensor]] | None = None   # stream: (epoch, its batches)
        self._scoring = self.test_y   # the labels evaluate() sends (its results must carry them)

    # ------------------------------------------------------------------ training
    def fit(self) -> dict:
        t, n = self.t, len(self.train_y)
        parts = 1 + (len(self.config.layers) if self.layer_samples is not None else 0)
        self.progress = Progress(t.epochs * n * parts, f"train {self.config.name} (DFF pipeline)",
                                 enabled=self.show_progress, listener=self.progress_listener)
        self._refresh_progress()
        start = time.perf_counter()
        self._in_flight = 0
        next_chapter = self.start_chapter
        # the head's small matmuls share the machine with the servers: a second torch thread
        # would wait for a core they hold (the head trained ~4x slower with 2 threads on 2 cores)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._fit_chapters(next_chapter)
        finally:
            torch.set_num_threads(threads)
        # every chapter is through the last layer and the head: the work is done, though the
        # layers' heartbeats may still be a second behind
        self.progress.update(self.progress.total - self.progress.done)
        seconds = time.perf_counter() - start
        return {"train_seconds": round(seconds, 2), "samples_per_second": round(n * t.epochs / seconds, 1),
                "head_seconds": round(self.head_seconds, 2), "scoring_seconds": round(self.scoring_seconds, 2),
                "head_loss": {e: round(v, 5) for e, v in self.head_history.loss().items()}}

    def _fit_chapters(self, next_chapter: int) -> None:
        t = self.t
        while True:
            try:
                for chapter in self.chapters[next_chapter:]:
                    neg = self._negatives(chapter.index)
                    if t.schedule == "stream":
                        self._stream_chapter(chapter, neg)
                    else:
                        self._send_chapter(chapter, neg)
                    next_chapter = chapter.index + 1
                while self._in_flight:
                    self._take_train_result()
                break
            except ServerLost as lost:
                if self.recover is None:
                    raise
                next_chapter = min(self.recover(lost), self.head_done)
                self.attempt += 1
                self._pending.clear()
                self._in_flight = 0
                self.log(f"resuming from chapter {next_chapter} (attempt {self.attempt})")

    def _negatives(self, chapter: int) -> torch.Tensor | None:
        """Chapter ``chapter``'s negative labels. Adaptive ones are scored once, with the network
        after chapter - lag (taking results meanwhile: the layers finish that chapter while later
        ones flow), and kept: a chapter resent after a recovery trains on the same labels."""
        neg = self.negatives
        if neg is None:
            return None
        if chapter in self.scored:
            return self.scored[chapter]
        after = neg.scored_from(chapter) if self.adaptive else None
        if after is None:
            return neg.for_chapter(chapter)
        deadline = time.monotonic() + self.stall_seconds
        while (network := self.snapshots.take(after + 1, wait=0.0 if self._in_flight else 0.5)) is None:
            if self._in_flight and self._take_train_result(timeout=0.5):
                deadline = time.monotonic() + self.stall_seconds   # the pipeline is moving
            self.health()
            if time.monotonic() > deadline:
                raise PipelineStalled(f"no checkpoint of every layer after chapter {after} for "
                                      f"{self.stall_seconds:.0f} s (adaptive negatives for chapter {chapter})")
        states, stand_ins = network
        if stand_ins:
            self.log(f"adaptive negatives for chapter {chapter}: the checkpoints after chapter {after} of "
                     f"layer(s) {sorted(stand_ins)} were not seen here; scored with those after chapter(s) "
                     f"{[stand_ins[i] - 1 for i in sorted(stand_ins)]} (the run no longer reproduces exactly)")
        start = time.perf_counter()
        if self.scorer is None:
            self.scorer = NegativesScorer(self.config)
        neg.score(after, self.scorer.scores(states, images_to_float(self.train_x)))
        self.scoring_seconds += time.perf_counter() - start
        self.scored[chapter] = neg.for_chapter(chapter)
        return self.scored[chapter]

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """Stream: the sample order of ``epoch`` (1-based), drawn from the one generator in epoch
        order as the reference trainer does; a chapter resent after a recovery (or by a master
        that took the run over) gets the same minibatches again."""
        n = len(self.train_y)
        while len(self._epoch_rng) < epoch:
            self._epoch_rng.append(self.generator.get_state())
            torch.randperm(n, generator=self.generator)
        return torch.randperm(n, generator=torch.Generator().set_state(self._epoch_rng[epoch - 1]))

    def _stream_chapter(self, chapter, neg: torch.Tensor | None) -> None:
        images, neg_images = chapter_data(self.train_x, self.config, chapter.index)
        for epoch in chapter.epochs:
            batches = self._epoch_order(epoch).split(self.t.batch_size)
            for seq, idx in enumerate(batches):
                while self._in_flight >= self.window:
                    self._take_train_result()
                self.send_train(self._chunk(chapter.index, epoch, seq, len(batches), idx, images, neg, neg_images))
                self._in_flight += 1

    def _send_chapter(self, chapter, neg: torch.Tensor | None) -> None:
        # every layer can hold one chapter while the next one arrives: a pipeline of L layers
        # keeps L chapters in flight, one per layer
        rows = torch.arange(len(self.train_y)).split(self.chunk_rows)
        images, neg_images = chapter_data(self.train_x, self.config, chapter.index)
        while self._in_flight >= self.window:
            self._take_train_result()
        for seq, idx in enumerate(rows):
            self.send_train(self._chunk(chapter.index, chapter.epochs[0], seq, len(rows), idx, images, neg, neg_images))
        self._in_flight += 1

    def _chunk(self, chapter: int, epoch: int, seq: int, count: int, idx: torch.Tensor, images: torch.Tensor,
               neg: torch.Tensor | None, neg_images: torch.Tensor | None) -> TrainChunk:
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return TrainChunk(chapter, epoch, seq, count, self.train_y[idx], images=images[idx], neg_labels=pick(neg),
                          neg_images=pick(neg_images), attempt=self.attempt)

    def _advance(self, head_units: int, **info) -> None:
        self._head_units += head_units
        self._refresh_progress(**info)

    def _refresh_progress(self, **info) -> None:
        """Progress = the head's units plus the layers' trained rows (when known), at most once
        per result or per second of waiting."""
        done = self._head_units + (self.layer_samples() if self.layer_samples is not None else 0)
        self.progress.update(max(0, min(done, self.progress.total) - self.progress.done), **info)

    def _next_result(self, kind: type, timeout: float | None = None):
        """The next result of this run (``timeout``: None if none came within that many seconds)."""
        deadline = time.monotonic() + self.stall_seconds
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            self.health()
            if self.progress is not None:
                self._refresh_progress()
            try:
                r = self.results.get(timeout=min(1.0, max(0.0, deadline - time.monotonic()),
                                                 *(() if give_up is None else (max(0.0, give_up - time.monotonic()),))))
            except queue.Empty:
                if give_up is not None and time.monotonic() >= give_up:
                    return None
                if time.monotonic() < deadline:
                    continue
                raise PipelineStalled(f"no output from the last layer for {self.stall_seconds:.0f} s "
                                      "(is every server still running? see /dff/status)") from None
            if isinstance(r, Exception):
                raise r
            if not isinstance(r, kind):
                self.log(f"ignoring a {type(r).__name__} while waiting for a {kind.__name__}")
                continue
            why = self._rejected(r)
            if why is None:
                return r
            self.rejected += 1
            if self.rejected == 1 or self.rejected % 100 == 0:
                self.log(f"dropped a result that is not this run's ({why}); {self.rejected} so far")

    # ------------------------------------------------------------------ results
    def _rejected(self, r) -> str | None:
        """Why ``r`` cannot be the last layer's answer to a chunk this driver sent (None: it can):
        a place in the plan that exists, the labels of the rows sent there, and features and
        scores of the shape and finiteness the head and classifiers read. A result that fails
        would index out of range, train the head on garbage or score the test wrongly."""
        n = len(r.labels) if r.labels is not None else None
        if isinstance(r, TrainChunk):
            if not 0 <= r.chapter < len(self.chapters):
                return f"chapter {r.chapter} of {len(self.chapters)}"
            if self.t.schedule == "stream":
                if r.epoch not in self.chapters[r.chapter].epochs:
                    return f"epoch {r.epoch} is not in chapter {r.chapter}"
                batches = self._batches(r.epoch)
            else:
                batches = torch.arange(len(self.train_y)).split(self.chunk_rows)
            expected = self.train_y
        else:
            batches, expected = torch.arange(len(self._scoring)).split(self.t.eval_batch_size), self._scoring
        if r.count != len(batches) or not 0 <= r.seq < r.count:
            return f"chunk {r.seq} of {r.count}, expected {len(batches)} chunks"
        rows = batches[r.seq]
        if n != len(rows) or r.labels.dtype != torch.int64 or not torch.equal(r.labels, expected[rows]):
            return f"chunk {r.seq}: not the labels of the rows sent"
        if self.head is not None:
            why = _matrix(r.features, n, self.head.in_features, "features")
            if why:
                return why
        if isinstance(r, InferChunk):
            c = self.config.num_classes
            if {"goodness", "pon_all", "cwc_all"} & set(self.t.classifiers):
                why = _matrix(r.goodness, n, c, "goodness")
                if why:
                    return why
            if {"pon_last", "cwc_last"} & set(self.t.classifiers):
                return _matrix(r.features, n, c, "features")
        return None

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        """Stream: the minibatches of ``epoch`` (the rows they hold), for the epoch in progress."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, list(self._epoch_order(epoch).split(self.t.batch_size)))
        return self._order[1]

    def _take_train_result(self, timeout: float | None = None) -> bool:
        """Take one result (False: none came within ``timeout``)."""
        r = self._next_result(TrainChunk, timeout)
        if r is None:
            return False
        self._use_train_result(r)
        return True

    def _use_train_result(self, r: TrainChunk) -> None:
        if r.attempt < self.attempt:
            return   # sent before a recovery: that chapter is sent again
        if self.t.schedule == "stream":
            self._in_flight -= 1
            key = (r.chapter, r.epoch, r.seq)
            if key <= self.head_stream_done:
                return   # replayed after a recovery: the head trained on it already
            self._head_step(r.chapter, r.epoch, r.features, r.labels)
            self.head_stream_done = key
            self._advance(len(r), epoch=r.epoch)
            if self.chapters[r.chapter].ends_at(r.epoch, r.seq, r.count):
                self.head_done = r.chapter + 1
                if self.on_chapter is not None:
                    self.on_chapter()
            return
        got = self._pending.setdefault(r.chapter, {})
        got[r.seq] = r
        if r.chapter >= self.head_done:
            self._advance(len(r) * self.t.chapter_epochs, epoch=r.epoch)
        if len(got) == r.count:
            del self._pending[r.chapter]
            if r.chapter == self.head_done:   # replayed chapters were trained on already
                self._head_chapter(r.chapter, [got[i] for i in range(r.count)])
                self.head_done += 1
                if self.on_chapter is not None:
                    self.on_chapter()
            self._in_flight -= 1

    def state(self) -> dict:
        """What a restarted master needs to go on: the head (with its optimizer) and where the
        run stands."""
        head = part_state(self.head_learner, optimizer=True) if self.head_learner is not None else {}
        small = torch.uint8 if self.config.num_classes <= 256 else torch.int32
        return {"attempt": self.attempt, "head_done": self.head_done, "head": head,
                "head_history": self.head_history.state(),
                "negatives": {j: labels.to(small) for j, labels in self.scored.items()}}

    def restore(self, state: dict, layers_done: int) -> None:
        """Go on from ``state()``: fit() resends from the first chapter that the head or some
        layer (``layers_done``: the fewest chapters a layer has trained) still needs, under a
        new attempt so the old master's chunks still in flight are stale."""
        if self.head_learner is not None:
            load_part_state(self.head_learner, state["head"])
        self.head_done, self.attempt = int(state["head_done"]), int(state["attempt"]) + 1
        self.head_stream_done = (self.head_done, -1, -1)
        self.head_history = EpochMeans()
        self.head_history.load(state.get("head_history", {}))
        self.scored = {int(j): self._checked_negatives(int(j), labels) for j, labels in state.get("negatives", {}).items()}
        self.start_chapter = min(layers_done, self.head_done)

    def _checked_negatives(self, chapter: int, labels: torch.Tensor) -> torch.Tensor:
        """Saved adaptive labels of ``chapter``, as int64, if they fit this training set."""
        c = self.config.num_classes
        if (not torch.is_tensor(labels) or labels.shape != self.train_y.shape or labels.is_floating_point()
                or not 0 <= chapter < len(self.chapters)):
            raise ValueError(f"saved negatives of chapter {chapter}: expected {len(self.train_y)} integer labels")
        labels = labels.long()
        if ((labels < 0) | (labels >= c) | (labels == self.train_y)).any():
            raise ValueError(f"saved negatives of chapter {chapter}: a label out of range or equal to the true one")
        return labels

    def _head_step(self, chapter: int, epoch: int, features, labels) -> None:
        if self.head_learner is None:
            return
        start, began = time.perf_counter(), time.time()
        self.head_learner.set_epoch(epoch)
        metrics = self.head_learner.train_step(features, labels)
        self.head_history.add(epoch, float(metrics["loss"]), float(metrics["accuracy"]))
        self.head_seconds += time.perf_counter() - start
        span = self.head_spans.setdefault(chapter, [began, began])
        span[1] = time.time()

    def _head_chapter(self, chapter: int, parts: list[TrainChunk]) -> None:
        if self.head_learner is None:
            return
        first = parts[0].features
        feats = torch.cat([p.features for p in parts],
                          out=self.scratch.get("features", (sum(len(p) for p in parts), *first.shape[1:]), first.dtype))
        labels = torch.cat([p.labels for p in parts])
        start, began = time.perf_counter(), time.time()
        train_chapter(self.head_learner, head_step(self.head_learner, feats, labels), len(labels),
                      self.chapters[chapter], seed=self.t.seed,
                      part=len(self.config.layers), batch_size=self.t.batch_size, history=self.head_history)
        self.head_seconds += time.perf_counter() - start
        self.head_spans[chapter] = [began, time.time()]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def evaluate(self, images: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> dict:
        images = self.test_x if images is None else as_uint8(images)
        labels = self.test_y if labels is None else labels
        self._scoring = labels
        rows = torch.arange(len(labels)).split(self.t.eval_batch_size)
        got: dict[int, InferChunk] = {}
        sent = 0
        start = time.perf_counter()
        for seq, idx in enumerate(rows):
            while sent - len(got) >= self.window:
                r = self._next_result(InferChunk)
                got[r.seq] = r
            self.send_infer(InferChunk(seq, len(rows), labels[idx], images=images[idx]))
            sent += 1
        while len(got) < len(rows):
            r = self._next_result(InferChunk)
            got[r.seq] = r
        parts = [got[i] for i in range(len(rows))]
        fields = {f: torch.cat([getattr(p, f) for p in parts]) for f in {SCORED_IN[c] for c in self.t.classifiers}}
        acc = {}
        for name in self.t.classifiers:
            pred = result_scores(name, fields.get("goodness"), fields.get("features"), self.head).argmax(dim=1)
            acc[name] = round(float((pred == labels).float().mean()), 5)
        return {"accuracy": acc, "eval_seconds": round(time.perf_counter() - start, 2)}
