"""The classifier's model whose layers stay on the servers (a DFF run with ``keep_layers: true``).

Each image goes to layer 0's inference topic as a one-row chunk and its class scores come back
from the last layer: the path the master tests a run on. Only the softmax head, if that is the
classifier, runs here. The servers say which runs they host and with which model config
(``list_layers``' ``hosted_runs``), so nothing but the model's name is needed here.
"""
from __future__ import annotations

import json
import random
import threading
import time

import torch
from rclpy.node import Node

from dff_ros import weights
from dff_ros.config import parse_model_config
from dff_ros.ff.network import build_head
from dff_ros.msg import InferenceBatch
from dff_ros.nodes.common import DATA_QOS, discover_servers, make_executor, publish_serialized, subscribe_serialized
from dff_ros.pipeline.chunks import InferChunk
from dff_ros.pipeline.driver import as_uint8, result_scores
from dff_ros.srv import ListLayers
from dff_ros.topics import layer_topics
from dff_ros.wire.cdr import blank
from dff_ros.wire.codec import infer_from_msg, infer_to_msg

SEQ_LIMIT = 2 ** 32   # InferenceBatch.seq is uint32: requests are numbered from a random start


class HostedModelError(RuntimeError):
    """No server hosts every layer of the model (or the head / classifier asked for is missing)."""


def hosted_runs(node: Node, model: str, timeout: float = 5.0) -> dict[str, dict]:
    """run_id -> the model config of each run of ``model`` whose every layer some server hosts,
    put together from the servers' ``hosted_runs`` (each names the layers it has)."""
    parts: dict[str, dict] = {}   # run_id -> {"config", "layers": {index: row}, "last"}
    for server in discover_servers(node):
        client = node.create_client(ListLayers, f"/{server}/list_layers")
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                continue
            done = threading.Event()
            future = client.call_async(ListLayers.Request())
            future.add_done_callback(lambda _: done.set())
            if not done.wait(timeout) or future.result() is None:
                continue
            res = future.result()
        finally:
            node.destroy_client(client)
        for text in res.hosted_runs:
            try:
                run = json.loads(text)
                run_id, config, layers, last = run["run_id"], run["config"], run["layers"], int(run["last"])
                layers = {int(i): row for i, row in layers.items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                continue   # a server of another version: the others still count
            if not isinstance(config, dict) or config.get("name") != model:
                continue
            got = parts.setdefault(run_id, {"config": config, "layers": {}, "last": -1})
            got["layers"].update(layers)
            got["last"] = max(got["last"], last)
    return {run_id: {**p["config"], "model": [p["layers"][i] for i in range(p["last"] + 1)]}
            for run_id, p in parts.items() if p["last"] >= 0 and set(p["layers"]) == set(range(p["last"] + 1))}


class HostedModel:
    """A model whose layers run on the servers; called like ``Classifier``: rows in, (labels,
    confidences, scores) out. Spins its own node on its own thread, so a caller may wait for an
    answer inside a callback of another executor."""

    def __init__(self, model: str, *, run_id: str = "", classifier: str = "", head: str = "",
                 weights_dir: str | None = None, fit: str = "refuse", timeout: float = 5.0,
                 discovery_seconds: float = 10.0):
        """``timeout``: how long an image waits for its answer; ``discovery_seconds``: how long
        to look for the servers hosting the model."""
        self.fit, self.timeout, self.discovery_seconds = fit, timeout, discovery_seconds
        self.run_id = ""
        self._seq = random.randrange(SEQ_LIMIT)   # another classifier on the same layers numbers elsewhere
        self._waiting: dict[int, list] = {}       # seq -> [event, result]
        self._lock = threading.Lock()
        self.dropped = 0
        # absolute names only: the remaps and the node name given to the classifier are not for it
        self.node = Node("dff_classifier_link", use_global_arguments=False)
        self.executor = make_executor()
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._spinner = threading.Thread(target=self._spin, daemon=True, name="hosted-model")
        self._spinner.start()
        try:
            self._connect(model, run_id, classifier, head, weights_dir)
        except Exception:
            self.close()
            raise

    def _connect(self, model: str, run_id: str, classifier: str, head: str, weights_dir: str | None) -> None:
        deadline = time.monotonic() + self.discovery_seconds
        while True:   # servers appear in the graph as discovery goes on
            complete = hosted_runs(self.node, model)
            if (run_id in complete if run_id else complete) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if run_id:
            if run_id not in complete:
                raise HostedModelError(f"no server hosts every layer of run {run_id!r} of {model!r} "
                                       f"(hosted runs: {', '.join(sorted(complete)) or 'none'})")
            complete = {run_id: complete[run_id]}
        if len(complete) != 1:
            raise HostedModelError(
                f"{len(complete)} runs of {model!r} have every layer on the servers"
                + (f" ({', '.join(sorted(complete))}): pick one with --run" if complete else
                   "; train it with keep_layers: true (its layers then stay hosted), or run a gathered "
                   "model (--weights, from `dff-ros export`)"))
        (self.run_id, raw), = complete.items()
        self.config = parse_model_config(raw, f"run {self.run_id} of {model!r} (from the servers)")
        known = self.config.train.classifiers
        self.classifier = classifier or ("softmax" if "softmax" in known else known[0])   # as Classifier
        if self.classifier not in known:
            raise HostedModelError(f"{model!r} was trained for classifier(s) {', '.join(known)}, not {self.classifier!r}")
        self.head = self._load_head(head, weights_dir) if self.classifier == "softmax" else None
        self.shape = self.config.data.image_shape
        self.where = f"its layers on the servers, run {self.run_id}"
        last = len(self.config.layers) - 1
        first, out = layer_topics(model, 0, last), layer_topics(model, last, last)
        self.pub = self.node.create_publisher(InferenceBatch, first["infer_input"], DATA_QOS)
        sub = subscribe_serialized(self.node, InferenceBatch, out["infer_output"], self._on_result, DATA_QOS,
                                   self._on_malformed)
        # volatile topics drop what goes out before the other end has matched: wait for both ends
        deadline = time.monotonic() + self.discovery_seconds
        while not (self.pub.get_subscription_count() and sub.get_publisher_count()):
            if time.monotonic() > deadline:
                raise HostedModelError(f"the layers of run {self.run_id} are hosted, but {first['infer_input']} "
                                       f"or {out['infer_output']} did not connect in {self.discovery_seconds:g} s")
            time.sleep(0.05)

    def _load_head(self, head: str, weights_dir: str | None):
        path = head or str(weights.model_dir(weights_dir or weights.default_weights_dir(), self.config.name)
                           / weights.model_head_file(self.config))
        try:
            state, _ = weights.read_head(path)
        except (OSError, weights.WeightsError) as e:
            raise HostedModelError(f"the softmax classifier needs the head the master saved ({e}); pass --head "
                                   f"FILE, or --classifier one of {', '.join(self.config.train.classifiers)}") from None
        net = build_head([s.out_features for s in self.config.layers], self.config.num_classes, self.config.train.seed)
        net.load_state_dict(state)
        return net.eval()

    def _spin(self) -> None:
        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except Exception:   # the context is shutting down
                if self._stop.is_set():
                    return
                raise

    def _on_malformed(self, why: str) -> None:   # no request to blame: the waiting one times out
        self.dropped += 1

    def _on_result(self, msg) -> None:
        with self._lock:
            slot = self._waiting.get(msg.seq) if msg.run_id == self.run_id else None
        if slot is None:
            return   # the master's test chunks, another classifier's answers
        try:
            slot[1] = infer_from_msg(msg)
        except Exception as e:   # a malformed answer: the caller reports it, nothing crashes
            self.dropped += 1
            slot[1] = e
        slot[0].set()

    @torch.no_grad()
    def __call__(self, rows: torch.Tensor):
        with self._lock:
            seq, self._seq = self._seq, (self._seq + 1) % SEQ_LIMIT
            slot = self._waiting[seq] = [threading.Event(), None]
        try:
            n = rows.shape[0]
            publish_serialized(self.pub, infer_to_msg(
                InferChunk(seq, SEQ_LIMIT - 1, torch.zeros(n, dtype=torch.int64), images=as_uint8(rows)),
                run_id=self.run_id, model=self.config.name, layer=-1, node=self.node, msg=blank(InferenceBatch)))
            if not slot[0].wait(self.timeout):
                raise TimeoutError(f"the layers of run {self.run_id} did not answer within {self.timeout:g} s")
        finally:
            with self._lock:
                self._waiting.pop(seq, None)
        r = slot[1]
        if isinstance(r, Exception):
            raise ValueError(f"a malformed answer from the last layer ({type(r).__name__}: {r})")
        scores = result_scores(self.classifier, r.goodness, r.features, self.head)
        if scores is None or tuple(scores.shape) != (n, self.config.num_classes):
            raise ValueError(f"the last layer's answer has no {self.classifier} scores for {n} row(s)")
        confidence, label = torch.softmax(scores, dim=1).max(dim=1)
        return label, confidence, scores

    def close(self) -> None:
        self._stop.set()
        self._spinner.join(timeout=2.0)
        self.executor.shutdown()
        self.node.destroy_node()
