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
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import rclpy
import torch
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from dff_ros import stopping, weights
from dff_ros.control import RunKeys
from dff_ros.config.schema import ConfigError
from dff_ros.data import DatasetMissing, load_dataset
from dff_ros.msg import InferenceBatch, LayerInfo, LayerParameters, LayerStatus, ServerClaim, TrainingBatch
from dff_ros.nodes.common import (CLAIMS_QOS, DATA_QOS, STATUS_QOS, answering, declare_settings, make_executor,
                                  params_qos, publish_serialized, subscribe_serialized)
from dff_ros.nodes.naming import claim_server_name
from dff_ros.nodes.pff_job import PFFJob
from dff_ros.pff.plan import shard_indices
from dff_ros.pipeline.chunks import ChunkError
from dff_ros.hosting import UNSEALED_WAITING, HostedLayer
from dff_ros.pipeline.host import LayerStopped
from dff_ros.run.cluster import HostRequest
from dff_ros.srv import CreateLayers, DeleteModel, FetchParameters, ListLayers, SaveWeights
from dff_ros.stopping import CLEANUP_SECONDS, STOPPING, Interrupted, rclpy_init
from dff_ros.wire.codec import (host_request_from_msg, infer_from_msg, infer_to_msg, params_to_msg, status_to_msg,
                                     train_from_msg, train_to_msg)
from dff_ros.wire.cdr import blank
from dff_ros.wire.seal import seal, sealed
from dff_ros.wire.tensors import nbytes, to_msg
from dff_ros.topics import CLAIMS_TOPIC, STATUS_TOPIC, checkpoints_topic

_STOP = object()

# The server's settings: flag --<key with dashes>, ROS parameter <key>; one default each.
SETTINGS = {
    "name": ("", "server name (default: the next free server_<n>; also `-r __node:=NAME`)"),
    "weights_dir": ("", "where layer weights are kept (default: $DFF_WEIGHTS_DIR, else "
                        "~/.local/share/dff_ros/weights)"),
    "threads": (1, "torch threads"),
    "solo_threads": (0, "torch threads while no other layer or PFF node sharing this machine's cores has work "
                        "(0: threads)"),
    "data_root": ("", "PFF: where this node reads its training data (wins over the master's data_root; "
                      "default: the master's, else $DFF_DATA_ROOT, else ~/.cache/dff_ros/data)"),
    "release_seconds": (600, "a model's run is protected from other masters' and operators' calls until it "
                             "is deleted or unheard from this long (dff_ros/control.py)"),
}


def checked_settings(values: dict) -> dict:
    """The settings with their types checked; ValueError names the bad one."""
    for key, (default, _) in SETTINGS.items():
        v = values.get(key, default)
        ok = (isinstance(v, int) and not isinstance(v, bool) and (1 if key == "threads" else 0) <= v <= INT_LIMIT
              if isinstance(default, int) else isinstance(v, str))
        if not ok:
            low = 1 if key == "threads" else 0
            want = f"an integer {low}..{INT_LIMIT}" if isinstance(default, int) else "a string"
            raise ValueError(f"server setting {key}: must be {want}, got {v!r}")
    return dict(values)


def hosted_runs(hosted) -> list[dict]:
    """What a classifier needs to run a model on the layers hosted here, per run: the model's
    config without its layers, each hosted layer's row of the model YAML by index, and the
    model's last index if that layer is here."""
    runs: dict[str, dict] = {}
    for h in hosted:
        config = h.config.to_dict()
        run = runs.setdefault(h.run_id, {"run_id": h.run_id, "config": {k: v for k, v in config.items() if k != "model"},
                                         "layers": {}, "last": -1})
        position = [spec.index for spec in h.config.layers].index(h.spec.index)
        run["layers"][str(h.spec.index)] = config["model"][position]
        if h.host.last:
            run["last"] = h.spec.index
    return list(runs.values())


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
        self.keys = RunKeys(self.settings["release_seconds"])   # who may change each model's run here
        torch.set_num_threads(self.threads)
        self.lock = threading.RLock()
        self.retired: list[threading.Thread] = []   # workers of stopped layers and shares, maybe still finishing
        self.layers: dict[tuple[str, int], HostedLayer] = {}   # DFF: (model, layer) -> hosted layer
        self.entities: dict[int, list] = {}                     # id(hosted layer) -> its publishers, subscriptions
        self.jobs: dict[str, PFFJob] = {}                   # PFF: model -> this node's share
        self._datasets: dict[tuple, dict] = {}
        self.status_pub = self.create_publisher(LayerStatus, STATUS_TOPIC, STATUS_QOS)
        self.claims_pub = self.create_publisher(ServerClaim, CLAIMS_TOPIC, CLAIMS_QOS)
        self.claims_pub.publish(ServerClaim(name=name, token=token, hostname=socket.gethostname(),
                                            pid=os.getpid(), held=True))
        self.conflict = False
        self.rival = False   # a running server with a lower token claimed this name
        self.create_subscription(ServerClaim, CLAIMS_TOPIC, self._on_claim, CLAIMS_QOS)
        for srv, name, callback in ((CreateLayers, "create_layers", self.on_create),
                                    (DeleteModel, "delete_model", self.on_delete),
                                    (ListLayers, "list_layers", self.on_list),
                                    (SaveWeights, "save_weights", self.on_save),
                                    (FetchParameters, "fetch_parameters", self.on_fetch)):
            self.create_service(srv, "~/" + name, answering(self, name, callback))
        # heartbeats on their own thread: a flood of messages on the executor must not silence
        # them (the master would declare this server lost)
        self.beating = threading.Event()
        self.beater = threading.Thread(target=self._beat, daemon=True, name="heartbeat")
        self.beater.start()
        solo = (f" (PFF runs: {self.solo_threads} while the other nodes have no work)"
                if self.solo_threads > self.threads else "")
        self.get_logger().info(f"ready: weights in {self.weights_dir}, {self.threads} torch thread(s){solo}")

    def publish_status(self, msg: LayerStatus, key: int) -> None:
        """``msg`` stamped and sealed with its run's key ``key`` (the master takes only its
        servers' sealed statuses as heartbeats)."""
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.seal = seal(key, msg)
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
        self.beating.set()
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

    def destroy_node(self) -> None:
        self.beating.set()   # no heartbeat from a node being destroyed
        if self.beater.is_alive() and self.beater is not threading.current_thread():
            self.beater.join(2.0)
        super().destroy_node()

    def _beat(self) -> None:
        while not self.beating.wait(1.0):
            try:
                self._check_rival()
                self._heartbeat()
            except Exception as e:   # ROS shutting down under it, or a status that cannot be built
                if STOPPING.is_set() or self.beating.is_set():
                    return
                self.get_logger().error(f"heartbeat: {type(e).__name__}: {e}", throttle_duration_sec=10.0)

    def _heartbeat(self) -> None:
        """Every hosted layer's and running PFF share's status, once a second: the master's
        sign that this server is alive."""
        with self.lock:
            running = list(self.jobs.values())   # finished shares too: their nodes are alive
            hosted = list(self.layers.values())
        for job in running:
            if job.thread is not None and job.thread.is_alive():   # a share at work: its run is live
                self.keys.heard(job.model)
            self.publish_status(job.status(), job.key)
        for h in hosted:
            if h.phase == "training":
                self.keys.heard(h.model)
            self._status(h)

    def _on_claim(self, msg) -> None:
        # another *running* server holds the same name with a lower token: it keeps the name.
        # A newcomer's tentative claim never dislodges a running server; the newcomer sees this
        # server in the graph and moves on. A claim alone proves nothing (anyone can publish
        # one): the graph must show a second node of this name.
        if msg.held and msg.name == self.get_name() and msg.token != self.token and msg.token < self.token:
            self.rival = True   # checked again each heartbeat: the graph may not show it yet
            self._check_rival()

    def _check_rival(self) -> None:
        if self.rival and not self.layers and not self.jobs and self._namesakes() > 1:
            self.conflict = True

    def _namesakes(self) -> int:
        me = (self.get_name(), self.get_namespace())
        return sum(1 for n in self.get_node_names_and_namespaces() if n == me)

    # ------------------------------------------------------------------ services
    def on_create(self, req: CreateLayers.Request, res: CreateLayers.Response):
        pff = req.transport == "parameters"
        refused = self.keys.refusal("create_layers", req.model, key=req.run_key, creating=req.run_id)
        if refused:
            return self._refuse(res, refused)
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
            self.keys.hold(req.model, req.run_id, req.run_key)
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
            res.restored_paths = [str(h.path) if h.restored_from else "" for h in built]
            res.message = (f"hosting layer(s) {[h.spec.index for h in built]} of {req.model!r}"
                           + (f"; resumed after chapter(s) {[h.host.chapters_done for h in built]}" if req.resume_from
                              else "".join(f"; layer {h.spec.index} restored from {h.restored_from}"
                                           for h in built if h.restored_from)))
        self.get_logger().info(res.message)
        return res

    def _build(self, req: HostRequest, wiring: dict[int, dict]) -> list[HostedLayer]:
        resume = {p.part: p for p in req.resume}
        out = []
        for spec in req.model.layers:
            ends = wiring[spec.index]
            h = HostedLayer(req, spec, {k: v for k, v in ends.items() if k != "last"}, last=ends["last"],
                            weights_dir=self.weights_dir)
            # alone on this server too: another hosted layer would share its torch threads
            h.host.use_cores(self.solo_threads, lambda h=h: h.above_finished() and list(self.layers.values()) == [h])
            if spec.index in resume:
                h.resume(resume[spec.index])
            elif req.restore:
                why = h.restore()
                if why:
                    self.get_logger().warning(why)
            out.append(h)
        return out

    def _build_pff(self, req: HostRequest) -> PFFJob:
        m, plan, train = req.model, req.plan, req.model.train
        if req.evaluate_only:   # nothing to train: a robot with saved weights needs no training data
            x, y = torch.empty(0, *m.layers[0].in_shape), torch.empty(0, dtype=torch.long)
        else:
            data = self._dataset(m.dataset, req.data_root)
            m.check_data(data["info"], f"{m.dataset.name} on {self.key}")
            x, y = data["train_images"], data["train_labels"]
        if train.train_subset:
            x, y = x[:train.train_subset], y[:train.train_subset]
        if plan.variant == "federated":  # this node's own shard; the other rows never leave their nodes
            idx = shard_indices(len(y), req.node_index, plan.nodes, train.seed)
            x, y = x[idx], y[idx]
        return PFFJob(self, run_id=req.run_id, config=m, plan=plan, index=req.node_index, images=x, labels=y,
                      hashes={s.index: weights.layer_key(m, s) for s in m.layers}, history=req.param_history,
                      wait_seconds=self.wait_seconds, evaluate_only=req.evaluate_only,
                      start_chapter=req.start_chapter, key=req.run_key)

    def _dataset(self, dataset, root: str) -> dict:
        # the server's own data root wins: the master's path may not exist on this robot
        root = self.data_root or root or None
        key = (dataset.to_json(), root)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(dataset, root)
        return self._datasets[key]

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
        refused = self.keys.refusal("delete_model", req.model, run_id=req.run_id, key=req.run_key)
        if refused:
            return self._refuse(res, refused)
        with self.lock:
            gone = self._drop_model(req.model)
            self.keys.release(req.model)
        res.success, res.deleted = True, gone
        res.message = f"deleted {gone} layer(s) of {req.model!r}"
        if req.weights:
            removed, folder = weights.remove_model_files(self.weights_dir, req.model)
            res.message += f" and {removed} saved weight file(s) in {folder}"
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
            hosted = list(self.layers.values())
        res.hosted_runs = [json.dumps(run) for run in hosted_runs(hosted)]
        for name, size, saved_at in weights.saved_files(self.weights_dir, MAX_LISTED_FILES):
            res.saved_files.append(name)
            res.saved_bytes.append(size)
            res.saved_at.append(saved_at)
        return res

    def on_fetch(self, req, res):
        if req.file:
            return self._fetch_saved(req, res)
        refused = self.keys.refusal("fetch_parameters", req.model, key=req.run_key)
        if refused:
            return self._refuse(res, refused)
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
        for model in sorted({h.model for h in chosen} | {j.model for j in jobs}):
            refused = self.keys.refusal("save_weights", model, run_id=req.run_id, key=req.run_key)
            if refused:
                return self._refuse(res, refused)
        try:
            res.paths = [h.save() for h in chosen] + [p for j in jobs for p in j.save()]
            res.success, res.message = True, f"saved {len(res.paths)} layer(s)"
        except (OSError, RuntimeError) as e:   # torch.save reports a full disk as a RuntimeError
            res.success, res.message = False, f"saving failed: {e}"
            self.get_logger().error(res.message)
        return res

    def _refuse(self, res, why: str):
        res.success, res.message = False, why
        self.get_logger().warning(why)
        return res

    def _fetch_saved(self, req, res):
        """A part's weights from a file saved here (``dff-ros export``), weights-only."""
        try:
            tensors, run_id, saved_at, path = weights.read_part_file(self.weights_dir, req.model, req.file, req.part)
        except weights.WeightsError as e:   # say what is wrong with it, stay up
            res.success, res.message = False, str(e)
            return res
        m = res.parameters
        m.header.stamp = self.get_clock().now().to_msg()
        m.run_id, m.model, m.node, m.part = run_id, req.model, self.key, req.part
        m.names, m.tensors = list(tensors), [to_msg(t) for t in tensors.values()]
        m.metric_names, m.metric_values = ["saved_at"], [saved_at]
        res.success, res.message = True, f"{path} ({len(tensors)} tensors)"
        return res

    # ------------------------------------------------------------------ data path
    def _start(self, h: HostedLayer) -> None:
        entities = self.entities[id(h)] = [
            self.create_publisher(TrainingBatch, h.topics["train_output"], DATA_QOS),
            self.create_publisher(InferenceBatch, h.topics["infer_output"], DATA_QOS),
            self.create_publisher(LayerParameters, checkpoints_topic(h.model), params_qos(h.checkpoint_depth)),
        ]
        train_pub, infer_pub, checkpoint_pub = entities
        entities += [
            subscribe_serialized(self, TrainingBatch, h.topics["train_input"], lambda m, h=h: self._receive(h, m, True),
                                 DATA_QOS, lambda why, h=h: self._drop(h, "malformed", why)),
            subscribe_serialized(self, InferenceBatch, h.topics["infer_input"], lambda m, h=h: self._receive(h, m, False),
                                 DATA_QOS, lambda why, h=h: self._drop(h, "malformed", why)),
        ]
        # a chapter's checkpoint goes out as soon as it is trained: what a replacement resumes from
        h.host.on_checkpoint = lambda p: publish_serialized(checkpoint_pub, params_to_msg(
            p, run_id=h.run_id, model=h.model, node_name=self.key, node=self, msg=blank(LayerParameters), key=h.key))
        h.worker = threading.Thread(target=self._work, args=(h, train_pub, infer_pub), daemon=True,
                                    name=f"layer{h.spec.index}-{h.model}")
        h.worker.start()
        self._status(h, "created", f"{h.spec.module} {list(h.spec.in_shape)}->{list(h.spec.out_shape)}")

    def _stop(self, h: HostedLayer) -> None:
        h.host.stop()   # a chapter in training ends at its next minibatch
        h.inbox.put(_STOP)
        self._retire(h.worker)
        for e in self.entities.pop(id(h), []):
            if hasattr(e, "topic_name") and hasattr(e, "publish"):
                self.destroy_publisher(e)
            else:
                self.destroy_subscription(e)

    def _receive(self, h: HostedLayer, msg, training: bool) -> None:
        foreign = h.foreign(msg.run_id, msg.model, msg.layer)
        if foreign is not None:
            return self._drop(h, *foreign)
        h.bytes_in += nbytes(msg)
        # a training chunk must come from the run's writers; an inference chunk may come from
        # anyone (the classifier), and its output is sealed only if it did
        from_run = sealed(h.key, msg)
        if training and not from_run:
            return self._drop(h, "unsealed", "its seal does not verify with the run's key")
        if not from_run and not h.take_unsealed_place():
            return self._drop(h, "busy", f"{UNSEALED_WAITING} unsealed inference chunks are waiting already")
        try:
            chunk = train_from_msg(msg) if training else infer_from_msg(msg)
        except Exception as e:   # ChunkError, or one no check foresaw: raised here, it would end the process
            if not from_run:
                h.free_unsealed_place()
            return self._drop(h, "malformed", str(e) if isinstance(e, ChunkError) else f"{type(e).__name__}: {e}")
        if training:
            try:
                h.host.note_attempt(chunk)
            except ChunkError as e:
                return self._drop(h, "malformed", str(e))
        if from_run:
            self.keys.heard(h.model)
        h.inbox.put((training, chunk, from_run))

    def _drop(self, h: HostedLayer, kind: str, why: str) -> None:
        """Count a chunk that is not for this layer or does not fit it; the first of each kind is
        logged, the rest only counted (LayerStatus.dropped, and per kind in its message)."""
        if h.drop(kind):
            self.get_logger().warning(f"layer {h.spec.index} of {h.model!r}: dropped {'an' if kind[0] in 'aeiou' else 'a'} {kind} chunk ({why}); "
                                      f"more {kind} chunks are only counted (see /dff/status)")

    def _work(self, h: HostedLayer, train_pub, infer_pub) -> None:
        last_status = 0.0
        while True:
            item = h.inbox.get()
            if item is _STOP:
                return
            training, chunk, from_run = item  # chunk tensors keep the message buffers alive
            try:
                if training:
                    outs = h.train(chunk)
                    for out in outs:
                        if h.host.stopped:
                            return
                        m = train_to_msg(out, run_id=h.run_id, model=h.model, layer=h.spec.index, node=self,
                                         msg=blank(TrainingBatch), key=h.key)
                        h.sent(out.chapter, nbytes(m))
                        publish_serialized(train_pub, m)
                    if h.finished(chunk, outs):
                        h.phase = "trained"
                        self._status(h, "trained", f"weights saved to {h.save()}")
                        continue
                else:
                    m = infer_to_msg(h.infer(chunk), run_id=h.run_id, model=h.model, layer=h.spec.index, node=self,
                                     msg=blank(InferenceBatch), key=h.key if from_run else 0)
                    h.sent(None, nbytes(m))
                    publish_serialized(infer_pub, m)
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
            finally:
                if not from_run:   # its place in the inbox is free again
                    h.free_unsealed_place()
            now = time.monotonic()
            if now - last_status >= 1.0:
                last_status = now
                self._status(h, h.phase)

    def _status(self, h: HostedLayer, phase: str | None = None, message: str = "") -> None:
        self.publish_status(status_to_msg(h.status(self.key, phase, message), LayerStatus()), h.key)


MAX_LISTED_FILES = 1000   # saved weights listed by list_layers
INT_LIMIT = 2 ** 31 - 1   # ROS integer parameters are int64; no setting needs more


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
