"""An in-process cluster for the runs (``dff_ros.run.cluster.Cluster``): servers that host real
``LayerHost``s (DFF) or run real ``PFFWorker``s (PFF) and pass chunks, checkpoints, parameter
versions and statuses by direct calls, so a whole run, a recovery and a takeover are tested in
seconds without ROS. What it leaves out is the transport, which test_ros_* cover."""
from __future__ import annotations

import threading
import time

from dff_ros import weights
from dff_ros.control import RunKeys
from dff_ros.parts.state import nbytes_of, part_state
from dff_ros.parts.versions import ParameterStore, Parameters
from dff_ros.pff.worker import PFFWorker, WorkerStopped
from dff_ros.pipeline.host import LayerHost
from dff_ros.pipeline.scoring import checkpoint_depth
from dff_ros.run.cluster import Delivery, HostReport, Hosting, RunError, Status


class Log:
    """A logger like rclpy's (info / warning / error, throttle ignored) that keeps every line."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def _add(self, level):
        return lambda text, **_: self.lines.append((level, text))

    def __getattr__(self, level):
        if level in ("info", "warning", "error", "debug"):
            return self._add(level)
        raise AttributeError(level)

    def text(self, level: str | None = None) -> str:
        return "\n".join(t for lv, t in self.lines if level is None or lv == level)


class MasterGone(BaseException):
    """The master process dies here (a test's stand-in for SIGKILL): nothing is cleaned up."""


class FakeServer:
    def __init__(self, name: str, weights_dir):
        self.name, self.weights_dir = name, weights_dir
        self.alive = True
        self.frozen = False    # SIGSTOPped or cut off: silent, answers nothing
        self.muted = False     # its heartbeats are late (a starved process): silent, answers
        self.cut = False       # once frozen, chunks go to the layers' new hosts (the fake routes to one)
        self.layers: dict[int, tuple[str, str, LayerHost]] = {}   # index -> (model, run_id, host)
        self.hashes: dict[int, str] = {}
        self.job: dict | None = None                             # PFF: this node's share
        self.keys = RunKeys()                                    # what the real server checks

    def check(self, what: str, model: str, *, key: int = 0, creating: str = "") -> None:
        why = self.keys.refusal(what, model, key=key, creating=creating)
        if why:
            raise RunError(f"{self.name} refused: {why}")


class FakeCluster:
    """``names``: the servers. ``on_chunk(server, layer, chunk)``: called as a layer receives a
    training chunk (a test kills a server or the master there); ``on_infer`` likewise for a test
    chunk."""

    def __init__(self, names, weights_dir, *, beat_every: float = 0.05, on_chunk=None, on_infer=None):
        self.servers_ = {n: FakeServer(n, weights_dir) for n in names}
        self.on_chunk = on_chunk or (lambda server, layer, chunk: None)
        self.on_infer = on_infer or (lambda server, layer, chunk: None)
        self.listeners: list = []            # runs: on_status
        self.on_checkpoint = None
        self.checkpoints: dict[tuple[str, int], list[Delivery]] = {}   # (model, layer) -> the topic's history
        self.on_result = None
        self.on_task = None
        self.progress: list = []
        self.master_gone = False             # the master process is gone: nothing it asks is done
        self._master_died = False
        self.published: dict[str, list[Parameters]] = {}   # PFF: the params topics' history, per model
        self.reports: list = []              # PFF: every task report (the tasks topic keeps them all)
        self.data: dict = {}                 # PFF: what the servers read their training data from
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._beats = threading.Thread(target=self._beat, args=(beat_every,), daemon=True)
        self._beats.start()

    def close(self) -> None:
        self._stop.set()
        for s in self.servers_.values():
            if s.job is not None:
                s.job["worker"].stop("cluster closed")

    def listen(self, run) -> None:
        self.listeners = [run]

    def kill(self, server: str) -> None:
        """The server's process dies: it hosts nothing any more and sends no heartbeat."""
        s = self.servers_[server]
        s.alive = False
        if s.job is not None:
            s.job["worker"].stop("killed")

    def freeze(self, server: str) -> None:
        """The server stops (SIGSTOP, a cut link): silent, its layers kept."""
        s = self.servers_[server]
        s.frozen = s.cut = True

    def thaw(self, server: str) -> None:
        """It goes on (SIGCONT, the link healed): heartbeats again, with the layers it had."""
        self.servers_[server].frozen = False

    # ------------------------------------------------------------------ heartbeats
    def statuses(self):
        for s in list(self.servers_.values()):
            if not s.alive or s.frozen or s.muted:
                continue
            for index, (model, run_id, host) in list(s.layers.items()):
                loss, acc = host.history.as_lists(host.train_cfg.epochs)
                yield Status(run_id, model, s.name, layer=index, phase="training", chapter=host.chapter,
                             chapters_done=host.chapters_done, samples=host.samples, epoch_loss=loss,
                             epoch_accuracy=acc)
            if s.job is not None:
                yield Status(s.job["run_id"], s.job["model"], s.name, phase=s.job["phase"], message=s.job["message"],
                             busy_seconds=s.job["worker"].busy_seconds, idle_seconds=s.job["worker"].idle_seconds)

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            for st in list(self.statuses()):
                for run in self.listeners:
                    run.on_status(st)

    # ------------------------------------------------------------------ services
    def servers(self) -> list[str]:
        return sorted((n for n, s in self.servers_.items() if s.alive), key=lambda s: (len(s), s))

    def _server(self, name: str) -> FakeServer:
        s = self.servers_.get(name)
        if s is None or not s.alive or s.frozen:
            raise RunError(f"service /{name}/create_layers is not available")
        return s

    def host(self, calls, *, answered=None, timeout=None) -> list[HostReport]:
        reports = []
        for server, req in calls:
            s = self._server(server)
            s.check("create_layers", req.model.name, key=req.run_key, creating=req.run_id)
            reports.append(self._host_pff(s, req) if req.pff else self._host_dff(s, req))
            s.keys.hold(req.model.name, req.run_id, req.run_key)
            if answered is not None:
                answered.append(time.perf_counter())
        return reports

    def _host_dff(self, s: FakeServer, req) -> HostReport:
        m = req.model
        train = m.to_dict()["train"]
        if not req.add:
            s.layers = {i: v for i, v in s.layers.items() if v[0] != m.name}
        resume = {p.part: p for p in req.resume}
        restored, origins, paths = [], [], []
        for i in req.layers:
            spec = m.layers[i]
            host = LayerHost(spec, m.train, m.num_classes, last=i == len(m.layers) - 1)
            host.on_checkpoint = lambda p, run_id=req.run_id: self._checkpoint(run_id, m, p)
            s.hashes[i] = weights.spec_hash(m.name, spec, train)
            path = weights.model_dir(s.weights_dir, m.name) / weights.layer_file(spec, s.hashes[i])
            origin = ""
            if i in resume:
                host.resume(resume[i])
            elif req.restore and path.exists():
                state, made = weights.read_layer(path, s.hashes[i])
                host.load_state_dict(state)
                origin = weights.describe(path, made)
            restored.append(i in resume or bool(origin))
            origins.append(origin)
            paths.append(str(path) if origin else "")
            s.layers[i] = (m.name, req.run_id, host)
        return HostReport(f"hosting layer(s) {list(req.layers)} of {m.name!r}", tuple(restored), tuple(origins),
                          tuple(paths))

    def drop(self, servers, model, *, key=0, timeout=None) -> None:
        if self.master_gone:
            return
        for name in servers:
            s = self._server(name)
            s.check("delete_model", model, key=key)
            s.keys.release(model)
            s.layers = {i: v for i, v in s.layers.items() if v[0] != model}
            if s.job is not None and s.job["model"] == model:
                s.job["worker"].stop("deleted")
                s.job = None

    def hosting(self, server: str) -> list[Hosting]:
        s = self._server(server)
        out = [Hosting(model, run_id, i) for i, (model, run_id, _) in s.layers.items()]
        if s.job is not None:
            out += [Hosting(s.job["model"], s.job["run_id"], p) for p in s.job["trains"]]
        return out

    def answers(self, server: str, timeout: float) -> bool:
        s = self.servers_.get(server)
        return s is not None and s.alive and not s.frozen

    def save(self, server: str, model: str, *, key: int = 0) -> list[str]:
        s = self._server(server)
        s.check("save_weights", model, key=key)
        out = []
        for i, (name, run_id, host) in sorted(s.layers.items()):
            if name != model:
                continue
            spec = host.spec
            path = weights.model_dir(s.weights_dir, model) / weights.layer_file(spec, s.hashes[i])
            made = weights.made_by(run_id, host.chapters_done, host.train_cfg.splits)
            try:
                out.append(str(weights.save_layer(path, model=model, index=i, spec_hash=s.hashes[i],
                                                  state=host.state_dict(), provenance=made)))
            except (OSError, RuntimeError) as e:   # what the real server answers (success false)
                raise RunError(f"{server} could not save weights: saving failed: {e}") from None
        return out

    # ------------------------------------------------------------------ DFF data path
    def _checkpoint(self, run_id: str, model, p: Parameters) -> None:
        d = Delivery(run_id, model.name, p.part, nbytes_of(p.tensors), lambda: p)
        kept = self.checkpoints.setdefault((model.name, p.part), [])   # transient local, KEEP_LAST depth
        kept[:] = (kept + [d])[-checkpoint_depth(model):]
        if self.on_checkpoint is not None:
            self.on_checkpoint(d)

    def _where(self, index: int):
        for s in self.servers_.values():
            if s.alive and not s.cut and index in s.layers:
                return s
        return None

    def _push(self, index: int, chunk, run_id: str, model, training: bool) -> None:
        s = self._where(index)
        if s is None or not s.alive:
            return   # lost with its server
        (self.on_chunk if training else self.on_infer)(s.name, index, chunk)
        if not s.alive or s.frozen:
            return
        _, layer_run, host = s.layers[index]
        if layer_run != run_id:
            return
        outs = host.train(chunk) if training else [host.infer(chunk)]
        for out in outs:
            if index == len(model.layers) - 1:
                self.on_result(Delivery(run_id, model.name, index, 0, lambda out=out: out), training)
            else:
                self._push(index + 1, out, run_id, model, training)

    def open_pipeline(self, model, on_result, *, key=0):   # no wire: nothing to seal
        self.on_result = on_result

        def sender(training):
            def send(chunk, run_id):
                with self.lock:
                    self._push(0, chunk, run_id, model, training)
                return 1
            return send
        return sender(True), sender(False)

    def wait_connected(self, model, moved) -> None:
        for i, server in moved.items():
            assert i in self.servers_[server].layers, f"layer {i} is not on {server}"

    def follow_checkpoints(self, model, on_checkpoint, *, key=0) -> None:
        """A late subscriber gets what the topic keeps (a master taking a run over)."""
        self.on_checkpoint = on_checkpoint
        for (name, _), kept in list(self.checkpoints.items()):
            for d in kept if name == model.name else ():
                on_checkpoint(d)

    # ------------------------------------------------------------------ PFF
    def _host_pff(self, s: FakeServer, req) -> HostReport:
        m, plan = req.model, req.plan
        x, y = self.data["train_images"], self.data["train_labels"]
        if m.train.train_subset:
            x, y = x[:m.train.train_subset], y[:m.train.train_subset]
        if s.job is not None:
            s.job["worker"].stop("replaced")
        trains = plan.trained_by(req.node_index, m.train.splits)
        receives = plan.received_by(req.node_index, m.train.splits)
        if req.start_chapter:
            receives = sorted(set(receives) | set(trains))
        job = {"model": m.name, "run_id": req.run_id, "phase": "training", "message": "", "trains": trains,
               "receives": set(receives), "index": req.node_index, "splits": m.train.splits}
        store = ParameterStore(publish=lambda p, s=s: self._publish(s, p))
        job["store"] = store
        job["worker"] = PFFWorker(m, x, y, plan, req.node_index, store, wait_seconds=30.0)
        with self.lock:   # the history and the live versions: none published in between is missed
            for p in self.published.get(m.name, []):   # the topics' history (a late or replacement node)
                if p.part in job["receives"] and p.meta.get("node_name") != s.name:
                    store.add(p)
            s.job = job
        threading.Thread(target=self._run_job, args=(s, job, req.start_chapter), daemon=True).start()
        return HostReport(f"PFF node {req.node_index}", tuple(False for _ in range(plan.parts)))

    def _publish(self, s: FakeServer, p: Parameters) -> None:
        if not s.alive:
            return
        job = s.job
        p = Parameters(p.part, p.version, p.tensors, {**p.meta, "node_name": s.name})
        with self.lock:   # (a node being created reads the history under it: see _host_pff)
            self.published.setdefault(job["model"], []).append(p)
            for other in self.servers_.values():
                if other is not s and other.alive and other.job is not None and p.part in other.job["receives"]:
                    other.job["store"].add(p)
        report = Parameters(p.part, p.version, {}, {**p.meta, "bytes": nbytes_of(p.tensors)})
        delivery = Delivery(job["run_id"], job["model"], p.part, 0, lambda: report)
        with self.lock:
            self.reports.append(delivery)
            listener = self.on_task
        if listener is not None:
            listener(delivery)

    def _run_job(self, s: FakeServer, job: dict, start_chapter: int) -> None:
        try:
            job["worker"].run(start_chapter)
            job["phase"] = "trained"
        except WorkerStopped as e:
            job["phase"], job["message"] = "stopped", str(e)
        except Exception as e:
            job["phase"], job["message"] = "error", f"{type(e).__name__}: {e}"

    def fetch(self, model, wanted, *, key=0):
        out = []
        for server, part in wanted:
            s = self._server(server)
            s.check("fetch_parameters", model, key=key)
            w = s.job["worker"]
            if w.held.get(part) != s.job["splits"]:
                raise RunError(f"{server} could not give part {part}: not final here")
            p = Parameters(part, w.held[part], part_state(w.parts[part], optimizer=False), {"node": s.job["index"]})
            out.append((Delivery(s.job["run_id"], model, part, 0, lambda p=p: p), nbytes_of(p.tensors)))
        return out

    def follow_tasks(self, model, on_task, *, key=0) -> None:
        with self.lock:   # a late listener gets the history first (transient local)
            self.on_task = on_task
            history = list(self.reports)
        for d in history:
            on_task(d)

    def publish_progress(self, report) -> None:
        self.progress.append(report)
        if self.master_gone and not self._master_died:   # the master dies at its next report
            self._master_died = True
            raise MasterGone()
