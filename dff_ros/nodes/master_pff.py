"""The master's side of a PFF run (transport: parameters): plan nodes, have each server start
its share, follow the run on the nodes' task reports, then fetch the final parameter versions,
assemble the network and test it. Servers read their own training data; only parameters cross
the network, and the master takes only the final ones.
"""
from __future__ import annotations

import threading
import time

from rclpy.serialization import serialize_message

from dff_ros.config.pipeline import plan_layers
from dff_ros.ff.classifiers import accuracy
from dff_ros.ff.history import EpochMeans, curves
from dff_ros.ff.schedule import chapters
from dff_ros.msg import LayerParameters
from dff_ros.nodes.common import TASKS_QOS, params_topic, tasks_topic
from dff_ros.pff.plan import NEGATIVES, PFFPlan
from dff_ros.pff.store import Parameters
from dff_ros.pff.worker import network_from_parts, part_names
from dff_ros.pipeline.chunks import ChunkError
from dff_ros.progress import Progress
from dff_ros.srv import CreateLayers, FetchParameters, SaveWeights
from dff_ros.transport.codec import params_from_msg, spec_to_msg, to_parameters


class ParameterRun:
    def __init__(self, master, run_error: type[Exception]):
        self.master, self.RunError = master, run_error
        self.p, self.model = master.p, master.model
        t = self.model.train
        self.L = len(self.model.layers)
        self.head = t.algorithm == "ff" and "softmax" in t.classifiers
        self.names = part_names(self.model)
        self.parts = self.L + int(self.head)
        self.latest: dict[int, Parameters] = {}  # part -> the newest version fetched
        self.versions: dict[int, int] = {}       # part -> the newest version reported trained
        self.bytes: dict[str, int] = {}          # serialized bytes published per params topic
        self.fetched_bytes = 0                   # what the master itself received of them
        self.tasks: list[dict] = []
        self.histories: dict[int, EpochMeans] = {}   # part -> per-epoch loss, training accuracy
        self.chapter_bytes: dict[str, dict[int, int]] = {}  # link -> chapter -> bytes published
        self.scoring: list[dict] = []            # adaptive negatives scored (node, start, end)
        self.dropped = 0
        self.cond = threading.Condition()
        self.last_news = time.monotonic()

    # ------------------------------------------------------------------ plan, create
    def plan(self, servers: list[str]) -> tuple[PFFPlan, list[str]]:
        p = self.p
        if p.pff_variant == "single_layer":
            per_layer = plan_layers(self.L, servers, p.placement, p.source)
            nodes = sorted(set(per_layer), key=per_layer.index)
            return PFFPlan.for_model(self.model, "single_layer", len(nodes),
                                     tuple(nodes.index(s) for s in per_layer)), nodes
        nodes = sorted(servers, key=lambda s: (len(s), s))[:p.servers]
        return PFFPlan.for_model(self.model, p.pff_variant, len(nodes)), nodes

    def follow(self) -> None:
        self.master.create_subscription(LayerParameters, tasks_topic(self.model.name), self._on_task, TASKS_QOS)

    def create(self, plan: PFFPlan, nodes: list[str], *, evaluate_only: bool = False,
               answered: list[float] | None = None, only: int | None = None,
               start_chapter: int = 0) -> dict[str, list[int]]:
        """Give every node (or node ``only``, from ``start_chapter``) its share; a node starts
        training as it answers. Returns the parts each node restored (evaluate_only)."""
        m, p = self.model, self.p
        train = m.to_dict()["train"]
        no_topics = dict.fromkeys(("train_input", "train_output", "infer_input", "infer_output"), "")
        calls = []
        for index, server in enumerate(nodes):
            if only is not None and index != only:
                continue
            req = CreateLayers.Request(
                run_id=self.master.run_id, model=m.name, num_classes=m.num_classes, restore_weights=False,
                train=to_parameters(train), transport="parameters", pff_variant=plan.variant, node_index=index,
                num_nodes=plan.nodes, layer_nodes=list(plan.layer_nodes), dataset=m.dataset.name,
                data_root=p.data_root or m.dataset.root or "", param_history=p.param_history,
                evaluate_only=evaluate_only, start_chapter=start_chapter)
            req.layers = [spec_to_msg(s, no_topics, s.index == self.L - 1) for s in m.layers]
            calls.append((f"/{server}/create_layers", req))
        restored = {}
        for (_, req), res in zip(calls, self.master.call_all(CreateLayers, calls, answered=answered)):
            server = nodes[req.node_index]
            if not res.success:
                raise self.RunError(f"{server} refused its PFF share: {res.message}")
            self.master.log(f"{server}: {res.message}")
            restored[server] = [p for p, r in enumerate(res.weights_restored) if r]
        return restored

    # ------------------------------------------------------------------ following the run
    def _decode(self, msg, topic: str) -> Parameters | None:
        if msg.model != self.model.name or msg.run_id != self.master.run_id:
            return None
        try:
            return params_from_msg(msg)
        except ChunkError as e:
            self.dropped += 1
            self.master.get_logger().warning(f"dropped a message on {topic} ({e})", throttle_duration_sec=5.0)
            return None

    def _on_task(self, msg) -> None:
        report = self._decode(msg, tasks_topic(self.model.name))
        if report is None:
            return
        part, meta = report.part, report.meta
        with self.cond:
            topic = params_topic(self.model.name, part, self.L)
            self.bytes[topic] = self.bytes.get(topic, 0) + int(meta.get("bytes", 0))
            link = f"{meta.get('node_name', '?')}: {self.names[part]}"   # who published what
            per_chapter = self.chapter_bytes.setdefault(link, {})
            per_chapter[report.version - 1] = per_chapter.get(report.version - 1, 0) + int(meta.get("bytes", 0))
            if part == NEGATIVES:      # labels sent to other nodes: only their bytes count here
                return
            self.histories.setdefault(part, EpochMeans()).load(meta)
            if "negatives_start" in meta:  # the node scored adaptive negatives before this task
                self.scoring.append({"node": meta["node"], "node_name": meta.get("node_name"), "part": NEGATIVES,
                                     "chapter": int(meta["negatives_for"]),
                                     "start": meta["negatives_start"], "end": meta["negatives_end"], "inputs": {}})
            self.versions[part] = max(self.versions.get(part, 0), report.version)
            self.tasks.append({**{k: v for k, v in meta.items()
                                  if k != "inputs" and not k.startswith(("negatives_", "epoch_"))},
                               "part": part, "inputs": meta["inputs"]})
            self.last_news = time.monotonic()
            self.cond.notify_all()

    def fetch(self, wanted: list[tuple[str, int]]) -> list[Parameters]:
        """Final versions of (server, part) pairs, by service: only the master receives them."""
        calls = [(f"/{server}/fetch_parameters", FetchParameters.Request(model=self.model.name, part=part))
                 for server, part in wanted]
        out = []
        for (server, part), res in zip(wanted, self.master.call_all(FetchParameters, calls)):
            if not res.success:
                raise self.RunError(f"{server} could not give {self.names[part]}: {res.message}")
            self.fetched_bytes += len(serialize_message(res.parameters))
            params = self._decode(res.parameters, f"/{server}/fetch_parameters")
            if params is None or params.part != part or params.version != self.model.train.splits:
                raise self.RunError(f"{server} answered with something else than {self.names[part]} "
                                    f"version {self.model.train.splits}")
            out.append(params)
        return out

    def wait_trained(self, plan: PFFPlan, nodes: list[str], on_news=lambda: None) -> None:
        """Until every part's final version is reported. A lost node's share goes to a spare
        server (``replace``); ``nodes`` is updated in place. ``on_news``: after new reports."""
        final = self.model.train.splits
        progress = Progress(self.parts * final, f"train {self.model.name} (PFF {self.p.pff_variant}, "
                            f"{len(nodes)} nodes)", enabled=self.master.show_progress,
                            listener=self.master.publish_progress)
        seen = 0
        while True:
            with self.cond:   # (released while a share is moved: task reports keep coming in)
                if len(self.versions) == self.parts and all(v == final for v in self.versions.values()):
                    return
                self.cond.wait(1.0)
                if len(self.tasks) > seen:
                    last = self.tasks[-1]
                    progress.update(len(self.tasks) - seen, chapter=int(last["chapter"]) + 1,
                                    part=self.names[last["part"]], loss=float(last.get("loss", float("nan"))))
                    seen = len(self.tasks)
                    on_news()
                errors = self.master.errors_of(nodes)
                if errors:
                    raise self.RunError("a node failed: " + "; ".join(errors))
                lost = self.master.lost_server(nodes)
                quiet = time.monotonic() - self.last_news
                if lost is None and quiet > self.p.stall_seconds:
                    missing = [f"{self.names[p]} v{final}" for p in range(self.parts) if self.versions.get(p, 0) < final]
                    raise self.RunError(f"no task done for {quiet:.0f} s while waiting for {', '.join(missing)} "
                                        f"(are {', '.join(nodes)} still running? see /dff/status)")
            if lost is not None:
                self.replace(plan, nodes, lost)

    def replace(self, plan: PFFPlan, nodes: list[str], lost) -> None:
        """A spare server takes the lost node's place (same node index) from the first chapter
        whose tasks of that node were not all reported, or earlier where their inputs went with
        the lost node (``PFFPlan.resume_chapter``); the versions before it come from the
        parameter topics' history. Tasks the lost node did again from the same inputs give the
        same versions (adaptive negatives it scored are scored again, see PFFWorker)."""
        why = None
        if not self.p.recover:
            why = "recover: false"
        live = [s for s in self.master.live_servers() if s not in nodes]
        if why is None and not live:
            why = "no spare server (start one more server than the run uses)"
        if why is not None:
            raise self.RunError(f"{lost}; its PFF share cannot move: {why}")
        began = time.perf_counter()
        index, spare = nodes.index(lost.server), live[0]
        start = plan.resume_chapter(index, self.model.train.splits, self.reported())
        self.master.get_logger().warning(f"{lost}: node {index}'s share moves to {spare}, from chapter {start}")
        nodes[index] = spare
        self.create(plan, nodes, only=index, start_chapter=start)
        with self.cond:
            self.last_news = time.monotonic()
        self.master.recoveries.append({
            "server": lost.server, "node": index, "to": spare, "silent_seconds": round(lost.silent_seconds, 2),
            "takeover_seconds": round(time.perf_counter() - began, 2), "resumed_from_chapter": start})

    # ------------------------------------------------------------------ master restart
    def reported(self) -> set[tuple[int, int]]:
        """(part, chapter) of every task reported so far."""
        with self.cond:
            return {(task["part"], int(task["chapter"])) for task in self.tasks}

    def chapters_done(self, plan: PFFPlan) -> int:
        """Chapters whose every task was reported."""
        done = self.reported()
        return next((c for c in range(self.model.train.splits) if any((p, c) not in done for p in range(plan.parts))),
                    self.model.train.splits)

    def save_state(self, plan: PFFPlan, nodes: list[str], started_at: float, setup_seconds: float) -> None:
        """What a restarted master needs to take this run over: the nodes run it on their own,
        the task reports say how far they are."""
        self.master.write_run_state({
            "transport": "parameters", "variant": plan.variant, "nodes": list(nodes),
            "layer_nodes": list(plan.layer_nodes), "started_at": started_at, "setup_seconds": setup_seconds,
            "head_done": self.chapters_done(plan), "attempt": 0, "recoveries": self.master.recoveries})

    def taken_over(self, servers: list[str]) -> dict | None:
        """The PFF run a killed master of this model left, if every node of it still runs it:
        this master then follows it to the end (same run id) instead of starting again."""
        state = self.master.read_run_state("parameters")
        if state is None:
            return None
        nodes, run_id = list(state["nodes"]), state["run_id"]
        hosting = self.master.hosting([s for s in nodes if s in servers], run_id)
        gone = [s for s in nodes if not hosting.get(s)]
        if gone:
            self.master.get_logger().warning(f"PFF run {run_id} of {self.model.name!r}: {', '.join(gone)} no longer "
                                             f"run(s) it; starting a new run")
            return None
        try:
            plan = PFFPlan.for_model(self.model, state["variant"], len(nodes), tuple(state["layer_nodes"]))
        except ValueError as e:
            self.master.get_logger().warning(f"PFF run {run_id}: {e}; starting a new run")
            return None
        self.master.run_id = run_id
        self.master.recoveries.extend(state.get("recoveries", []))
        self.master.resumed = {"run_id": run_id, "head_done": int(state["head_done"]), "nodes": nodes}
        self.master.log(f"taking over PFF run {run_id} (interrupted after {state['head_done']} chapter(s)); "
                        f"nodes {', '.join(nodes)}")
        return {**state, "plan": plan, "nodes": nodes}

    def gather_saved(self, plan: PFFPlan, nodes: list[str]) -> dict:
        """train: false. Every node loads the final versions saved on it; each part is fetched
        from the node that saved it last."""
        restored = self.create(plan, nodes, evaluate_only=True)
        missing = [self.names[p] for p in range(self.parts) if not any(p in r for r in restored.values())]
        if missing:
            raise self.RunError(f"train: false needs saved weights of every part; none of {', '.join(nodes)} has "
                                f"{', '.join(missing)} for this model spec in its weights dir "
                                f"(run once with train: true)")
        saved = self.fetch([(server, part) for server, parts in restored.items() for part in parts])
        for part in range(self.parts):
            self.latest[part] = max((v for v in saved if v.part == part), key=lambda v: v.meta["saved_at"])
        return {part: nodes[int(v.meta["node"])] for part, v in self.latest.items()}

    # ------------------------------------------------------------------ the run
    def run(self, servers: list[str], data: dict) -> dict:
        m, p, master = self.model, self.p, self.master
        try:
            plan, nodes = self.plan(servers)
        except ValueError as e:
            raise self.RunError(str(e)) from None
        if not p.train:
            try:
                sources = self.gather_saved(plan, nodes)
                result = self.evaluate(data)
            finally:
                if not p.keep_layers:
                    master.delete(nodes)
            return {**self._about(plan, nodes, result), "trained": False, "weights_restored": True,
                    "restored_from": {self.names[part]: server for part, server in sorted(sources.items())},
                    "weights": {}}
        state = self.taken_over(servers)
        if state is not None:
            plan, nodes = state["plan"], state["nodes"]
        master.log(f"PFF {plan.variant}: {len(nodes)} node(s) {', '.join(nodes)}; "
                   + (f"layer nodes {list(plan.layer_nodes)}" if plan.layer_nodes else "chapter j on node j mod N"))
        created = time.perf_counter()
        answered: list[float] = []
        self.follow()   # (a master that took over gets the task reports so far: transient local)
        try:
            if state is None:
                self.create(plan, nodes, answered=answered)
                # training time from the first node's start (its answer): like the sequential
                # trainer's, it leaves out loading data and building the model
                started_at = time.time() - (time.perf_counter() - min(answered))
                setup_seconds = min(answered) - created
            else:
                started_at, setup_seconds = state["started_at"], state["setup_seconds"]
            self.save_state(plan, nodes, started_at, setup_seconds)
            self.wait_trained(plan, nodes, lambda: self.save_state(plan, nodes, started_at, setup_seconds))
            train_seconds = time.time() - started_at
            # every node done (a replacement may still be taking final versions from the topics)
            status = master.wait_phase(nodes, "trained", timeout=30.0)
            final = self.model.train.splits - 1
            fetching = time.perf_counter()
            self.latest = {v.part: v for v in self.fetch([(nodes[plan.trainer(part, final)], part)
                                                          for part in range(self.parts)])}
            fetch_seconds = time.perf_counter() - fetching
            result = self.evaluate(data)
            paths = {}
            for server in nodes:
                res = master.call(SaveWeights, f"/{server}/save_weights", SaveWeights.Request(model=m.name))
                if not res.success:
                    raise self.RunError(f"{server} could not save weights: {res.message}")
                paths[server] = list(res.paths)
            master.run_state_path().unlink(missing_ok=True)   # finished: nothing to take over
        finally:
            if not p.keep_layers:
                master.delete(nodes)
        return {**self.summary(plan, nodes, train_seconds, setup_seconds, result, status, paths),
                "fetch_seconds": round(fetch_seconds, 2), "master_bytes_received": self.fetched_bytes}

    def evaluate(self, data: dict) -> dict:
        self.master.publish_progress(phase="testing")
        t = self.model.train
        x, y = data["test_images"], data["test_labels"]
        if t.test_subset:
            x, y = x[:t.test_subset], y[:t.test_subset]
        net = network_from_parts(self.model, {p: v.tensors for p, v in self.latest.items()})
        start = time.perf_counter()
        acc = {c: round(accuracy(net, x, y, c, t.goodness, t.eval_batch_size), 5) for c in t.classifiers}
        return {"accuracy": acc, "eval_seconds": round(time.perf_counter() - start, 2), "test_samples": len(y)}

    def summary(self, plan: PFFPlan, nodes: list[str], train_seconds: float, setup_seconds: float, result: dict,
                status: dict, paths: dict) -> dict:
        t = self.model.train
        total_bytes = sum(self.bytes.values())
        per_node = []
        for i, server in enumerate(nodes):
            st = status.get(server)
            per_node.append({"node": i, "server": server,
                             "busy_seconds": round(st.busy_seconds, 2) if st else None,
                             "idle_seconds": round(st.idle_seconds, 2) if st else None,
                             "samples": st.samples if st else None, "dropped": st.dropped if st else None,
                             "bytes_out": st.bytes_out if st else None, "bytes_in": st.bytes_in if st else None})
        busy = sum(n["busy_seconds"] or 0.0 for n in per_node)
        t0 = min(task["start"] for task in self.tasks)
        lost = [r["server"] for r in self.master.recoveries]   # a lost node keeps its row
        rows = nodes + lost

        def server(x):
            return x.get("node_name") or nodes[int(x["node"])]
        timeline = sorted(({"node": rows.index(server(x)), "server": server(x), "part": x["part"],
                            "chapter": int(x["chapter"]), "start": round(x["start"] - t0, 3),
                            "end": round(x["end"] - t0, 3), "wait": x.get("wait"), "inputs": x["inputs"],
                            "threads": x.get("threads")}
                           for x in self.tasks + self.scoring), key=lambda x: (x["start"], x["node"]))
        return {
            **self._about(plan, nodes, result), "layer_nodes": list(plan.layer_nodes), "trained": True,
            "train_seconds": round(train_seconds, 2), "setup_seconds": round(setup_seconds, 2),
            "samples_per_second": round(self._samples() * t.epochs / train_seconds, 1),
            "bytes_published": total_bytes, "bytes_per_epoch": round(total_bytes / t.epochs),
            "bytes_per_topic": dict(self.bytes), "utilisation": round(busy / (len(nodes) * train_seconds), 3),
            "per_node": per_node, "timeline": timeline,
            "timeline_nodes": nodes + [f"{server} (lost)" for server in lost],
            "recoveries": self.master.recoveries,
            "dropped": self.dropped, "weights": paths,
            "history": {**curves({("head" if p == self.L else f"layer_{p}"): h
                                   for p, h in sorted(self.histories.items())}, t.epochs),
                        "chapter_epochs": [c.epochs[-1] for c in chapters(t.epochs, t.splits)],
                        "bytes_per_chapter": {k: [v.get(c, 0) for c in range(t.splits)]
                                              for k, v in sorted(self.chapter_bytes.items())}},
            "optimizer_state_passed": plan.passes_optimizer, "negatives_lag": plan.negatives_lag}

    def _about(self, plan: PFFPlan, nodes: list[str], result: dict) -> dict:
        """What every PFF summary says: the run, its nodes, the test result and the settings."""
        return {"run_id": self.master.run_id, "model": self.model.name, "mode": "pff", "transport": "parameters",
                "pff_variant": plan.variant, "nodes": nodes, "resumed": self.master.resumed,
                "accuracy": result["accuracy"],
                "eval_seconds": result["eval_seconds"], "test_samples": result["test_samples"],
                "config": self.model.to_dict(), "pipeline": dict(vars(self.p))}

    def _samples(self) -> int:
        t = self.model.train
        return t.train_subset or len(self.master.data["train_labels"])
