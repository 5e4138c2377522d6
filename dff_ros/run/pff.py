"""A PFF run (transport: parameters): plan the nodes, have each server start its share, follow
the run on the nodes' task reports, move a lost node's share to a spare server, take over a run a
killed master left, then fetch the final parameter versions, assemble the network and test it.
Servers read their own training data; only parameters cross the network, and the master takes
only the final ones.
"""
from __future__ import annotations

import threading
import time

from dff_ros.config.pipeline import place_layers
from dff_ros.ff.classifiers import accuracy
from dff_ros.ff.history import EpochMeans, curves
from dff_ros.ff.schedule import chapters
from dff_ros.parts.names import NEGATIVES, part_names
from dff_ros.parts.versions import MalformedVersion, Parameters
from dff_ros.pff.plan import PFFPlan
from dff_ros.pff.worker import network_from_parts
from dff_ros.progress import Progress
from dff_ros.run.base import Run
from dff_ros.run.cluster import Delivery, HostRequest, RunError
from dff_ros.topics import params_topic


class PFFRun(Run):
    """One PFF run of ``model`` over the cluster's servers; ``run()`` returns its summary."""

    def __init__(self, cluster, pipeline, model, **kw):
        super().__init__(cluster, pipeline, model, **kw)
        self.mode = pipeline.pff_variant
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
        p = self.pipeline
        if p.pff_variant == "single_layer":
            per_layer = place_layers(self.L, servers, p.placement, p.source)
            nodes = sorted(set(per_layer), key=per_layer.index)
            return PFFPlan.for_model(self.model, "single_layer", len(nodes),
                                     tuple(nodes.index(s) for s in per_layer)), nodes
        nodes = sorted(servers, key=lambda s: (len(s), s))[:p.servers]
        return PFFPlan.for_model(self.model, p.pff_variant, len(nodes)), nodes


    def create(self, plan: PFFPlan, nodes: list[str], *, evaluate_only: bool = False,
               answered: list[float] | None = None, only: int | None = None,
               start_chapter: int = 0) -> dict[str, list[int]]:
        """Give every node (or node ``only``, from ``start_chapter``) its share; a node starts
        training as it answers. Returns the parts each node restored (evaluate_only)."""
        calls = [(server, HostRequest(self.run_id, self.model, tuple(range(self.L)), plan=plan, node_index=index,
                                      evaluate_only=evaluate_only, start_chapter=start_chapter,
                                      data_root=self.pipeline.data_root or self.model.dataset.root or "",
                                      param_history=self.pipeline.param_history, run_key=self.run_key))
                 for index, server in enumerate(nodes) if only is None or index == only]
        restored = {}
        for (server, _), report in zip(calls, self.cluster.host(calls, answered=answered)):
            self.log.info(f"{server}: {report.message}")
            restored[server] = [p for p, r in enumerate(report.restored) if r]
        return restored

    # ------------------------------------------------------------------ following the run
    def _decode(self, d: Delivery, where: str) -> Parameters | None:
        if d.model != self.model.name or d.run_id != self.run_id:
            return None
        try:
            return d.decode()
        except MalformedVersion as e:
            self.dropped += 1
            self.log.warning(f"dropped a message on {where} ({e})", throttle_duration_sec=5.0)
            return None

    def on_task(self, d: Delivery) -> None:
        report = self._decode(d, "the task reports")
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
        out = []
        for (server, part), (delivery, size) in zip(wanted, self.cluster.fetch(self.model.name, wanted, key=self.run_key)):
            self.fetched_bytes += size
            params = self._decode(delivery, f"{server}'s answer")
            if params is None or params.part != part or params.version != self.model.train.splits:
                raise RunError(f"{server} answered with something else than {self.names[part]} "
                               f"version {self.model.train.splits}")
            out.append(params)
        return out

    def wait_trained(self, plan: PFFPlan, nodes: list[str], on_news=lambda: None) -> None:
        """Until every part's final version is reported. A lost node's share goes to a spare
        server (``replace``); ``nodes`` is updated in place. ``on_news``: after new reports."""
        final = self.model.train.splits
        progress = Progress(self.parts * final, f"train {self.model.name} (PFF {self.pipeline.pff_variant}, "
                            f"{len(nodes)} nodes)", enabled=self.show_progress,
                            listener=self.publish_progress)
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
                errors = self.errors_of(nodes)
                if errors:
                    raise RunError("a node failed: " + "; ".join(errors))
                lost = self.heartbeats.first_lost(nodes)
                quiet = time.monotonic() - self.last_news
                if lost is None and quiet > self.pipeline.stall_seconds:
                    missing = [f"{self.names[p]} v{final}" for p in range(self.parts) if self.versions.get(p, 0) < final]
                    raise RunError(f"no task done for {quiet:.0f} s while waiting for {', '.join(missing)} "
                                        f"(are {', '.join(nodes)} still running? see /dff/status)")
            if lost is not None:
                self.replace(plan, nodes, lost)
            self.drop_returned()

    def replace(self, plan: PFFPlan, nodes: list[str], lost) -> None:
        """A spare server takes the lost node's place (same node index) from the first chapter
        whose tasks of that node were not all reported, or earlier where their inputs went with
        the lost node (``PFFPlan.resume_chapter``); the versions before it come from the
        parameter topics' history. Tasks the lost node did again from the same inputs give the
        same versions (adaptive negatives it scored are scored again, see PFFWorker)."""
        why = None
        if not self.pipeline.recover:
            why = "recover: false"
        live = [s for s in self.live_servers() if s not in nodes]
        if why is None and not live:
            why = "no spare server (start one more server than the run uses)"
        if why is not None:
            raise RunError(f"{lost}; its PFF share cannot move: {why}")
        began = time.perf_counter()
        index, spare = nodes.index(lost.server), live[0]
        start = plan.resume_chapter(index, self.model.train.splits, self.reported())
        self.log.warning(f"{lost}: node {index}'s share moves to {spare}, from chapter {start}")
        nodes[index] = spare
        self.create(plan, nodes, only=index, start_chapter=start)
        with self.cond:
            self.last_news = time.monotonic()
        self.recoveries.append({
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
        self.write_run_state({
            "transport": "parameters", "variant": plan.variant, "nodes": list(nodes),
            "layer_nodes": list(plan.layer_nodes), "started_at": started_at, "setup_seconds": setup_seconds,
            "chapters_done": self.chapters_done(plan), "attempt": 0, "recoveries": self.recoveries})

    def taken_over(self, servers: list[str]) -> dict | None:
        """The PFF run a killed master of this model left, if every node of it still runs it:
        this master then follows it to the end (same run id) instead of starting again."""
        state = self.read_run_state("parameters")
        if state is None:
            return None
        nodes, run_id = list(state["nodes"]), state["run_id"]
        hosting = self.hosting([s for s in nodes if s in servers], run_id)
        gone = [s for s in nodes if not hosting.get(s)]
        if gone:
            self.log.warning(f"PFF run {run_id} of {self.model.name!r}: {', '.join(gone)} no longer "
                                             f"run(s) it; starting a new run")
            return None
        try:
            plan = PFFPlan.for_model(self.model, state["variant"], len(nodes), tuple(state["layer_nodes"]))
        except ValueError as e:
            self.log.warning(f"PFF run {run_id}: {e}; starting a new run")
            return None
        self.run_id, self.run_key = run_id, int(state.get("run_key", 0))   # 0: a state from before keys
        self.recoveries.extend(state.get("recoveries", []))
        self.resumed = {"run_id": run_id, "chapters_done": int(state["chapters_done"]), "nodes": nodes}
        self.log.info(f"taking over PFF run {run_id} (interrupted after {state['chapters_done']} chapter(s)); "
                        f"nodes {', '.join(nodes)}")
        return {**state, "plan": plan, "nodes": nodes}

    def gather_saved(self, plan: PFFPlan, nodes: list[str]) -> dict:
        """train: false. Every node loads the final versions saved on it; each part is fetched
        from the node that saved it last."""
        restored = self.create(plan, nodes, evaluate_only=True)
        missing = [self.names[p] for p in range(self.parts) if not any(p in r for r in restored.values())]
        if missing:
            raise RunError(f"train: false needs saved weights of every part; none of {', '.join(nodes)} has "
                                f"{', '.join(missing)} for this model spec in its weights dir "
                                f"(run once with train: true)")
        saved = self.fetch([(server, part) for server, parts in restored.items() for part in parts])
        for part in range(self.parts):
            self.latest[part] = max((v for v in saved if v.part == part), key=lambda v: v.meta["saved_at"])
        return {part: nodes[int(v.meta["node"])] for part, v in self.latest.items()}

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        p, data = self.pipeline, self.data
        servers = self.cluster.servers()
        try:
            plan, nodes = self.plan(servers)
        except ValueError as e:
            raise RunError(str(e)) from None
        if not p.train:
            try:
                sources = self.gather_saved(plan, nodes)
                result = self.evaluate(data)
            finally:
                if not p.keep_layers:
                    self.drop_layers(nodes)
            return {**self._about(plan, nodes, result), "trained": False, "weights_restored": True,
                    "restored_from": {self.names[part]: server for part, server in sorted(sources.items())},
                    "weights": {}}
        state = self.taken_over(servers)
        if state is not None:
            plan, nodes = state["plan"], state["nodes"]
        self.log.info(f"PFF {plan.variant}: {len(nodes)} node(s) {', '.join(nodes)}; "
                   + (f"layer nodes {list(plan.layer_nodes)}" if plan.layer_nodes else "chapter j on node j mod N"))
        created = time.perf_counter()
        answered: list[float] = []
        self.cluster.follow_tasks(self.model, self.on_task, key=self.run_key)   # (a master that took over gets the reports so far)
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
            status = self.wait_phase(nodes, "trained", timeout=30.0)
            final = self.model.train.splits - 1
            fetching = time.perf_counter()
            self.latest = {v.part: v for v in self.fetch([(nodes[plan.trainer(part, final)], part)
                                                          for part in range(self.parts)])}
            fetch_seconds = time.perf_counter() - fetching
            result = self.evaluate(data)
            paths = self.save_all(nodes)
            self.finished()
        finally:
            if not p.keep_layers:
                self.drop_layers(nodes)
        return {**self.summary(plan, nodes, train_seconds, setup_seconds, result, status, paths),
                "fetch_seconds": round(fetch_seconds, 2), "master_bytes_received": self.fetched_bytes}

    def evaluate(self, data: dict) -> dict:
        self.publish_progress(phase="testing")
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
        lost = [r["server"] for r in self.recoveries]   # a lost node keeps its row
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
            "recoveries": self.recoveries, "heartbeats_late": dict(self.heartbeats.late), "save_errors": self.save_errors,
            "run_state_write_failures": self.state_write_failures,
            "dropped": self.dropped, "statuses_dropped": dict(self.status_gate.dropped), "weights": paths,
            "history": {**curves({("head" if p == self.L else f"layer_{p}"): h
                                   for p, h in sorted(self.histories.items())}, t.epochs),
                        "chapter_epochs": [c.epochs[-1] for c in chapters(t.epochs, t.splits)],
                        "bytes_per_chapter": {k: [v.get(c, 0) for c in range(t.splits)]
                                              for k, v in sorted(self.chapter_bytes.items())}},
            "optimizer_state_passed": plan.passes_optimizer, "negatives_lag": plan.negatives_lag}

    def _about(self, plan: PFFPlan, nodes: list[str], result: dict) -> dict:
        """What every PFF summary says: the run, its nodes, the test result and the settings."""
        return {"run_id": self.run_id, "model": self.model.name, "mode": "pff", "transport": "parameters",
                "pff_variant": plan.variant, "nodes": nodes, "resumed": self.resumed,
                "accuracy": result["accuracy"],
                "eval_seconds": result["eval_seconds"], "test_samples": result["test_samples"],
                "config": self.model.to_dict(), "pipeline": dict(vars(self.pipeline))}

    def _samples(self) -> int:
        t = self.model.train
        return t.train_subset or len(self.data["train_labels"])
