"""One PFF node: for every chapter in which the plan gives it parts, prepare that chapter's
inputs (label overlays with the chapter's negatives), run them forward through the layers
below, taking those layers' parameters from the store, train its parts for C epochs and put
the new versions in the store (PFF Algorithms 1 and 2).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import torch

from dff_ros.cores import CoreShare
from dff_ros.ff.chapter import chapter_data, head_step, layer_step, train_chapter
from dff_ros.ff.classifiers import goodness_scores
from dff_ros.ff.history import EpochMeans
from dff_ros.ff.learners import Activities, Scratch, make_inputs
from dff_ros.ff.negatives import NegativeLabels
from dff_ros.ff.network import FFNetwork
from dff_ros.ff.schedule import chapters
from dff_ros.parts.names import NEGATIVES, part_names
from dff_ros.pff.plan import PFFPlan
from dff_ros.parts.state import load_part_state, part_state
from dff_ros.parts.versions import ParameterStore, Parameters


class WorkerStopped(RuntimeError):
    """The worker was stopped (its run was deleted or the server shuts down)."""
    pass


def check_pff_supported(config) -> None:
    t = config.train
    if t.schedule != "chapters":
        raise ValueError(f"{config.source}: train.schedule: PFF trains layer by layer per chapter; "
                         f"use schedule: chapters (got {t.schedule!r})")


def network_from_parts(config, parts: dict[int, dict[str, torch.Tensor]]) -> FFNetwork:
    """The trained network from each part's final tensors (what the master evaluates)."""
    net = FFNetwork.from_config(config)
    learners, head = net.make_learners(config.train)
    for part, learner in enumerate([*learners, *([head] if head is not None else [])]):
        if part not in parts:
            raise KeyError(f"no parameters for {part_names(config)[part]}")
        load_part_state(learner, {k: v for k, v in parts[part].items() if not k.startswith("optim.")})
    return net


class PFFWorker:
    """One PFF node's schedule: trains its tasks in order, waiting for the versions they need."""
    def __init__(self, config, images: torch.Tensor, labels: torch.Tensor, plan: PFFPlan, node: int,
                 store: ParameterStore, *, wait_seconds: float = 600.0, solo_threads: int = 0,
                 on_batch: Callable[[int, int, int, float, int], None] | None = None):
        """``images`` float32 [N, D] in [0, 1] (this node's data: the whole set, or its shard);
        ``on_batch(part, chapter, epoch, loss, rows)`` after every update; ``solo_threads``:
        torch threads while no other node has work (nodes sharing a machine: its cores; 0 or
        no more than the process's own count: no change)."""
        check_pff_supported(config)
        t = config.train
        self.config, self.t, self.plan, self.node, self.store = config, t, plan, node, store
        self.wait_seconds, self.on_batch = wait_seconds, on_batch
        self.net = FFNetwork.from_config(config)
        self.learners, self.head_learner = self.net.make_learners(t)
        self.parts = [*self.learners, *([self.head_learner] if self.head_learner is not None else [])]
        if plan.parts != len(self.parts) or plan.num_layers != len(self.learners):
            raise ValueError(f"plan has {plan.parts} parts, the model {len(self.parts)}")
        self.images, self.labels = images, labels
        self.negatives = (NegativeLabels(t.negatives, labels, config.num_classes, t.seed + 1,
                                         lag=plan.negatives_lag or 1) if t.algorithm == "ff" and t.overlay else None)
        if self.negatives is not None and t.negatives == "adaptive" and not plan.negatives_lag:
            raise ValueError("adaptive negatives need a plan with a negatives lag (PFFPlan.for_model)")
        self.needs_neutral = self.head_learner is not None or t.layer_scores
        self.held: dict[int, int] = {}          # part -> version this node's learner holds (0 = init)
        self.timeline: list[dict] = []          # one entry per trained task
        self.idle_seconds = self.busy_seconds = 0.0
        self.chapter = self.part = -1
        self.scoring_meta: dict = {}
        self.scratch = Scratch()                # chapter-sized tensors, written over every chapter
        self.cores = CoreShare(solo_threads)
        self._others_last = plan.others_last_outputs(node, t.splits)
        self._stop = threading.Event()

    def stop(self, why: str) -> None:
        self._stop.set()
        self.store.close(why)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self, start_chapter: int = 0) -> None:
        """Train this node's tasks in order. ``start_chapter`` > 0: this node replaces a lost
        one; its tasks before that chapter were done there, and the versions they produced
        come from the store (so the final versions of parts this node finishes are held here,
        even when the lost node had trained them)."""
        start = time.perf_counter()
        try:
            for chapter in chapters(self.t.epochs, self.t.splits)[start_chapter:]:
                mine = self.plan.parts_for(self.node, chapter.index)
                if mine:
                    self._chapter(chapter, mine)
            final = self.t.splits
            for part in self.plan.parts_for(self.node, final - 1):
                if self.held.get(part, 0) != final:
                    load_part_state(self.parts[part], self._wait(part, final, exact=True).tensors)
                    self.held[part] = final
        finally:
            self.cores.release()
            self.scratch.clear()
            self.busy_seconds = time.perf_counter() - start - self.idle_seconds

    def _alone(self) -> bool:
        """No other node has training left: the versions their last tasks make are here."""
        for part, version in self._others_last.items():
            latest = self.store.latest(part)
            if latest is None or latest.version < version:
                return False
        return True

    def _chapter(self, chapter, mine: list[int]) -> None:
        self.chapter = chapter.index
        last_layer = len(self.learners) - 1
        top = max(mine)
        neg = self._negatives(chapter.index)
        self.cores.use(self._alone())
        images, neg_images = chapter_data(self.images, self.config, chapter.index)
        acts: dict[int, Activities] = {-1: make_inputs(images, self.labels, neg, self.config.num_classes,
                                                       self.needs_neutral, scratch=self.scratch, neg_images=neg_images)}
        used: dict[int, int] = {}               # part -> version its outputs came from
        for i in range(min(top, last_layer) + 1):
            src = self.net.sources[i]
            if i in mine:
                self._train(i, chapter, layer_step(self.learners[i], acts[src]), len(acts[src]), used)
            else:  # a layer below ours: its version for this chapter, or newer
                p = self._wait(i, chapter.index + 1, exact=False)
                load_part_state(self.learners[i], p.tensors)
                used[i] = p.version
            if i < top:  # (i == last_layer: only the head comes after it)
                inputs = acts[src] if i < last_layer else acts[src].neutral_only()
                self.cores.use(self._alone())
                acts[i] = inputs.map(self.learners[i].layer, scratch=self.scratch, key=i)
        if self.head_learner is not None and len(self.learners) in mine:
            self.cores.use(self._alone())
            feats = self.net.head_features([acts[i].neutral for i in range(len(self.learners))], scratch=self.scratch)
            self._train(len(self.learners), chapter, head_step(self.head_learner, feats, self.labels),
                        len(feats), used)
        if (self.negatives is not None and self.negatives.scores_after(chapter.index, self.t.splits)
                and self.plan.negatives_scorer(chapter.index) == self.node):
            self._score_negatives(chapter.index)

    def _negatives(self, chapter: int) -> torch.Tensor | None:
        neg = self.negatives
        if neg is None:
            return None
        if neg.scored_from(chapter) is not None and chapter not in neg.scored:
            if self.plan.negatives_scorer(neg.scored_from(chapter)) == self.node:
                self._score_lost_negatives(chapter)
                return neg.for_chapter(chapter)
            labels = self._wait(NEGATIVES, chapter + 1, exact=True).tensors.get("labels")
            if labels is None or labels.shape != self.labels.shape:
                raise ValueError(f"negative labels for chapter {chapter}: expected {len(self.labels)} labels, got "
                                 f"{None if labels is None else list(labels.shape)}")
            labels = labels.long()
            if ((labels < 0) | (labels >= self.config.num_classes) | (labels == self.labels)).any():
                raise ValueError(f"negative labels for chapter {chapter}: a label out of range or equal to the true one")
            neg.scored[chapter] = labels
        return neg.for_chapter(chapter)

    def _score_lost_negatives(self, chapter: int) -> None:
        """This node replaces a lost one, which scored ``chapter``'s labels with a network that
        went with it (the versions it trained). Score them with the network this chapter starts
        from instead, one chapter fresher: a different choice than the undisturbed run's, so
        the run no longer reproduces it exactly."""
        mine = self.plan.parts_for(self.node, chapter)
        for i, learner in enumerate(self.learners):
            if self.held.get(i, 0) != chapter:
                load_part_state(learner, self._wait(i, chapter, exact=i in mine).tensors)
                if i in mine:
                    self.held[i] = chapter   # the version this chapter trains from: _train keeps it
        self._score_negatives(chapter - self.negatives.lag)

    def _score_negatives(self, chapter: int) -> None:
        """Adaptive: score a later chapter's negatives with the network this node holds now
        (every layer at version chapter + 1) and hand them to the nodes that train in it."""
        start = time.time()
        self.cores.use(self._alone())
        target = self.negatives.score(chapter, goodness_scores(self.net, self.images, self.t.goodness,
                                                               self.t.eval_batch_size, self.t.negatives_dtype))
        users = self.plan.negatives_users(target)
        meta = {"node": self.node, "part": NEGATIVES, "chapter": target, "start": start, "end": time.time(),
                "wait": 0.0, "inputs": {}}
        if users - {self.node}:
            small = torch.uint8 if self.config.num_classes <= 256 else torch.int32
            self.store.put(Parameters(NEGATIVES, target + 1, {"labels": self.negatives.scored[target].to(small)},
                                      meta))
        if self.node not in users:
            del self.negatives.scored[target]
        self.timeline.append(meta)
        # the master learns of the scoring from this node's next parameters (it may not listen for labels)
        self.scoring_meta = {"negatives_start": meta["start"], "negatives_end": meta["end"],
                             "negatives_for": target}

    def _wait(self, part: int, version: int, *, exact: bool) -> Parameters:
        start = time.perf_counter()
        try:
            return self.store.get(part, version, exact=exact, timeout=self.wait_seconds)
        finally:
            self.idle_seconds += time.perf_counter() - start

    def _train(self, part: int, chapter, step, rows: int, used: dict[int, int]) -> None:
        learner = self.parts[part]
        self.part = part
        waited = 0.0
        if self.held.get(part, 0) != chapter.index:
            # chapter j continues from version j, trained on another node
            before = self.idle_seconds
            load_part_state(learner, self._wait(part, chapter.index, exact=True).tensors)
            waited = self.idle_seconds - before
        start = time.time()
        # the first task holds up every other node; later, the others may run out of work
        threads = self.cores.use(self.plan.is_root(part, chapter.index) or self._alone())
        batches = 0

        def done(epoch: int, loss: float, n: int) -> None:
            nonlocal batches, threads
            if self._stop.is_set():
                raise WorkerStopped("stopped")
            if self.on_batch is not None:
                self.on_batch(part, chapter.index, epoch, loss, n)
            batches += 1
            threads = self.cores.recheck(batches, self._alone)

        history = EpochMeans()   # the task's epochs, for the master's per-epoch curves
        try:
            loss = train_chapter(learner, step, rows, chapter, seed=self.t.seed, part=part,
                                 batch_size=self.t.batch_size, on_batch=done, history=history)
        finally:
            self.cores.release()
        meta = {"node": self.node, "part": part, "chapter": chapter.index, "start": start, "end": time.time(),
                "wait": round(waited, 4), "loss": loss, "inputs": dict(used), "threads": threads,
                **self.scoring_meta, **history.state()}
        self.scoring_meta = {}
        self.store.put(Parameters(part, chapter.index + 1, part_state(learner, optimizer=self.plan.passes_optimizer),
                                  meta))
        self.held[part] = chapter.index + 1
        self.timeline.append(meta)
