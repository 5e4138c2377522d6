"""Server node: hosts FF layers for any number of models. In a DFF activation pipeline it trains
them on the chunks that reach it; in a PFF run (transport: parameters) it trains its share of
the model on data it reads itself and exchanges parameter versions with the other nodes.

    ros2 run dff_ros server [--ros-args -p name:=server_3 -p weights_dir:=/data/w -p threads:=1 -p data_root:=/data]
    python -m dff_ros.nodes.server [--name NAME] [--weights-dir DIR] [--threads N] [--data-root DIR]

Services (under the node's name): create_layers, delete_model, list_layers, save_weights.
Each hosted layer (or PFF share) has a worker thread for the compute, so receiving never waits
for training.
"""
from __future__ import annotations

import argparse
import os
import queue
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
import torch
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from dff_ros import stopping, weights
from dff_ros.config.schema import ConfigError, LayerSpec
from dff_ros.data.datasets import DatasetMissing, load_dataset
from dff_ros.msg import InferenceBatch, LayerInfo, LayerParameters, LayerStatus, ServerClaim, TrainingBatch
from dff_ros.nodes.common import CLAIMS_QOS, DATA_QOS, STATUS_QOS, declare_settings, make_executor, params_qos
from dff_ros.nodes.naming import claim_server_name
from dff_ros.nodes.pff_job import PFFJob
from dff_ros.pff.plan import shard_indices
from dff_ros.pipeline.chunks import ChunkError
from dff_ros.pipeline.host import LayerHost, LayerStopped
from dff_ros.run.cluster import HostRequest
from dff_ros.srv import CreateLayers, DeleteModel, FetchParameters, ListLayers, SaveWeights
from dff_ros.stopping import CLEANUP_SECONDS, STOPPING, Interrupted, rclpy_init
from dff_ros.wire.codec import (host_request_from_msg, infer_from_msg, infer_to_msg, params_to_msg,
                                     train_from_msg, train_to_msg)
from dff_ros.wire.tensors import nbytes, to_msg
from dff_ros.topics import CLAIMS_TOPIC, STATUS_TOPIC, checkpoints_topic

_STOP = object()

# The server's settings: flag --<key with dashes>, ROS parameter <key>; one default each.
SETTINGS = {
    "name": ("", "server name (default: the next free server_<n>; also `-r __node:=NAME`)"),
    "weights_dir": ("", "where layer weights are kept (default: $DFF_WEIGHTS_DIR, else "
                        "~/.local/share/dff_ros/weights)"),
    "threads": (1, "torch threads"),
    "solo_threads": (0, "PFF: torch threads while the other nodes have no work, when they share this "
                        "machine's cores (0: threads)"),
    "data_root": ("", "PFF: where this node reads its training data (wins over the master's data_root; "
                      "default: the master's, else $DFF_DATA_ROOT, else ~/.cache/dff_ros/data)"),
}


def checked_settings(values: dict) -> dict:
    """The settings with their types checked; ValueError names the bad one."""
    for key, (default, _) in SETTINGS.items():
        v = values.get(key, default)
        ok = (isinstance(v, int) and not isinstance(v, bool) and v >= (1 if key == "threads" else 0)
              if isinstance(default, int) else isinstance(v, str))
        if not ok:
            want = "an integer >= 1" if key == "threads" else "an integer >= 0" if isinstance(default, int) else "a string"
            raise ValueError(f"server setting {key}: must be {want}, got {v!r}")
    return dict(values)


@dataclass
class HostedLayer:
    """A DFF layer a server hosts for a run: its LayerHost, topics, worker thread and counters."""
    model: str
    run_id: str
    spec: LayerSpec
    host: LayerHost
    hash: str
    topics: dict
    restored: bool
    total_epochs: int
    splits: int
    inbox: queue.Queue = field(default_factory=queue.Queue)
    entities: list = field(default_factory=list)
    worker: threading.Thread | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    chapter_bytes: dict = field(default_factory=dict)   # chapter -> bytes published for it
    drops: dict = field(default_factory=dict)   # kind -> chunks dropped
    phase: str = "created"
    saved_path: str = ""
    restored_from: str = ""   # what was restored: file, run, chapters, when saved
    provenance: dict = field(default_factory=dict)   # the restored file's run_id, chapters, saved_at
    lock: threading.Lock = field(default_factory=threading.Lock)  # compute vs. save

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())


class ServerNode(Node):
    """A server: hosts DFF layers and PFF shares for any number of models, over ROS services and
    topics."""
    def __init__(self, name: str, token: int, settings: dict, *, wait_seconds: float = 600.0, **kwargs):
        """``settings``: SETTINGS' keys, from the flags; declared as this node's read-only ROS
        parameters, where ``-p key:=value`` / a params file wins (ValueError: a bad value)."""
        super().__init__(name, **kwargs)
        # what the master and `dff-ros status` call this server: namespace and name (a remapped
        # or namespaced server is found by its services, whatever it is called)
        self.key = self.get_fully_qualified_name().lstrip("/")
        self.settings = checked_settings(declare_settings(self, {**settings, "name": self.get_name()},
                                                          {k: h for k, (_, h) in SETTINGS.items()}))
        self.token, self.threads = token, self.settings["threads"]
        self.weights_dir = Path(self.settings["weights_dir"] or weights.default_weights_dir()).expanduser()
        self.solo_threads = self.settings["solo_threads"]   # PFF: threads while the other nodes have no work
        self.data_root, self.wait_seconds = self.settings["data_root"], wait_seconds
        torch.set_num_threads(self.threads)
        self.lock = threading.RLock()
        self.retired: list[threading.Thread] = []   # workers of stopped layers and shares, maybe still finishing
        self.layers: dict[tuple[str, int], HostedLayer] = {}   # DFF: (model, layer) -> hosted layer
        self.jobs: dict[str, PFFJob] = {}                   # PFF: model -> this node's share
        self._datasets: dict[tuple, dict] = {}
        self.status_pub = self.create_publisher(LayerStatus, STATUS_TOPIC, STATUS_QOS)
        self.claims_pub = self.create_publisher(ServerClaim, CLAIMS_TOPIC, CLAIMS_QOS)
        self.claims_pub.publish(ServerClaim(name=name, token=token, hostname=socket.gethostname(),
                                            pid=os.getpid(), held=True))
        self.conflict = False
        self.create_subscription(ServerClaim, CLAIMS_TOPIC, self._on_claim, CLAIMS_QOS)
        self.create_service(CreateLayers, "~/create_layers", self.on_create)
        self.create_service(DeleteModel, "~/delete_model", self.on_delete)
        self.create_service(ListLayers, "~/list_layers", self.on_list)
        self.create_service(SaveWeights, "~/save_weights", self.on_save)
        self.create_service(FetchParameters, "~/fetch_parameters", self.on_fetch)
        self.create_timer(1.0, self._heartbeat)
        solo = (f" (PFF runs: {self.solo_threads} while the other nodes have no work)"
                if self.solo_threads > self.threads else "")
        self.get_logger().info(f"ready: weights in {self.weights_dir}, {self.threads} torch thread(s){solo}")

    def publish_status(self, msg: LayerStatus) -> None:
        msg.header.stamp = self.get_clock().now().to_msg()
        try:
            self.status_pub.publish(msg)
        except Exception:
            if not STOPPING.is_set():   # a last status from a worker while ROS shuts down is not news
                raise

    def _retire(self, worker: threading.Thread | None) -> None:
        self.retired = [t for t in self.retired if t.is_alive()] + ([worker] if worker is not None else [])

    def stop_all(self, timeout: float = CLEANUP_SECONDS) -> None:
        """Stop every hosted layer and PFF share (the server is shutting down) and wait up to
        ``timeout`` for their workers, so nothing publishes once ROS is shut down."""
        with self.lock:
            hosted, jobs = list(self.layers.values()), list(self.jobs.values())
            self.layers.clear()
            self.jobs.clear()
        for h in hosted:
            self._stop(h)
        for job in jobs:
            job.stop(f"{self.key} is shutting down")
            self._retire(job.thread)
        deadline = time.monotonic() + timeout
        for t in self.retired:   # a worker still inside torch when Python finalizes aborts the process
            t.join(max(0.0, deadline - time.monotonic()))
        self.retired = [t for t in self.retired if t.is_alive()]
        if hosted or jobs:
            self.get_logger().info(f"stopped {len(hosted)} layer(s) and {len(jobs)} PFF share(s)")

    def _heartbeat(self) -> None:
        """Every hosted layer's and running PFF share's status, once a second: the master's
        sign that this server is alive."""
        with self.lock:
            running = list(self.jobs.values())   # finished shares too: their nodes are alive
            hosted = list(self.layers.values())
        for job in running:
            self.publish_status(job.status())
        for h in hosted:
            self._status(h, h.phase)

    def _on_claim(self, msg) -> None:
        # another *running* server holds the same name with a lower token: it keeps the name.
        # A newcomer's tentative claim never dislodges a running server; the newcomer sees this
        # server in the graph and moves on.
        if (msg.held and msg.name == self.get_name() and msg.token != self.token and msg.token < self.token
                and not self.layers and not self.jobs):
            self.conflict = True

    # ------------------------------------------------------------------ services
    def on_create(self, req: CreateLayers.Request, res: CreateLayers.Response):
        pff = req.transport == "parameters"
        try:
            request, wiring = host_request_from_msg(req)   # validated once, here
            built = self._build_pff(request) if pff else self._build(request, wiring)
        except (ConfigError, ValueError, TypeError, KeyError, DatasetMissing) as e:
            res.success, res.message = False, f"create_layers for model {req.model!r} refused: {e}"
            self.get_logger().warning(res.message)
            return res
        with self.lock:
            if pff or not req.add_layers:
                self._drop_model(req.model)
            if pff:
                self.jobs[req.model] = built
                built.start()
            else:
                for h in built:
                    if (h.model, h.spec.index) in self.layers:
                        self._stop(self.layers.pop((h.model, h.spec.index)))
                    self._start(h)
                    self.layers[(h.model, h.spec.index)] = h
        res.success = True
        if pff:
            res.weights_restored = [p in built.restored for p in range(built.plan.parts)]
            res.message = (f"PFF {req.pff_variant} node {req.node_index}/{req.num_nodes}: " + (
                f"restored {[built.names[p] for p in sorted(built.restored)]} of {req.model!r} from {self.weights_dir}"
                if built.evaluate_only else f"trains {[built.names[p] for p in built.trains]} of {req.model!r} "
                                            f"on {len(built.worker.labels)} samples"))
        else:
            res.weights_restored = [h.restored for h in built]
            res.restored_from = [h.restored_from for h in built]
            res.restored_paths = [str(self.weights_path(h)) if h.restored_from else "" for h in built]
            res.message = (f"hosting layer(s) {[h.spec.index for h in built]} of {req.model!r}"
                           + (f"; resumed after chapter(s) {[h.host.chapters_done for h in built]}" if req.resume_from
                              else "".join(f"; layer {h.spec.index} restored from {h.restored_from}"
                                           for h in built if h.restored_from)))
        self.get_logger().info(res.message)
        return res

    def _build(self, req: HostRequest, wiring: dict[int, dict]) -> list[HostedLayer]:
        m = req.model
        resume = {p.part: p for p in req.resume}
        out = []
        for spec in m.layers:
            host = LayerHost(spec, m.train, m.num_classes, last=wiring[spec.index]["last"])
            h = HostedLayer(m.name, req.run_id, spec, host, weights.layer_key(m, spec),
                       {k: v for k, v in wiring[spec.index].items() if k != "last"}, False, m.train.epochs,
                       m.train.splits)
            if spec.index in resume:
                host.resume(resume[spec.index])
                h.restored = True
            elif req.restore:
                h.restored = self._restore(h)
            out.append(h)
        return out

    def _build_pff(self, req: HostRequest) -> PFFJob:
        m, plan, train = req.model, req.plan, req.model.train
        if req.evaluate_only:   # nothing to train: a robot with saved weights needs no training data
            x, y = torch.empty(0, *m.layers[0].in_shape), torch.empty(0, dtype=torch.long)
        else:
            data = self._dataset(m.dataset.name, req.data_root)
            x, y = data["train_images"], data["train_labels"]
        if train.train_subset:
            x, y = x[:train.train_subset], y[:train.train_subset]
        if plan.variant == "federated":  # this node's own shard; the other rows never leave their nodes
            idx = shard_indices(len(y), req.node_index, plan.nodes, train.seed)
            x, y = x[idx], y[idx]
        return PFFJob(self, run_id=req.run_id, config=m, plan=plan, index=req.node_index, images=x, labels=y,
                      hashes={s.index: weights.layer_key(m, s) for s in m.layers}, history=req.param_history,
                      wait_seconds=self.wait_seconds, evaluate_only=req.evaluate_only,
                      start_chapter=req.start_chapter)

    def _dataset(self, name: str, root: str) -> dict:
        # the server's own data root wins: the master's path may not exist on this robot
        root = self.data_root or root or None
        if (name, root) not in self._datasets:
            self._datasets[(name, root)] = load_dataset(name, root)
        return self._datasets[(name, root)]

    def _drop_model(self, model: str) -> int:
        """Stop and forget everything of ``model`` (DFF layers, PFF job); caller holds the lock."""
        gone = [k for k in self.layers if k[0] == model]
        for k in gone:
            self._stop(self.layers.pop(k))
        job = self.jobs.pop(model, None)
        if job is not None:
            job.stop(f"model {model!r} deleted on {self.key}")
            self._retire(job.thread)
        return len(gone) + (len(job.trains) if job is not None else 0)

    def on_delete(self, req, res):
        if req.weights and not req.model:
            res.success, res.message = False, "removing saved weights needs a model name"
            return res
        with self.lock:
            gone = self._drop_model(req.model)
        res.success, res.deleted = True, gone
        res.message = f"deleted {gone} layer(s) of {req.model!r}"
        if req.weights:
            folder = weights.model_dir(self.weights_dir, req.model)
            files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
            for f in files:
                f.unlink(missing_ok=True)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            res.message += f" and {len(files)} saved weight file(s) in {folder}"
        self.get_logger().info(res.message)
        return res

    def on_list(self, req, res):
        res.server, res.hostname, res.pid = self.key, socket.gethostname(), os.getpid()
        res.threads, res.weights_dir = self.threads, str(self.weights_dir)
        with self.lock:
            for h in self.layers.values():
                res.layers.append(LayerInfo(
                    model=h.model, run_id=h.run_id, index=h.spec.index, module=h.spec.module,
                    in_features=h.spec.in_features, out_features=h.spec.out_features,
                    in_shape=list(h.spec.in_shape), out_shape=list(h.spec.out_shape), spec_hash=h.hash,
                    weights_restored=h.restored, samples=h.host.samples, dropped=h.dropped,
                    input_topic=h.topics["train_input"], output_topic=h.topics["train_output"]))
            for job in self.jobs.values():
                res.layers.extend(job.infos())
        for path in sorted(self.weights_dir.glob("*/*.pt"))[:MAX_LISTED_FILES]:
            try:
                st = path.stat()
            except OSError:   # removed meanwhile
                continue
            res.saved_files.append(f"{path.parent.name}/{path.name}")
            res.saved_bytes.append(st.st_size)
            res.saved_at.append(st.st_mtime)
        return res

    def on_fetch(self, req, res):
        if req.file:
            return self._fetch_saved(req, res)
        with self.lock:
            job = self.jobs.get(req.model)
        try:
            if job is None:
                raise ValueError(f"no PFF run of model {req.model!r} here")
            p = job.final_parameters(int(req.part))
        except ValueError as e:
            res.success, res.message = False, str(e)
            return res
        res.parameters = params_to_msg(p, run_id=job.run_id, model=job.model, node_name=self.key, node=self)
        res.success, res.message = True, f"{job.names[p.part]} version {p.version}"
        return res

    def on_save(self, req, res):
        with self.lock:
            chosen = [h for h in self.layers.values() if not req.model or h.model == req.model]
            jobs = [j for j in self.jobs.values() if not req.model or j.model == req.model]
        try:
            res.paths = [self._save(h) for h in chosen] + [p for j in jobs for p in j.save()]
            res.success, res.message = True, f"saved {len(res.paths)} layer(s)"
        except OSError as e:
            res.success, res.message = False, f"saving failed: {e}"
        return res

    def _fetch_saved(self, req, res):
        """A part's weights from a file saved here (``dff-ros export``), weights-only."""
        path = weights.model_dir(self.weights_dir, req.model) / req.file
        res.success = False
        if not weights.SAVED_FILE.fullmatch(req.file):
            res.message = f"{req.file!r} is not a weights file name (layer<i>-<module>-<hash>.pt or head-<hash>.pt)"
        elif not path.is_file():
            res.message = f"no {req.file} of {req.model!r} in {self.weights_dir}"
        else:
            try:
                blob = weights.load_weights(path)
                tensors = weights.saved_part_tensors(blob)
                if "index" in blob and int(blob["index"]) != req.part:
                    raise ValueError(f"it holds layer {blob['index']}, not part {req.part}")
            except Exception as e:   # unreadable, pickled code, another format: say so, stay up
                res.message = f"{path}: {e}"
                return res
            m = res.parameters
            m.header.stamp = self.get_clock().now().to_msg()
            m.run_id, m.model, m.node, m.part = str(blob.get("run_id", "")), req.model, self.key, req.part
            m.names, m.tensors = list(tensors), [to_msg(t) for t in tensors.values()]
            m.metric_names, m.metric_values = ["saved_at"], [path.stat().st_mtime]
            res.success, res.message = True, f"{path} ({len(tensors)} tensors)"
        return res

    # ------------------------------------------------------------------ weights
    def weights_path(self, h: HostedLayer) -> Path:
        return weights.model_dir(self.weights_dir, h.model) / weights.layer_file(h.spec, h.hash)

    def _save(self, h: HostedLayer) -> str:
        with h.lock:
            # which run wrote it and how far it got: only a layer that trained every chapter is
            # ever restored (an interrupted run's weights are not a trained layer)
            made = weights.made_by(h.run_id, h.host.chapters_done, h.splits)
            if h.restored and not h.host.chapters_done:   # restored, not trained further: as it was
                made = h.provenance
            state = h.host.state_dict()
        path = weights.save_layer(self.weights_path(h), model=h.model, index=h.spec.index, spec_hash=h.hash,
                                  state=state, provenance=made)
        h.saved_path = str(path)
        return str(path)

    def _restore(self, h: HostedLayer) -> bool:
        """Load the layer's saved weights if a run trained it to the end; sets ``restored_from``."""
        path = self.weights_path(h)
        if not path.exists():
            return False
        state, made = weights.read_layer(path, h.hash)
        why = weights.unfinished(made)
        if why:
            self.get_logger().warning(f"not restoring {path}: {why}; layer {h.spec.index} of {h.model!r} "
                                      "trains from scratch")
            return False
        h.host.load_state_dict(state)
        h.provenance = made
        h.restored_from = weights.describe(path, made)
        return True

    # ------------------------------------------------------------------ data path
    def _start(self, h: HostedLayer) -> None:
        h.entities = [
            self.create_publisher(TrainingBatch, h.topics["train_output"], DATA_QOS),
            self.create_publisher(InferenceBatch, h.topics["infer_output"], DATA_QOS),
            self.create_publisher(LayerParameters, checkpoints_topic(h.model), params_qos(1)),
        ]
        train_pub, infer_pub, checkpoint_pub = h.entities
        h.entities += [
            self.create_subscription(TrainingBatch, h.topics["train_input"],
                                     lambda m, h=h: self._receive(h, m, True), DATA_QOS),
            self.create_subscription(InferenceBatch, h.topics["infer_input"],
                                     lambda m, h=h: self._receive(h, m, False), DATA_QOS),
        ]
        # a chapter's checkpoint goes out as soon as it is trained: what a replacement resumes from
        h.host.on_checkpoint = lambda p: checkpoint_pub.publish(
            params_to_msg(p, run_id=h.run_id, model=h.model, node_name=self.key, node=self))
        h.worker = threading.Thread(target=self._work, args=(h, train_pub, infer_pub), daemon=True,
                                    name=f"layer{h.spec.index}-{h.model}")
        h.worker.start()
        self._status(h, "created", f"{h.spec.module} {list(h.spec.in_shape)}->{list(h.spec.out_shape)}")

    def _stop(self, h: HostedLayer) -> None:
        h.host.stop()   # a chapter in training ends at its next minibatch
        h.inbox.put(_STOP)
        self._retire(h.worker)
        for e in h.entities:
            if hasattr(e, "topic_name") and hasattr(e, "publish"):
                self.destroy_publisher(e)
            else:
                self.destroy_subscription(e)
        h.entities = []

    def _receive(self, h: HostedLayer, msg, training: bool) -> None:
        if msg.model != h.model:
            return self._drop(h, "foreign", f"model {msg.model!r} on {h.model!r}'s topic")
        if msg.run_id != h.run_id:   # another pipeline of the same model, or a stray publisher
            return self._drop(h, "foreign", f"run {msg.run_id!r}, this layer belongs to run {h.run_id!r}")
        if msg.layer != h.spec.source:
            return self._drop(h, "misrouted", f"from layer {msg.layer}, this layer reads layer {h.spec.source}")
        h.bytes_in += nbytes(msg)
        try:
            chunk = train_from_msg(msg) if training else infer_from_msg(msg)
        except ChunkError as e:
            return self._drop(h, "malformed", str(e))
        if training:
            h.host.note_attempt(chunk.attempt)
        h.inbox.put((training, msg.run_id, chunk))

    def _drop(self, h: HostedLayer, kind: str, why: str) -> None:
        """Count a chunk that is not for this layer or does not fit it; the first of each kind is
        logged, the rest only counted (LayerStatus.dropped, and per kind in its message)."""
        h.drops[kind] = h.drops.get(kind, 0) + 1
        if h.drops[kind] == 1:
            self.get_logger().warning(f"layer {h.spec.index} of {h.model!r}: dropped a {kind} chunk ({why}); "
                                      f"more {kind} chunks are only counted (see /dff/status)")

    def _work(self, h: HostedLayer, train_pub, infer_pub) -> None:
        last_status = 0.0
        while True:
            item = h.inbox.get()
            if item is _STOP:
                return
            training, run_id, chunk = item  # chunk tensors keep the message buffers alive
            try:
                if training:
                    h.phase = "training"
                    with h.lock:
                        outs = h.host.train(chunk)
                    for out in outs:
                        if h.host.stopped:
                            return
                        m = train_to_msg(out, run_id=run_id, model=h.model, layer=h.spec.index, node=self)
                        size = nbytes(m)
                        h.bytes_out += size
                        h.chapter_bytes[out.chapter] = h.chapter_bytes.get(out.chapter, 0) + size
                        train_pub.publish(m)
                    if self._finished(h, chunk, outs):
                        h.phase = "trained"
                        self._save(h)
                        self._status(h, "trained", f"weights saved to {h.saved_path}")
                        continue
                else:
                    h.phase = "inference"
                    with h.lock:
                        out = h.host.infer(chunk)
                    m = infer_to_msg(out, run_id=run_id, model=h.model, layer=h.spec.index, node=self)
                    h.bytes_out += nbytes(m)
                    infer_pub.publish(m)
            except ChunkError as e:
                self._drop(h, "malformed", str(e))
                continue
            except LayerStopped:
                return
            except Exception as e:  # a bug or a bad tensor must not take the server down
                if h.host.stopped:   # its publishers were destroyed under it
                    return
                self.get_logger().error(f"layer {h.spec.index} of {h.model!r}: {type(e).__name__}: {e}")
                self._status(h, "error", f"{type(e).__name__}: {e}")
                continue
            now = time.monotonic()
            if now - last_status >= 1.0:
                last_status = now
                self._status(h, h.phase)

    def _finished(self, h: HostedLayer, chunk, outs) -> bool:
        if h.host.train_cfg.schedule == "stream":
            return chunk.epoch == h.total_epochs and chunk.seq == chunk.count - 1
        return bool(outs) and chunk.chapter == h.splits - 1

    def _status(self, h: HostedLayer, phase: str, message: str = "") -> None:
        host = h.host
        loss = host.mean_loss
        if not message and h.drops:
            message = "dropped: " + ", ".join(f"{k} {n}" for k, n in sorted(h.drops.items()))
        msg = LayerStatus(
            run_id=h.run_id, model=h.model, server=self.key, layer=h.spec.index, phase=phase,
            chapter=host.chapter, chapters_done=host.chapters_done, epoch=host.epoch, loss=float(loss), samples=host.samples,
            busy_seconds=host.busy_seconds, bytes_in=h.bytes_in, bytes_out=h.bytes_out, dropped=h.dropped,
            message=message, **history_fields(host, h))
        self.publish_status(msg)


MAX_LISTED_FILES = 1000   # saved weights listed by list_layers


def history_fields(host: LayerHost, h: HostedLayer) -> dict:
    """LayerStatus' history arrays of a hosted layer (see msg/LayerStatus.msg)."""
    loss, acc = host.history.as_lists(h.total_epochs)
    nan = float("nan")
    spans = [host.timeline.get(c, (nan, nan)) for c in range(h.splits)]
    return {"epoch_loss": loss, "epoch_accuracy": acc, "chapter_start": [s[0] for s in spans],
            "chapter_end": [s[1] for s in spans],
            "chapter_bytes_out": [int(h.chapter_bytes.get(c, 0)) for c in range(h.splits)]}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="dff_ros server", description=__doc__.split("\n\n")[0])
    for key, (default, help) in SETTINGS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(default), default=default, help=help)
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    args = parse_args(rclpy.utilities.remove_ros_args(argv)[1:])
    # SIGINT / SIGTERM: stop the layers' work first, then ROS; the main thread spins the
    # EventsExecutor, so the signal only sets STOPPING for the loop below (dff_ros/stopping.py)
    rclpy_init(argv, raise_now=False)
    context = rclpy.get_default_context()
    executor = node = None
    try:
        settings = {k: getattr(args, k) for k in SETTINGS}
        # the name decides which node to make, so it is read before the server node exists; the
        # server node declares every setting (ROS parameters) itself
        probe = rclpy.create_node("dff_server_name", context=context, start_parameter_services=False,
                                  enable_rosout=False)
        fixed_name = probe.declare_parameter("name", settings["name"]).value
        if probe.get_name() != "dff_server_name":   # -r __node:=NAME renames every node of this process
            fixed_name = probe.get_name()
        probe.destroy_node()
        executor = make_executor(context)
        lost: set[int] = set()
        log = lambda s: print(f"[server] {s}", file=sys.stderr, flush=True)  # noqa: E731
        while True:
            if fixed_name:
                name, token = fixed_name, 0  # an explicit name always wins
            else:
                name, token = claim_server_name(context, log=log, exclude=lost)
            try:
                node = ServerNode(name, token, settings)
            except ValueError as e:
                print(f"[server] {e}", file=sys.stderr, flush=True)
                return 2
            executor.add_node(node)
            while rclpy.ok() and not node.conflict:
                executor.spin_once(timeout_sec=0.1)
                stopping.check()
            if not node.conflict:
                break
            log(f"{name} was claimed first by another server; claiming a new name")
            lost.add(int(name.rsplit("_", 1)[1]))
            executor.remove_node(node)
            node.destroy_node()
            node = None
    except (Interrupted, ExternalShutdownException):
        pass   # a server's normal way to stop: exit 0
    finally:
        if node is not None:
            node.stop_all()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        stopping.ignore()
        if node is not None and any(t.is_alive() for t in node.retired):
            # a worker still inside a long torch op: Python's finalization would abort under it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
