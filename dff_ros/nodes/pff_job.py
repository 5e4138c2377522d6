"""A server's share of a PFF run (parameter passing): a ``PFFWorker`` on a thread, its parts'
versions published on the params topics, other nodes' versions received into its store.
The server node creates, lists, saves and stops these; the algorithm is ``dff_ros.pff``.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from dff_ros import weights
from dff_ros.msg import LayerInfo, LayerParameters, LayerStatus
from dff_ros.nodes.common import TASKS_QOS, params_qos, publish_serialized, subscribe_serialized
from dff_ros.topics import params_topic, tasks_topic
from dff_ros.parts.names import NEGATIVES, part_names
from dff_ros.parts.state import nonfinite, part_state
from dff_ros.parts.versions import MalformedVersion, ParameterStore, Parameters, ParametersTimeout
from dff_ros.pff.plan import PFFPlan
from dff_ros.pff.worker import PFFWorker, WorkerStopped
from dff_ros.wire.cdr import blank
from dff_ros.wire.codec import params_from_msg, params_to_msg
from dff_ros.wire.seal import sealed
from dff_ros.wire.tensors import nbytes


class PFFJob:
    """A server's share of a PFF run: its worker on a thread, its parts' versions published and the
    others' received, its files saved and restored."""
    def __init__(self, node, *, run_id: str, config, plan: PFFPlan, index: int, images, labels,
                 hashes: dict[int, str], history: int, wait_seconds: float, evaluate_only: bool = False,
                 start_chapter: int = 0, key: int = 0):
        """``evaluate_only``: train nothing; load the parts saved on this node (``restored``),
        for the master to fetch, assemble and test. ``start_chapter``: this node replaces a lost
        one and goes on from there. ``key``: the run key; versions and reports are sealed with it
        and only versions sealed with it are taken (wire/seal.py)."""
        self.node, self.run_id, self.config, self.plan, self.index = node, run_id, config, plan, index
        self.key = key
        self.model = config.name
        self.hashes, self.history = hashes, history
        self.names = part_names(config)
        self.store = ParameterStore(publish=self._publish, names=self.names)
        self.worker = PFFWorker(config, images, labels, plan, index, self.store, wait_seconds=wait_seconds,
                                solo_threads=node.solo_threads, on_batch=self._on_batch)
        self.evaluate_only = evaluate_only
        self.restored = self.restore() if evaluate_only else {}     # part -> when it was saved
        self.trains = [] if evaluate_only else plan.trained_by(index, config.train.splits)
        self.receives = [] if evaluate_only else plan.received_by(index, config.train.splits)
        self.start_chapter = start_chapter
        if start_chapter:   # a replacement also needs the versions the lost node published
            self.receives = sorted(set(self.receives) | set(self.trains))
        self.publishers: dict[int, object] = {}
        self.tasks_publisher = None
        self.subscriptions: list = []
        self.bytes_in = self.bytes_out = self.dropped = 0
        self.samples = 0
        self.epoch = 0
        self.loss = float("nan")
        self.phase, self.message = "created", ""
        self.saved: list[str] = []
        self.started = 0.0
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        n, L = self.node, len(self.config.layers)
        # adaptive negative labels are small (a byte per sample): every chapter's are kept, so a
        # replacement node can take the ones scored before it started
        qos = {p: params_qos(max(self.history, self.config.train.splits) if p == NEGATIVES else self.history)
               for p in {*self.trains, *self.receives}}
        for p in self.trains:
            self.publishers[p] = n.create_publisher(LayerParameters, params_topic(self.model, p, L), qos[p])
        if self.evaluate_only:
            saved = ", ".join(self.names[p] for p in sorted(self.restored))
            self.phase, self.message = "trained", (f"restored {saved}" if saved else "nothing saved here")
            self.node.publish_status(self.status(), self.key)
            return
        self.tasks_publisher = n.create_publisher(LayerParameters, tasks_topic(self.model), TASKS_QOS)
        for p in self.receives:
            self.subscriptions.append(subscribe_serialized(n, LayerParameters, params_topic(self.model, p, L),
                                                           lambda m, p=p: self._receive(p, m), qos[p], self._drop))
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"pff-{self.model}")
        self.thread.start()

    def stop(self, why: str) -> None:
        self.worker.stop(why)
        for pub in [*self.publishers.values(), *([self.tasks_publisher] if self.tasks_publisher else [])]:
            self.node.destroy_publisher(pub)
        self.tasks_publisher = None
        for sub in self.subscriptions:
            self.node.destroy_subscription(sub)
        self.publishers, self.subscriptions = {}, []

    def _run(self) -> None:
        log = self.node.get_logger()
        self.phase = "training"
        try:
            self.worker.run(self.start_chapter)
            self.saved = self.save()
            self.phase, self.message = "trained", f"weights saved to {', '.join(self.saved) or '(none final here)'}"
            log.info(f"PFF {self.model}: node {self.index} done; {self.message}")
        except (WorkerStopped, ParametersTimeout) as e:
            stopped = self.worker.stopped
            self.phase, self.message = ("stopped" if stopped else "error"), str(e)
            (log.info if stopped else log.error)(f"PFF {self.model}: {e}")
        except Exception as e:  # a bug must not take the server down; the master hears of it
            self.phase, self.message = "error", f"{type(e).__name__}: {e}"
            log.error(f"PFF {self.model}: {self.message}")
        self.node.publish_status(self.status(), self.key)

    def final_parameters(self, part: int) -> Parameters:
        """The final version of ``part`` if this node holds it (trained its last chapter here, or
        restored it); no optimizer state: nothing trains it further."""
        final = self.config.train.splits
        if not 0 <= part < self.plan.parts:
            raise ValueError(f"no part {part} (parts 0..{self.plan.parts - 1})")
        if part in self.restored:
            meta = {"node": self.index, "saved_at": self.restored[part]}
        elif self.worker.held.get(part) == final:   # its last chapter is done: it changes no more
            meta = {"node": self.index}
        else:
            raise ValueError(f"{self.names[part]} version {final} is not here (this node holds "
                             f"{self.worker.held.get(part, 0) if part not in self.restored else 'a saved one'})")
        return Parameters(part, final, part_state(self.worker.parts[part], optimizer=False), meta)

    # ------------------------------------------------------------------ transport
    def _publish(self, p: Parameters) -> None:
        pub = self.publishers.get(p.part)
        if pub is None:
            return
        msg = params_to_msg(p, run_id=self.run_id, model=self.model, node_name=self.node.key, node=self.node,
                            msg=blank(LayerParameters), key=self.key)
        self.bytes_out += nbytes(msg)
        sent = publish_serialized(pub, msg)
        if self.tasks_publisher is not None:   # the task's report: its meta without the tensors
            report = Parameters(p.part, p.version, {}, {**p.meta, "bytes": sent})
            self.tasks_publisher.publish(params_to_msg(report, run_id=self.run_id, model=self.model,
                                                       node_name=self.node.key, node=self.node, key=self.key))
        self.node.publish_status(self.status(), self.key)

    def _receive(self, part: int, msg) -> None:
        if msg.node == self.node.key:
            return  # our own version, already in the store
        why = None
        if msg.model != self.model:
            why = f"model {msg.model!r} on {self.model!r}'s topic"
        elif msg.run_id != self.run_id:
            why = f"run {msg.run_id!r}, this run is {self.run_id!r}"
        elif msg.part != part:
            why = f"part {msg.part} on the topic of part {part}"
        elif not sealed(self.key, msg):
            why = "its seal does not verify with the run's key"
        if why is None:
            try:
                params = params_from_msg(msg)
                bad = nonfinite(params.tensors)
                if bad:   # a version that would turn every node's copy NaN
                    why = f"NaN or infinite values in {', '.join(bad[:3])}"
            except MalformedVersion as e:
                why = str(e)
            except Exception as e:   # one no check foresaw: raised here, it would end the spinner
                why = f"{type(e).__name__}: {e}"
        if why is not None:
            return self._drop(why)
        self.bytes_in += nbytes(msg)
        self.store.add(params)

    def _drop(self, why: str) -> None:
        self.dropped += 1
        self.node.get_logger().warning(f"PFF {self.model}: dropped a parameters message ({why}); "
                                       f"{self.dropped} dropped so far", throttle_duration_sec=5.0)

    def _on_batch(self, part: int, chapter: int, epoch: int, loss: float, rows: int) -> None:
        self.epoch, self.loss, self.samples = epoch, loss, self.samples + rows

    # ------------------------------------------------------------------ weights, status
    def part_path(self, part: int) -> Path:
        """Where a part's final weights live on this node (the DFF servers' file names)."""
        root = weights.model_dir(self.node.weights_dir, self.model)
        if part == len(self.config.layers):
            return root / weights.model_head_file(self.config)
        return root / weights.layer_file(self.config.layers[part], self.hashes[part])

    def save(self) -> list[str]:
        """Save the parts whose final version this node holds (it trained their last chapter)."""
        out = []
        made = weights.made_by(self.run_id)
        for part, version in sorted(self.worker.held.items()):
            if version != self.config.train.splits:
                continue
            learner, path = self.worker.parts[part], self.part_path(part)
            if part == len(self.config.layers):
                out.append(str(weights.save_head(path, learner.head.state_dict(), made, model=self.model)))
            else:
                out.append(str(weights.save_layer(path, model=self.model, index=part, spec_hash=self.hashes[part],
                                                  state=weights.layer_state(learner, self.samples), provenance=made)))
        return out

    def restore(self) -> dict[int, float]:
        """Load every part saved on this node into the worker's learners: {part: saved_at}."""
        out = {}
        L = len(self.config.layers)
        for part, learner in enumerate(self.worker.parts):
            path = self.part_path(part)
            if not path.exists():
                continue
            try:
                if part == L:
                    state, made = weights.read_head(path)
                    learner.head.load_state_dict(state)
                else:
                    state, made = weights.read_layer(path, self.hashes[part])
                    weights.load_layer_state(learner, state)
            except (weights.WeightsError, RuntimeError) as e:
                raise ValueError(f"{path}: not weights of {self.names[part]} of this model spec ({e})") from None
            out[part] = float(made["saved_at"])
        return out

    def busy_seconds(self) -> float:
        if self.phase == "training":
            return time.perf_counter() - self.started - self.worker.idle_seconds
        return self.worker.busy_seconds

    def status(self) -> LayerStatus:
        w = self.worker
        return LayerStatus(run_id=self.run_id, model=self.model, server=self.node.key, layer=max(w.part, 0),
                           phase=self.phase, chapter=max(w.chapter, 0), epoch=self.epoch, loss=float(self.loss),
                           samples=self.samples, busy_seconds=self.busy_seconds(), idle_seconds=w.idle_seconds,
                           bytes_in=self.bytes_in, bytes_out=self.bytes_out, dropped=self.dropped,
                           message=self.message)

    def infos(self) -> list[LayerInfo]:
        L = len(self.config.layers)
        out = []
        for p in [p for p in self.trains if p != NEGATIVES]:
            spec = self.config.layers[p] if p < L else None
            widths = [s.out_features for s in self.config.layers]
            out.append(LayerInfo(
                model=self.model, run_id=self.run_id, index=p, module=spec.module if spec else "SoftmaxHead",
                in_features=spec.in_features if spec else sum(widths[1:]),
                out_features=spec.out_features if spec else self.config.num_classes,
                in_shape=list(spec.in_shape) if spec else [sum(widths[1:])],
                out_shape=list(spec.out_shape) if spec else [self.config.num_classes],
                spec_hash=self.hashes.get(p, ""), samples=self.samples, dropped=self.dropped,
                input_topic="", output_topic=params_topic(self.model, p, L)))
        return out
