"""Master node: reads the pipeline and model YAMLs (every key a read-only ROS parameter), waits
for the servers and runs the model on them: a DFF activation pipeline (transport: activations,
``dff_ros.run.dff``) or PFF parameter passing (transport: parameters, ``dff_ros.run.pff``).
This module is the runs' cluster over ROS 2: services to the servers, the data topics, status
and progress. It writes the run's summary and plots at the end.

    ros2 run dff_ros master --ros-args -p pipeline:=/path/mnist_pipeline.yaml
    python -m dff_ros.nodes.master --pipeline config/mnist_pipeline.yaml [--set key=value]
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.serialization import serialize_message

from dff_ros import stopping, weights
from dff_ros.config.files import default_pipeline, parse_set
from dff_ros.config.pipeline import HELP as PIPELINE_HELP
from dff_ros.config.pipeline import (check_model_layer_types, from_parameter_values, load_layer_types,
                                     load_pipeline_config, parameter_values)
from dff_ros.config.schema import ConfigError, load_model_config
from dff_ros.data import DatasetMissing, load_dataset
from dff_ros.msg import InferenceBatch, LayerParameters, LayerStatus, RunProgress, TrainingBatch
from dff_ros.nodes.common import (DATA_QOS, STATUS_QOS, TASKS_QOS, declare_settings, discover_servers,
                                  make_executor, params_qos, publish_serialized, spin_until_shutdown,
                                  subscribe_serialized)
from dff_ros.pff.worker import check_pff_supported
from dff_ros.pipeline.driver import check_supported
from dff_ros.pipeline.scoring import checkpoint_depth
from dff_ros.plots import run_plots
from dff_ros.run.cluster import Delivery, HostReport, Hosting, RunError
from dff_ros.run.dff import DFFRun
from dff_ros.run.pff import PFFRun
from dff_ros.srv import CreateLayers, DeleteModel, FetchParameters, ListLayers, SaveWeights
from dff_ros.stopping import STOPPING, Interrupted, rclpy_init
from dff_ros.wire.codec import (host_report_from_msg, host_request_to_msg, infer_from_msg, infer_to_msg,
                                     params_from_msg, progress_to_msg, status_from_msg, train_from_msg,
                                     train_to_msg)
from dff_ros.wire.cdr import blank
from dff_ros.wire.seal import sealed
from dff_ros.wire.tensors import nbytes
from dff_ros.topics import STATUS_TOPIC, checkpoints_topic, layer_topics, progress_topic, tasks_topic


class MasterNode(Node):
    """The master: its settings as ROS parameters, and the cluster its run talks to."""

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
        model = load_model_config(pipeline.model, train_sets, data_root=pipeline.data_root)
        check_model_layer_types(model, load_layer_types(pipeline.layer_types), pipeline.layer_types)
        pff = pipeline.transport == "parameters"
        (check_pff_supported if pff else check_supported)(model)
        self.pipeline, self.model = pipeline, model
        self.run = (PFFRun if pff else DFFRun)(self, pipeline, model, run_id=run_id, log=self.get_logger(),
                                               show_progress=progress)
        self.progress_pub = self.create_publisher(RunProgress, progress_topic(model.name), params_qos(1))
        self.create_subscription(LayerStatus, STATUS_TOPIC, self._on_status, STATUS_QOS)

    def _on_status(self, m) -> None:
        """A status of this run is a heartbeat only if one of its servers sent it: sealed with
        the run key and not a replay (wire/seal.py); anyone can send one naming a lost server."""
        run = self.run
        if m.model == run.model.name and m.run_id == run.run_id and not run.status_gate.admit(run.run_key, m):
            if sum(run.status_gate.dropped.values()) == 1:
                self.get_logger().warning(f"dropped a status naming {m.server!r} that its server did not send "
                                          "(unsealed or replayed); more are only counted (run summary)")
            return
        run.on_status(status_from_msg(m))

    def malformed(self, what: str, why: str) -> None:
        """Bytes on a data topic that are not its message: counted with the run's dropped
        results, logged (throttled), never raised into the spinner."""
        self.run.dropped += 1
        self.get_logger().warning(f"dropped a malformed {what} ({why}); {self.run.dropped} dropped so far",
                                  throttle_duration_sec=5.0)

    # ------------------------------------------------------------------ service calls
    def call_all(self, srv_type, calls: list[tuple[str, object]], *, answered: list[float] | None = None,
                 timeout: float | None = None, resend_every: float | None = None) -> list:
        """Call several services at once (servers load data or build layers in parallel); every
        answer is awaited with the service timeout (or ``timeout``). ``answered`` gets each
        answer's perf_counter time. ``resend_every``: for a request that may be sent twice (a
        query, delete_model), send it again after that many seconds without an answer: a request
        that beats the server's reply path to matching a new client gets no answer (seen with
        busy servers after a master restart and on Ctrl-C)."""
        timeout = self.pipeline.service_timeout_seconds if timeout is None else timeout
        # a client per call: kept ones answered a brief delete_model on Ctrl-C less reliably
        clients = [self.create_client(srv_type, name) for name, _ in calls]
        try:
            deadline = time.monotonic() + timeout
            for client, (name, _) in zip(clients, calls):
                if not client.wait_for_service(timeout_sec=max(0.0, deadline - time.monotonic())):
                    raise RunError(f"service {name} is not available")
            sent = [[c.call_async(req)] for c, (_, req) in zip(clients, calls)]   # every attempt's future
            last_send = time.monotonic()
            results: dict[int, object] = {}
            while len(results) < len(calls):
                # noted here, not in a done callback: rclpy runs those later, on the executor
                for i, futures in enumerate(sent):
                    done = next((f for f in futures if f.done()), None)
                    if i not in results and done is not None:
                        results[i] = done.result()
                        if answered is not None:
                            answered.append(time.perf_counter())
                now = time.monotonic()
                if len(results) < len(calls) and now > deadline:
                    late = [name for i, (name, _) in enumerate(calls) if i not in results]
                    how = f" (sent every {resend_every:g} s)" if resend_every else ""
                    raise RunError(f"service {', '.join(late)} did not answer in {timeout:g} s{how}")
                if resend_every is not None and now - last_send >= resend_every:
                    for i, (client, (_, req)) in enumerate(zip(clients, calls)):
                        if i not in results:
                            sent[i].append(client.call_async(req))
                    last_send = now
                time.sleep(0.01)
            return [results[i] for i in range(len(calls))]
        finally:
            for client in clients:
                self.destroy_client(client)

    def call(self, srv_type, name: str, request, *, resend_every: float | None = None):
        """One service call (``resend_every``: see call_all)."""
        return self.call_all(srv_type, [(name, request)], resend_every=resend_every)[0]

    # ------------------------------------------------------------------ the cluster (dff_ros.run.cluster)
    def servers(self) -> list[str]:
        return discover_servers(self)

    def wait_for_servers(self) -> list[str]:
        want, deadline = self.pipeline.servers, time.monotonic() + self.pipeline.wait_servers_seconds
        while True:
            ready = self.servers()
            if len(ready) >= want:
                return ready
            if time.monotonic() > deadline:
                raise RunError(f"waited {self.pipeline.wait_servers_seconds:.0f} s for {want} server(s), found "
                               f"{len(ready)} ({', '.join(ready) or 'none'}); start them with "
                               "`ros2 run dff_ros server` (same ROS_DOMAIN_ID) or lower `servers`")
            time.sleep(0.2)

    def host(self, calls, *, answered=None, timeout=None) -> list[HostReport]:
        requests = [(f"/{server}/create_layers", host_request_to_msg(req, CreateLayers.Request()))
                    for server, req in calls]
        reports = []
        for (server, req), res in zip(calls, self.call_all(CreateLayers, requests, answered=answered, timeout=timeout)):
            if not res.success:
                what = "its PFF share" if req.pff else f"layers {list(req.layers)}"
                raise RunError(f"{server} refused {what}: {res.message}")
            reports.append(host_report_from_msg(res))
        return reports

    def drop(self, servers, model: str, *, key: int = 0, timeout=None) -> None:
        self.call_all(DeleteModel, [(f"/{s}/delete_model", DeleteModel.Request(model=model, run_key=key))
                                    for s in servers],
                      # resent only when stopping: a late copy must not delete layers hosted after it
                      timeout=timeout, resend_every=0.4 if STOPPING.is_set() else None)

    def hosting(self, server: str) -> list[Hosting]:
        listing = self.call(ListLayers, f"/{server}/list_layers", ListLayers.Request(), resend_every=5.0)
        return [Hosting(i.model, i.run_id, i.index, i.weights_restored) for i in listing.layers]

    def answers(self, server: str, timeout: float) -> bool:
        try:
            self.call_all(ListLayers, [(f"/{server}/list_layers", ListLayers.Request())], timeout=timeout)
            return True
        except RunError:
            return False

    def save(self, server: str, model: str, *, key: int = 0) -> list[str]:
        res = self.call(SaveWeights, f"/{server}/save_weights", SaveWeights.Request(model=model, run_key=key))
        if not res.success:
            raise RunError(f"{server} could not save weights: {res.message}")
        return list(res.paths)

    def fetch(self, model: str, wanted, *, key: int = 0) -> list[tuple[Delivery, int]]:
        calls = [(f"/{server}/fetch_parameters", FetchParameters.Request(model=model, part=part, run_key=key))
                 for server, part in wanted]
        out = []
        for (server, part), res in zip(wanted, self.call_all(FetchParameters, calls)):
            if not res.success:
                raise RunError(f"{server} could not give part {part}: {res.message}")
            m = res.parameters
            out.append((Delivery(m.run_id, m.model, m.part, 0, lambda m=m: params_from_msg(m)), len(serialize_message(m))))
        return out

    def open_pipeline(self, model, on_result, *, key: int = 0):
        last = len(model.layers) - 1
        first, out = layer_topics(model.name, 0, last), layer_topics(model.name, last, last)
        train_pub = self.create_publisher(TrainingBatch, first["train_input"], DATA_QOS)
        infer_pub = self.create_publisher(InferenceBatch, first["infer_input"], DATA_QOS)

        def receive(msg_type, decode, training):
            self._subscribe_sealed(msg_type, out[f"{'train' if training else 'infer'}_output"], DATA_QOS, key,
                                   f"{msg_type.__name__} from the last layer", lambda m: on_result(
                                       Delivery(m.run_id, m.model, m.layer, nbytes(m), lambda: decode(m)), training))

        receive(TrainingBatch, train_from_msg, True)
        receive(InferenceBatch, infer_from_msg, False)
        self.wait_connected(model, {})

        def sender(pub, encode):
            def send(chunk, run_id: str) -> int:
                msg = encode(chunk, run_id=run_id, model=model.name, layer=-1, node=self, msg=blank(pub.msg_type),
                             key=key)
                publish_serialized(pub, msg)
                return nbytes(msg)
            return send

        return sender(train_pub, train_to_msg), sender(infer_pub, infer_to_msg)

    def wait_connected(self, model, moved: dict[int, str], timeout: float = 30.0) -> None:
        """Every hop has its reader and writer matched before the first chunk goes out
        (volatile topics drop what is published before a reader is there); a layer that just
        moved has its new server's endpoints among them."""
        last = len(model.layers) - 1
        topics = [layer_topics(model.name, i, last) for i in range(last + 1)]
        deadline = time.monotonic() + timeout
        names = [t[k] for t in topics for k in ("train_input", "infer_input")]
        names += [topics[-1]["train_output"], topics[-1]["infer_output"]]

        def moved_missing():
            for i, server in moved.items():
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

    def _subscribe_sealed(self, msg_type, topic: str, qos, key: int, what: str, callback) -> None:
        """``callback`` gets the messages on ``topic`` sealed with the run key ``key``; the rest,
        and bytes that do not parse, are counted as malformed (wire/seal.py)."""
        def heard(m):
            if not sealed(key, m):   # not from this run's writers
                return self.malformed(what, "its seal does not verify with the run's key")
            callback(m)
        subscribe_serialized(self, msg_type, topic, heard, qos, lambda why: self.malformed(what, why))

    def _follow_parameters(self, topic: str, qos, listener, key: int) -> None:
        self._subscribe_sealed(LayerParameters, topic, qos, key, f"LayerParameters on {topic}", lambda m: listener(
            Delivery(m.run_id, m.model, m.part, nbytes(m), lambda: params_from_msg(m))))

    def follow_checkpoints(self, model, on_checkpoint, *, key: int = 0) -> None:
        self._follow_parameters(checkpoints_topic(model.name), params_qos(2 * checkpoint_depth(model) * len(model.layers)),
                                on_checkpoint, key)

    def follow_tasks(self, model, on_task, *, key: int = 0) -> None:
        self._follow_parameters(tasks_topic(model.name), TASKS_QOS, on_task, key)

    def publish_progress(self, report) -> None:
        msg = progress_to_msg(report, RunProgress())
        msg.header.stamp = self.get_clock().now().to_msg()
        self.progress_pub.publish(msg)

    # ------------------------------------------------------------------ the run
    def start(self) -> dict:
        """Load the data, wait for the servers, run; the run's summary."""
        m, run = self.model, self.run
        try:
            run.data = load_dataset(m.dataset, self.pipeline.data_root or m.dataset.root)
        except DatasetMissing as e:
            raise RunError(str(e)) from None
        m.check_data(run.data["info"], m.dataset.name)
        self.get_logger().info(f"servers: {', '.join(self.wait_for_servers())}")
        return run.run()


def build_arg_parser() -> argparse.ArgumentParser:
    a = argparse.ArgumentParser(prog="dff_ros master", description=__doc__.split("\n\n")[0])
    a.add_argument("--pipeline", help="pipeline YAML (default: the package's config/mnist_pipeline.yaml)")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a pipeline key")
    a.add_argument("--train-set", action="append", metavar="KEY=VALUE", help="override a model train key")
    a.add_argument("--run-id", default="", help="run id (default: random)")
    a.add_argument("--no-progress", action="store_true")
    return a


def report(node: MasterNode, summary: dict) -> bool:
    """Write the summary and plots; say where they are and what the run reached. False when the
    summary or some weights could not be saved (a full disk): the master then exits 1."""
    log, model = node.get_logger(), node.model   # the results go to /rosout too
    out = Path(node.pipeline.summary_dir) / f"{weights.path_token(model.name)}-{node.run.run_id}.json"
    text = json.dumps(summary, indent=2, default=str)
    try:
        weights.write_text_atomic(out, text)
    except OSError as e:   # a full disk: the summary goes to the log instead, nothing is lost
        log.error(f"could not write the summary {out} ({e}); here it is: {json.dumps(summary, default=str)}")
        out = None
    try:
        for png in run_plots(summary, model, out.with_suffix("")) if out is not None else ():
            log.info(f"plot: {png}")
    except ImportError as e:
        log.warning(f"no plots ({e}); pip install matplotlib")
    except (OSError, RuntimeError, ValueError) as e:   # a full disk while saving a PNG
        log.error(f"could not write the plots beside {out}: {e}")
    for part, origin in (summary.get("restored_from") or {}).items():
        log.warning(f"{part} started from saved weights: {origin}")
    acc = ", ".join(f"{k} {100 * v:.2f} %" for k, v in summary["accuracy"].items())
    log.info(f"{model.name}: test accuracy {acc}"
             + (f"; trained in {summary['train_seconds']} s" if summary.get("train_seconds") else " (restored weights)"))
    if out is not None:
        log.info(f"summary: {out}")
    for server, paths in summary["weights"].items():
        for path in paths:
            log.info(f"weights on {server}: {path}")
    if summary.get("head_weights"):
        log.info(f"head weights: {summary['head_weights']}")
    for where, why in (summary.get("save_errors") or {}).items():
        log.error(f"not saved: {where}: {why}")
    return out is not None and not summary.get("save_errors")


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
        except DatasetMissing as e:   # the model's shape is read from the data
            print(f"[master] {e}", file=sys.stderr)
            return 3
        executor = make_executor()
        executor.add_node(node)
        spinner = threading.Thread(target=spin_until_shutdown, args=(executor, rclpy.get_default_context()),
                                   daemon=True)
        spinner.start()
        try:
            summary = node.start()
        except (RunError, ConfigError) as e:
            node.get_logger().error(str(e))
            return 1
        node.run.publish_progress(phase="done", accuracy=summary["accuracy"])
        return 0 if report(node, summary) else 1
    except Interrupted as e:
        if node is not None:
            node.get_logger().warning(f"{e}: run {node.run.run_id} stopped")
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
