"""Master node: plans a model over the running servers, has them host its layers, streams
MNIST through the DFF activation pipeline (transport: activations) or has them train by
parameter passing (transport: parameters, PFF), tests, and writes a run summary.

    ros2 run dff_ros master --ros-args -p pipeline:=/path/mnist_pipeline.yaml
    python -m dff_ros.nodes.master --pipeline config/mnist_pipeline.yaml [--set key=value]
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import uuid
from pathlib import Path

import rclpy
import yaml
from rclpy.node import Node

from dff_ros.checkpoint import load_weights, save_atomic
from dff_ros.config.pipeline import HELP as PIPELINE_HELP
from dff_ros.config.pipeline import (check_model_layer_types, from_parameter_values, load_layer_types,
                                     load_pipeline_config, parameter_values, plan_layers)
from dff_ros.config.schema import ConfigError, load_model_config
from dff_ros.data.datasets import DatasetMissing, load_dataset
from dff_ros.ff.history import curves, rounded
from dff_ros.ff.schedule import chapters
from dff_ros.msg import InferenceBatch, LayerParameters, LayerStatus, RunProgress, TrainingBatch
from dff_ros.nodes.common import (DATA_QOS, HEAD_WEIGHTS_FORMAT, RUN_STATE_FORMAT, STATUS_QOS, STATUS_TOPIC,
                                  checkpoints_topic, declare_settings, default_weights_dir, discover_servers, head_weights_file, layer_topics, make_executor, params_qos,
                                  path_token, progress_topic, spin_until_shutdown)
from dff_ros.nodes.master_pff import ParameterRun
from dff_ros.pff.worker import check_pff_supported
from dff_ros.pipeline.chunks import ChunkError
from dff_ros.pipeline.driver import PipelineDriver, PipelineStalled, ServerLost, check_supported
from dff_ros.plots import run_plots
from dff_ros.srv import CreateLayers, DeleteModel, ListLayers, SaveWeights
from dff_ros import stopping
from dff_ros.stopping import CLEANUP_SECONDS, STOPPING, Interrupted, rclpy_init
from dff_ros.transport.codec import (infer_from_msg, infer_to_msg, spec_to_msg, to_parameters,
                                     train_from_msg, train_to_msg)
from dff_ros.transport.tensors import nbytes

class RunError(RuntimeError):
    """The run cannot go on; the message says why and what to do."""


class MasterNode(Node):
    def __init__(self, pipeline_file: str, *, sets: dict, train_sets: dict, run_id: str, progress: bool = True):
        """Reads the pipeline YAML with ``sets`` and declares every key as a read-only ROS
        parameter of this node, where ``-p key:=value`` / a params file wins; then the model YAML
        with ``train_sets``. ConfigError / ValueError: a bad file, key or value."""
        super().__init__("dff_master")
        path = declare_settings(self, {"pipeline": pipeline_file}, {"pipeline": "pipeline YAML"})["pipeline"]
        pipeline = load_pipeline_config(path, sets)
        values = declare_settings(self, parameter_values(pipeline), PIPELINE_HELP)
        if values != parameter_values(pipeline):
            pipeline = from_parameter_values(values, f"{path} with ROS parameters")
        model = load_model_config(pipeline.model, train_sets)
        check_model_layer_types(model, load_layer_types(pipeline.layer_types), pipeline.layer_types)
        (check_pff_supported if pipeline.transport == "parameters" else check_supported)(model)
        self.p, self.model, self.run_id, self.show_progress = pipeline, model, run_id, progress
        self.results: queue.Queue = queue.Queue()
        self.status: dict[int, LayerStatus] = {}          # DFF: by layer
        self.server_status: dict[str, LayerStatus] = {}   # latest per server
        self.bytes_sent = self.bytes_received = 0
        self.chapter_bytes_sent: dict[int, int] = {}       # DFF: training bytes sent per chapter
        self.hosted_status: dict[tuple[str, int], LayerStatus] = {}  # DFF: latest per (server, layer): the
        # history of a layer's every host, a lost one's included (plots)
        self.dropped = 0
        self.last_seen: dict[str, float] = {}             # server -> monotonic time of its last status
        self.lost: set[str] = set()
        self.placed: dict[int, dict] = {}                 # DFF: layer -> {"server", "restored"}
        self.checkpoints: dict[int, LayerParameters] = {}  # DFF: newest checkpoint per layer
        self.recoveries: list[dict] = []
        self.resumed: dict | None = None                   # the run this master took over
        self.driver: PipelineDriver | None = None
        self._progress = None                              # the run's latest Progress
        self.progress_pub = self.create_publisher(RunProgress, progress_topic(model.name), params_qos(1))
        self.create_subscription(LayerStatus, STATUS_TOPIC, self._on_status, STATUS_QOS)

    def log(self, text: str) -> None:
        self.get_logger().info(text)

    def publish_progress(self, progress=None, *, phase: str = "training", accuracy: dict | None = None) -> None:
        """RunProgress on /dff/<model>/progress (``progress``: a Progress that just advanced)."""
        if progress is not None:
            self._progress = progress
        pr, m = self._progress, self.model
        msg = RunProgress(run_id=self.run_id, model=m.name, phase=phase, recoveries=len(self.recoveries),
                          mode="dff" if self.p.transport == "activations" else self.p.pff_variant)
        msg.header.stamp = self.get_clock().now().to_msg()
        if pr is not None:
            elapsed, eta = pr.elapsed_eta()
            msg.done, msg.total, msg.fraction = pr.done, pr.total, float(pr.fraction)
            msg.elapsed_seconds, msg.eta_seconds = elapsed, 0.0 if phase != "training" else eta
            msg.epoch = int(pr.info.get("epoch", 0))
        if self.driver is not None:
            msg.chapters_done, msg.chapters = self.driver.head_done, m.train.splits
        elif pr is not None:
            msg.chapters_done, msg.chapters = pr.done, pr.total
        losses, train_acc = {}, {}
        for i, st in sorted(list(self.status.items())):
            if 0 <= i < len(m.layers):
                losses[f"layer_{i}"] = st.loss
                trained = [a for a in st.epoch_accuracy if a == a]
                train_acc[f"layer_{i}"] = trained[-1] if trained else float("nan")
        head = self.driver.head_history if self.driver is not None else None
        if head is not None and head.loss():
            last = max(head.loss())
            losses["head"], train_acc["head"] = head.loss()[last], head.accuracy()[last]
        msg.loss_names, msg.loss_values = list(losses), [float(v) for v in losses.values()]
        msg.train_accuracy_values = [float(train_acc[k]) for k in losses]
        if accuracy:
            msg.accuracy_names, msg.accuracy_values = list(accuracy), [float(v) for v in accuracy.values()]
        self.progress_pub.publish(msg)

    # ------------------------------------------------------------------ servers
    def wait_for_servers(self) -> list[str]:
        want, deadline = self.p.servers, time.monotonic() + self.p.wait_servers_seconds
        while True:
            ready = discover_servers(self)
            if len(ready) >= want:
                return ready
            if time.monotonic() > deadline:
                raise RunError(f"waited {self.p.wait_servers_seconds:.0f} s for {want} server(s), found "
                               f"{len(ready)} ({', '.join(ready) or 'none'}); start them with "
                               "`ros2 run dff_ros server` (same ROS_DOMAIN_ID) or lower `servers`")
            time.sleep(0.2)

    def call(self, srv_type, name: str, request, *, retry_every: float | None = None):
        """One service call. ``retry_every``: for a request that may be sent again (a query),
        resend it after that many seconds without an answer, until the service timeout: a
        request sent before the server's reply path has matched gets no answer (seen with
        busy servers right after a master restart)."""
        if retry_every is None:
            return self.call_all(srv_type, [(name, request)])[0]
        deadline = time.monotonic() + self.p.service_timeout_seconds
        while True:
            try:
                return self.call_all(srv_type, [(name, request)], timeout=retry_every)[0]
            except RunError:
                if time.monotonic() + retry_every > deadline:
                    raise RunError(f"service {name} did not answer in {self.p.service_timeout_seconds:.0f} s "
                                   f"(asked every {retry_every:.0f} s)") from None

    def call_all(self, srv_type, calls: list[tuple[str, object]], *, answered: list[float] | None = None,
                 timeout: float | None = None) -> list:
        """Call several services at once (servers load data or build layers in parallel); every
        answer is awaited with the service timeout (or ``timeout``). ``answered`` gets each
        answer's perf_counter time."""
        timeout = self.p.service_timeout_seconds if timeout is None else timeout
        clients = [self.create_client(srv_type, name) for name, _ in calls]
        try:
            futures = []
            for client, (name, request) in zip(clients, calls):
                if not client.wait_for_service(timeout_sec=timeout):
                    raise RunError(f"service {name} is not available")
                futures.append(client.call_async(request))
            deadline = time.monotonic() + timeout
            seen: set[int] = set()
            while True:
                # noted here, not in a done callback: rclpy runs those later, on the executor
                for i in [i for i, f in enumerate(futures) if i not in seen and f.done()]:
                    seen.add(i)
                    if answered is not None:
                        answered.append(time.perf_counter())
                if len(seen) == len(futures):
                    break
                if time.monotonic() > deadline:
                    late = [name for f, (name, _) in zip(futures, calls) if not f.done()]
                    raise RunError(f"service {', '.join(late)} did not answer in {timeout:.0f} s")
                time.sleep(0.01)
            return [f.result() for f in futures]
        finally:
            for client in clients:
                self.destroy_client(client)

    # ------------------------------------------------------------------ layers
    def distribute(self, servers: list[str]) -> dict[int, dict]:
        plan = plan_layers(len(self.model.layers), servers, self.p.placement, self.p.source)
        placed: dict[int, dict] = {}
        for server in sorted(set(plan), key=plan.index):
            mine = [s.index for s in self.model.layers if plan[s.index] == server]
            placed.update(self.host(server, mine, restore=self.p.restores))
        return placed

    def host(self, server: str, indices: list[int], *, restore: bool, resume: list | None = None) -> dict[int, dict]:
        """Have ``server`` host these layers (``resume``: their checkpoints, added to a running run)."""
        m, layers = self.model, self.model.layers
        last = len(layers) - 1
        req = CreateLayers.Request(run_id=self.run_id, model=m.name, num_classes=m.num_classes,
                                   restore_weights=restore, train=to_parameters(m.to_dict()["train"]),
                                   add_layers=resume is not None, resume_from=resume or [])
        mine = [layers[i] for i in indices]
        req.layers = [spec_to_msg(s, layer_topics(m.name, s.index, last), s.index == last) for s in mine]
        res = self.call(CreateLayers, f"/{server}/create_layers", req)
        if not res.success:
            raise RunError(f"{server} refused layers {indices}: {res.message}")
        if len(res.weights_restored) != len(mine):
            raise RunError(f"{server} confirmed {len(res.weights_restored)} of {len(mine)} layers")
        self.last_seen[server] = time.monotonic()
        self.log(f"{server}: {res.message}")
        origins = list(res.restored_from) + [""] * (len(mine) - len(res.restored_from))
        for s, origin in zip(mine, origins):
            if origin:   # never quietly: which file, which run, how far it trained
                self.get_logger().warning(f"layer {s.index} on {server} starts from saved weights: {origin}")
        return {s.index: {"server": server, "restored": bool(r), "restored_from": o}
                for s, r, o in zip(mine, res.weights_restored, origins)}

    # ------------------------------------------------------------------ faults
    def lost_server(self, servers) -> ServerLost | None:
        """The first of ``servers`` whose heartbeat (its status messages) stopped; from now on
        it is lost: nothing is asked of it any more."""
        now = time.monotonic()
        for s in sorted(set(servers)):
            seen = self.last_seen.get(s)
            if seen is not None and now - seen > self.p.heartbeat_timeout_seconds:
                self.lost.add(s)
                return ServerLost(s, now - seen)
        return None

    def check_servers(self) -> None:
        lost = self.lost_server(v["server"] for v in self.placed.values())
        if lost is not None:
            raise lost

    def live_servers(self) -> list[str]:
        """Servers in the graph that are not lost (checked again now) and answer services."""
        names = set(discover_servers(self))
        while self.lost_server(names - self.lost) is not None:   # more may have gone silent meanwhile
            pass
        return sorted(names - self.lost, key=lambda s: (len(s), s))

    def recover(self, lost: ServerLost) -> int:
        """Move a lost server's layers to the live servers with the fewest layers (a spare one
        first), each resumed from its newest checkpoint; returns the first chapter some layer
        has not trained, where the master resends from."""
        start = time.perf_counter()
        moved = sorted(i for i, v in self.placed.items() if v["server"] == lost.server)
        self.get_logger().warning(f"{lost}: its layer(s) {moved} move to live servers")
        live = self.live_servers()
        if not live:
            raise RunError(f"{lost}, and no live server can take over layer(s) {moved}")
        load = {s: sum(v["server"] == s for v in self.placed.values()) for s in live}
        groups: dict[str, list[int]] = {}
        for i in moved:
            target = min(live, key=lambda s: (load[s], len(s), s))
            load[target] += 1
            groups.setdefault(target, []).append(i)
        for target, indices in groups.items():
            resume = [self.checkpoints[i] for i in indices if i in self.checkpoints]
            hosted = self.host(target, indices, restore=False, resume=resume)
            for i in indices:
                self.placed[i] = {**hosted[i], "restored": self.placed[i]["restored"], "moved_from": lost.server}
        last = len(self.model.layers) - 1
        self._wait_connected([layer_topics(self.model.name, i, last) for i in range(last + 1)],
                             hosts={i: self.placed[i]["server"] for i in moved})
        done = {i: (self.checkpoints[i].version if i in self.checkpoints else 0) if i in moved
                else (self.status[i].chapters_done if i in self.status else 0) for i in self.placed}
        resume_at = min(done.values())
        self.recoveries.append({
            "server": lost.server, "layers": moved, "to": {i: self.placed[i]["server"] for i in moved},
            "silent_seconds": round(lost.silent_seconds, 2), "chapters_done": done, "resumed_from_chapter": resume_at,
            "takeover_seconds": round(time.perf_counter() - start, 2)})
        self.log(f"layer(s) {moved} now on {', '.join(groups)}, resumed after chapter(s) "
                 f"{[done[i] for i in moved]}; took {time.perf_counter() - start:.1f} s")
        return resume_at

    def delete(self, servers) -> None:
        """Drop this model's layers on ``servers`` (all at once; briefly when interrupted)."""
        calls = [(f"/{s}/delete_model", DeleteModel.Request(model=self.model.name)) for s in servers if s not in self.lost]
        if not calls:
            return
        try:
            self.call_all(DeleteModel, calls, timeout=CLEANUP_SECONDS if STOPPING.is_set() else None)
        except RunError as e:
            if STOPPING.is_set():   # a terminal's Ctrl-C reaches the servers too: they are stopping
                self.log(f"not every server answered delete_model ({e}); those are stopping themselves")
            else:
                self.get_logger().warning(f"could not delete the layers of {self.model.name!r}: {e}")
            return
        if STOPPING.is_set():
            self.log(f"dropped run {self.run_id}'s layers on {', '.join(s for s in servers if s not in self.lost)}")

    # ------------------------------------------------------------------ data path
    def connect(self) -> PipelineDriver:
        m = self.model
        first = layer_topics(m.name, 0, len(m.layers) - 1)
        out = layer_topics(m.name, len(m.layers) - 1, len(m.layers) - 1)
        train_pub = self.create_publisher(TrainingBatch, first["train_input"], DATA_QOS)
        infer_pub = self.create_publisher(InferenceBatch, first["infer_input"], DATA_QOS)
        self.create_subscription(TrainingBatch, out["train_output"], lambda msg: self._on_result(msg, True), DATA_QOS)
        self.create_subscription(InferenceBatch, out["infer_output"], lambda msg: self._on_result(msg, False), DATA_QOS)
        self.create_subscription(LayerParameters, checkpoints_topic(m.name), self._on_checkpoint,
                                 params_qos(2 * len(m.layers)))
        self._wait_connected([layer_topics(m.name, i, len(m.layers) - 1) for i in range(len(m.layers))])

        def send(pub, encode):
            def go(chunk):
                msg = encode(chunk, run_id=self.run_id, model=m.name, layer=-1, node=self)
                size = nbytes(msg)
                self.bytes_sent += size
                if encode is train_to_msg:
                    self.chapter_bytes_sent[chunk.chapter] = self.chapter_bytes_sent.get(chunk.chapter, 0) + size
                pub.publish(msg)
            return go

        return PipelineDriver(m, self.data, send_train=send(train_pub, train_to_msg),
                              send_infer=send(infer_pub, infer_to_msg), results=self.results,
                              chunk_rows=self.p.chunk_rows, window=self.p.window,
                              stall_seconds=self.p.stall_seconds, progress=self.show_progress, log=self.log,
                              health=self.check_servers, progress_listener=self.publish_progress,
                              layer_samples=lambda: sum(st.samples for st in list(self.status.values())),
                              recover=self.recover if self.p.recover else None)

    def _wait_connected(self, topics: list[dict], timeout: float = 30.0, hosts: dict[int, str] | None = None) -> None:
        """Every hop has its reader and writer matched before the first chunk goes out
        (volatile topics drop what is published before a reader is there). ``hosts``: layers
        that just moved, whose new server's endpoints must be among them."""
        deadline = time.monotonic() + timeout
        names = [t[k] for t in topics for k in ("train_input", "infer_input")]
        names += [topics[-1]["train_output"], topics[-1]["infer_output"]]

        def moved_missing():
            for i, server in (hosts or {}).items():
                if server not in {e.node_name for e in self.get_subscriptions_info_by_topic(topics[i]["train_input"])}:
                    yield f"{topics[i]['train_input']} (reader on {server})"
                if server not in {e.node_name for e in self.get_publishers_info_by_topic(topics[i]["train_output"])}:
                    yield f"{topics[i]['train_output']} (writer on {server})"

        while True:
            missing = [n for n in names if self.count_publishers(n) < 1 or self.count_subscribers(n) < 1]
            missing += list(moved_missing())
            if not missing:
                time.sleep(0.5)  # graph info is seen before the remote endpoints finish matching
                return
            if time.monotonic() > deadline:
                raise RunError(f"topics not connected after {timeout:.0f} s: {', '.join(missing)}")
            time.sleep(0.1)

    def _on_result(self, msg, training: bool) -> None:
        if msg.model != self.model.name or msg.run_id != self.run_id:
            return
        if msg.layer != len(self.model.layers) - 1:
            self.dropped += 1
            self.get_logger().warning(f"dropped a result from layer {msg.layer} (results come from the last layer)",
                                      throttle_duration_sec=5.0)
            return
        self.bytes_received += nbytes(msg)
        try:
            self.results.put(train_from_msg(msg) if training else infer_from_msg(msg))
        except ChunkError as e:
            self.dropped += 1
            self.get_logger().warning(f"dropped a malformed result ({e})", throttle_duration_sec=5.0)

    def _on_checkpoint(self, msg: LayerParameters) -> None:
        if msg.model != self.model.name or msg.run_id != self.run_id or not 0 <= msg.part < len(self.model.layers):
            return
        old = self.checkpoints.get(msg.part)
        if old is None or msg.version >= old.version:
            self.checkpoints[msg.part] = msg

    def _on_status(self, msg: LayerStatus) -> None:
        self.last_seen[msg.server] = time.monotonic()   # any status is a heartbeat
        if msg.model != self.model.name or msg.run_id != self.run_id:
            return
        self.status[msg.layer] = msg
        self.server_status[msg.server] = msg
        self.hosted_status[(msg.server, msg.layer)] = msg
        if msg.phase == "error":
            self.get_logger().error(f"{msg.server} layer {msg.layer}: {msg.message}")

    def errors_of(self, servers) -> list[str]:
        return [f"{s}: {st.message}" for s, st in self.server_status.items() if s in servers and st.phase == "error"]

    def wait_phase(self, servers, phase: str, timeout: float) -> dict[str, LayerStatus]:
        """Latest status of each server once all report ``phase`` (or whatever came by the timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s in self.server_status and self.server_status[s].phase == phase for s in servers):
                break
            time.sleep(0.1)
        else:
            self.get_logger().warning(f"not every server reported {phase!r} within {timeout:.0f} s")
        return {s: self.server_status[s] for s in servers if s in self.server_status}

    # ------------------------------------------------------------------ head weights
    def head_path(self) -> Path:
        m = self.model
        root = Path(self.p.weights_dir).expanduser() if self.p.weights_dir else default_weights_dir()
        return root / path_token(m.name) / head_weights_file(m.name, [s.out_features for s in m.layers], m.num_classes)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        m, p = self.model, self.p
        try:
            self.data = load_dataset(m.dataset.name, p.data_root or m.dataset.root)
        except DatasetMissing as e:
            raise RunError(str(e)) from None
        servers = self.wait_for_servers()
        self.log(f"servers: {', '.join(servers)}")
        if p.transport == "parameters":
            return ParameterRun(self, RunError).run(servers, self.data)
        state = self.saved_run(servers) if p.train else None
        if state is not None:
            self.run_id, self.placed = state["run_id"], state["placed"]
        else:
            self.placed = self.distribute(servers)
        try:
            return self._train_and_test(state)
        except ServerLost as e:
            why = "recover: false" if not p.recover else "it was lost while testing"
            raise RunError(f"{e}; the run stops ({why})") from None
        except PipelineStalled as e:
            raise RunError(str(e)) from None
        finally:
            if not p.keep_layers:
                self.delete(sorted({v["server"] for v in self.placed.values()}))

    # ------------------------------------------------------------------ master restart
    def run_state_path(self) -> Path:
        return Path(self.p.summary_dir) / f"{path_token(self.model.name)}.run-state.pt"

    def save_run_state(self, driver: PipelineDriver) -> None:
        # where the layers are is asked of the servers on takeover, not kept here
        self.write_run_state({"transport": "activations", **driver.state()})

    def write_run_state(self, state: dict) -> None:
        save_atomic({"format": RUN_STATE_FORMAT, "run_id": self.run_id, "config": self.model.to_dict(), **state},
                    self.run_state_path())

    def read_run_state(self, transport: str) -> dict | None:
        """The state a killed master of this model left for a run of ``transport``, if it is
        one this master can take over; otherwise None, saying why."""
        path = self.run_state_path()
        if not path.exists():
            return None
        try:
            state = load_weights(path)
        except Exception as e:  # a file this version cannot read: say so, start again
            self.get_logger().warning(f"{path}: unreadable run state ({e}); starting a new run")
            return None
        if not isinstance(state, dict) or state.get("format") != RUN_STATE_FORMAT:
            self.get_logger().warning(f"{path}: not a run state; starting a new run")
            return None
        if state["config"] != self.model.to_dict():
            self.get_logger().warning(f"{path}: run {state['run_id']} had another config; starting a new run")
            return None
        if state.get("transport", "activations") != transport:
            self.get_logger().warning(f"{path}: run {state['run_id']} passed {state.get('transport')}, this master "
                                      f"passes {transport}; starting a new run")
            return None
        return state

    def hosting(self, servers: list[str], run_id: str) -> dict[str, list]:
        """Server -> the LayerInfos it lists for run ``run_id`` of this model."""
        out: dict[str, list] = {}
        for server in servers:
            listing = self.call(ListLayers, f"/{server}/list_layers", ListLayers.Request(), retry_every=5.0)
            out[server] = [i for i in listing.layers if i.model == self.model.name and i.run_id == run_id]
        return out

    def saved_run(self, servers: list[str]) -> dict | None:
        """The run a killed master of this model left, if its layers are all still hosted:
        then this master takes it over (same run id) instead of starting again."""
        state = self.read_run_state("activations")
        if state is None:
            return None
        hosted: dict[int, dict] = {}
        for server, infos in self.hosting(servers, state["run_id"]).items():
            for info in infos:
                hosted[info.index] = {"server": server, "restored": info.weights_restored}
        missing = sorted(set(range(len(self.model.layers))) - set(hosted))
        if missing:
            self.get_logger().warning(f"run {state['run_id']} of {self.model.name!r} was interrupted after "
                                      f"{state['head_done']} chapter(s), but layer(s) {missing} are no longer "
                                      f"hosted; starting a new run")
            return None
        self.log(f"taking over run {state['run_id']} (interrupted after {state['head_done']} chapter(s)); "
                 f"layers on {[hosted[i]['server'] for i in sorted(hosted)]}")
        return {**state, "placed": hosted}

    def _layers_done(self, timeout: float = 10.0) -> int:
        """The fewest chapters a layer has trained, from the layers' heartbeats."""
        deadline = time.monotonic() + timeout
        while len(self.status) < len(self.model.layers):
            if time.monotonic() > deadline:
                raise RunError(f"no status from layer(s) {sorted(set(self.placed) - set(self.status))} "
                               f"within {timeout:.0f} s")
            time.sleep(0.1)
        return min(self.status[i].chapters_done for i in self.placed)

    def _train_and_test(self, state: dict | None = None) -> dict:
        m, p, placed = self.model, self.p, self.placed
        driver = self.driver = self.connect()
        head_restored, head_from = False, ""
        if driver.head is not None and p.restores and self.head_path().exists():
            blob = load_weights(self.head_path())
            if isinstance(blob, dict) and blob.get("format") == HEAD_WEIGHTS_FORMAT:
                driver.head.load_state_dict(blob["state_dict"])
                head_restored = True
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(blob.get("saved_at") or
                                                                          self.head_path().stat().st_mtime))
                head_from = f"{self.head_path()} (run {blob.get('run_id', 'unknown')}, saved {when})"
                self.get_logger().warning(f"the softmax head starts from saved weights: {head_from}")
        if state is not None:   # the interrupted run's head, not the last finished one
            driver.restore(state, self._layers_done())
            self.resumed = {"run_id": self.run_id, "head_done": driver.head_done,
                            "from_chapter": driver.start_chapter, "attempt": driver.attempt}
            self.log(f"resending from chapter {driver.start_chapter} (attempt {driver.attempt})")
        driver.on_chapter = lambda: self.save_run_state(driver)
        restored = all(v["restored"] for v in placed.values()) and (driver.head is None or head_restored)
        if not p.train and not restored:
            raise RunError("train: false needs saved weights for every layer and the head; "
                           "none found for this model spec (run once with train: true)")
        fit = {}
        if p.train:
            self.log(f"training {m.name}: {m.train.epochs} epochs, schedule {m.train.schedule}, "
                     f"{len(driver.train_y)} samples, layers on {[placed[i]['server'] for i in sorted(placed)]}")
            fit = driver.fit()
            self.run_state_path().unlink(missing_ok=True)   # finished: nothing to take over
            if driver.head is not None:
                save_atomic({"format": HEAD_WEIGHTS_FORMAT, "state_dict": driver.head.state_dict(),
                             "run_id": self.run_id, "saved_at": time.time()}, self.head_path())
        self.publish_progress(phase="testing")
        result = driver.evaluate()
        paths = {}
        for server in sorted({v["server"] for v in placed.values()}):
            if not p.train:   # nothing changed: the files stay as the run that trained them left them
                paths[server] = [v["restored_from"].split(" (run ")[0] for v in placed.values()
                                 if v["server"] == server and v.get("restored_from")]
                continue
            res = self.call(SaveWeights, f"/{server}/save_weights", SaveWeights.Request(model=m.name))
            if not res.success:
                raise RunError(f"{server} could not save weights: {res.message}")
            paths[server] = list(res.paths)
        restored_from = {f"layer {i}": placed[i]["restored_from"] for i in sorted(placed)
                         if placed[i].get("restored_from")}
        if head_from:
            restored_from["softmax head"] = head_from
        time.sleep(0.3)  # last status messages
        layers = []
        for i in sorted(placed):
            st = self.status.get(i)
            layers.append({"index": i, "server": placed[i]["server"], "weights_restored": placed[i]["restored"],
                           "moved_from": placed[i].get("moved_from"),
                           "busy_seconds": round(st.busy_seconds, 2) if st else None,
                           "bytes_in": st.bytes_in if st else None, "bytes_out": st.bytes_out if st else None,
                           "dropped": st.dropped if st else None, "samples": st.samples if st else None})
        return {"run_id": self.run_id, "model": m.name, "mode": "dff", "schedule": m.train.schedule,
                "accuracy": result["accuracy"], "eval_seconds": result["eval_seconds"], **fit,
                "trained": p.train, "weights_restored": restored, "restored_from": restored_from,
                "head_weights": str(self.head_path()),
                "layers": layers, "weights": paths, "recoveries": self.recoveries, "resumed": self.resumed,
                **(self.history(driver) if p.train else {}),
                "master": {"bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                           "dropped": self.dropped},
                "train_samples": len(driver.train_y), "test_samples": len(driver.test_y),
                "config": m.to_dict(), "pipeline": {k: v for k, v in vars(p).items()}}

    def history(self, driver: PipelineDriver) -> dict:
        """The summary's ``history`` (per-epoch curves, bytes per chapter) and ``timeline``
        (who trained which chapter when), from the layers' status and the head."""
        m, t = self.model, self.model.train
        nan = float("nan")
        hosts = sorted(self.hosted_status.items())
        curves_ = curves({"head": driver.head_history} if driver.head is not None else {}, t.epochs)
        for i in range(len(m.layers)):
            st = self.status.get(i)
            loss, acc = (list(st.epoch_loss), list(st.epoch_accuracy)) if st else ([nan] * t.epochs,) * 2
            curves_["loss"][f"layer_{i}"], curves_["accuracy"][f"layer_{i}"] = rounded(loss), rounded(acc)
        links = {"master -> layer_0": [self.chapter_bytes_sent.get(c, 0) for c in range(t.splits)]}
        for (server, layer), st in hosts:
            after = f"layer_{layer + 1}" if layer + 1 < len(m.layers) else "master"
            link = links.setdefault(f"layer_{layer} -> {after}", [0] * t.splits)
            for c, n in enumerate(st.chapter_bytes_out[:t.splits]):
                link[c] += int(n)
        servers = sorted({server for server, _ in self.hosted_status}, key=lambda s: (len(s), s))
        nodes = servers + ["master"]
        spans = [(servers.index(server), layer, c, a, b) for (server, layer), st in hosts
                 for c, (a, b) in enumerate(zip(st.chapter_start, st.chapter_end)) if a == a]
        spans += [(len(servers), len(m.layers), c, a, b) for c, (a, b) in sorted(driver.head_spans.items())]
        t0 = min((x[3] for x in spans), default=0.0)
        timeline = [{"node": n, "server": nodes[n], "part": part, "chapter": c, "start": round(a - t0, 3),
                     "end": round(b - t0, 3)} for n, part, c, a, b in sorted(spans, key=lambda x: (x[3], x[0]))]
        return {"nodes": nodes, "timeline": timeline,
                "history": {**curves_, "chapter_epochs": [c.epochs[-1] for c in chapters(t.epochs, t.splits)],
                            "bytes_per_chapter": links}}


def parse_set(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def build_arg_parser() -> argparse.ArgumentParser:
    a = argparse.ArgumentParser(prog="dff_ros master", description=__doc__.split("\n\n")[0])
    a.add_argument("--pipeline", help="pipeline YAML (default: the package's config/mnist_pipeline.yaml)")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a pipeline key")
    a.add_argument("--train-set", action="append", metavar="KEY=VALUE", help="override a model train key")
    a.add_argument("--run-id", default="", help="run id (default: random)")
    a.add_argument("--no-progress", action="store_true")
    return a


def config_file(name: str) -> str:
    """A file of the package's config/: the repo's when running from a checkout, else share/dff_ros."""
    here = Path(__file__).resolve().parents[2] / "config" / name
    if here.exists():
        return str(here)
    from ament_index_python.packages import get_package_share_directory
    return str(Path(get_package_share_directory("dff_ros")) / "config" / name)


def default_pipeline() -> str:
    return config_file("mnist_pipeline.yaml")


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    args = build_arg_parser().parse_args(rclpy.utilities.remove_ros_args(argv)[1:])
    rclpy_init(argv)   # SIGINT / SIGTERM: drop the run's layers on the servers, then shut down
    executor = spinner = node = None
    try:
        try:
            node = MasterNode(args.pipeline or default_pipeline(), sets=parse_set(args.set),
                              train_sets=parse_set(args.train_set), run_id=args.run_id or uuid.uuid4().hex[:8],
                              progress=not args.no_progress)
        except (ConfigError, ValueError) as e:
            print(f"[master] config error: {e}", file=sys.stderr)
            return 2
        pipeline, model = node.p, node.model
        executor = make_executor()
        executor.add_node(node)
        spinner = threading.Thread(target=spin_until_shutdown, args=(executor, rclpy.get_default_context()),
                                   daemon=True)
        spinner.start()
        try:
            summary = node.run()
        except (RunError, ConfigError) as e:
            node.get_logger().error(str(e))
            return 1
        node.publish_progress(phase="done", accuracy=summary["accuracy"])
        log = node.get_logger()   # the results go to /rosout too
        out = Path(pipeline.summary_dir) / f"{path_token(model.name)}-{node.run_id}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2, default=str))
        try:
            for png in run_plots(summary, model, out.with_suffix("")):
                log.info(f"plot: {png}")
        except ImportError as e:
            log.warning(f"no plots ({e}); pip install matplotlib")
        for part, origin in (summary.get("restored_from") or {}).items():
            log.warning(f"{part} started from saved weights: {origin}")
        acc = ", ".join(f"{k} {100 * v:.2f} %" for k, v in summary["accuracy"].items())
        log.info(f"{model.name}: test accuracy {acc}"
                 + (f"; trained in {summary['train_seconds']} s" if summary.get("train_seconds") else " (restored weights)"))
        log.info(f"summary: {out}")
        for server, paths in summary["weights"].items():
            for path in paths:
                log.info(f"weights on {server}: {path}")
        if summary.get("head_weights"):
            log.info(f"head weights: {summary['head_weights']}")
        return 0
    except Interrupted as e:
        if node is not None:
            node.get_logger().warning(f"{e}: run {node.run_id} stopped")
        return e.exit_code
    finally:
        if rclpy.ok():
            rclpy.shutdown()  # ends the spinner's loop
        if spinner is not None:
            spinner.join(timeout=5.0)
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        stopping.ignore()


if __name__ == "__main__":
    sys.exit(main())
