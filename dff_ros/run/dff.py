"""A DFF run (transport: activations): place the model's layers on the servers, stream the
training data through them chapter by chapter (``dff_ros.pipeline.driver``), move a lost
server's layers to live ones, take over a run a killed master left, test, save, summarise."""
from __future__ import annotations

import queue
import time

from dff_ros import weights
from dff_ros.config.pipeline import place_layers
from dff_ros.ff.history import curves, rounded
from dff_ros.ff.schedule import chapters
from dff_ros.parts.state import nonfinite
from dff_ros.parts.versions import MalformedVersion, Parameters
from dff_ros.pipeline.driver import PipelineDriver, PipelineStalled, ServerLost
from dff_ros.pipeline.scoring import NetworkSnapshots, layer_shapes, scored_versions
from dff_ros.run.base import Run
from dff_ros.run.cluster import Delivery, HostRequest, ProgressReport, RunError, Status


class DFFRun(Run):
    """One DFF run of ``model`` over the cluster's servers; ``run()`` returns its summary."""
    mode = "dff"

    def __init__(self, cluster, pipeline, model, **kw):
        super().__init__(cluster, pipeline, model, **kw)
        self.status: dict[int, Status] = {}              # by layer: its latest status
        self.hosted_status: dict[tuple[str, int], Status] = {}   # by (server, layer): every host's latest,
        # a lost one's included (plots)
        self.placed: dict[int, dict] = {}                # layer -> {"server", "restored", "restored_from"}
        self.checkpoints: dict[int, Parameters] = {}     # newest checkpoint per layer
        # adaptive negatives: the networks the master scores them with, from the same checkpoints
        versions = scored_versions(model)
        self.snapshots = NetworkSnapshots(len(model.layers), versions, layer_shapes(model)) if versions else None
        self.results: queue.Queue = queue.Queue()
        self.bytes_sent = self.bytes_received = self.dropped = 0
        self.chapter_bytes_sent: dict[int, int] = {}    # training bytes sent per chapter
        self.driver: PipelineDriver | None = None
        self.head_saved: str | None = None               # where the head was saved (None: not saved)

    def note_status(self, st: Status) -> None:
        self.status[st.layer] = st
        self.hosted_status[(st.server, st.layer)] = st

    # ------------------------------------------------------------------ layers
    def distribute(self, servers: list[str]) -> dict[int, dict]:
        where = place_layers(len(self.model.layers), servers, self.pipeline.placement, self.pipeline.source)
        placed: dict[int, dict] = {}
        for server in sorted(set(where), key=where.index):
            placed.update(self.host(server, [s.index for s in self.model.layers if where[s.index] == server],
                                    restore=self.pipeline.restores))
        return placed

    def host(self, server: str, indices: list[int], *, restore: bool,
             resume: list[Parameters] | None = None) -> dict[int, dict]:
        """Have ``server`` host these layers (``resume``: their checkpoints, added to a running run)."""
        req = HostRequest(self.run_id, self.model, tuple(indices), restore=restore, add=resume is not None,
                          resume=tuple(resume or ()), run_key=self.run_key)
        (report,) = self.cluster.host([(server, req)])
        if len(report.restored) != len(indices):
            raise RunError(f"{server} confirmed {len(report.restored)} of {len(indices)} layers")
        self.heartbeats.beat(server)
        self.log.info(f"{server}: {report.message}")
        n = len(indices)
        origins = list(report.restored_from) + [""] * (n - len(report.restored_from))
        files = list(report.restored_paths) + [""] * (n - len(report.restored_paths))
        for i, origin in zip(indices, origins):
            if origin:   # never quietly: which file, which run, how far it trained
                self.log.warning(f"layer {i} on {server} starts from saved weights: {origin}")
        return {i: {"server": server, "restored": bool(r), "restored_from": o, "restored_path": f}
                for i, r, o, f in zip(indices, report.restored, origins, files)}

    # ------------------------------------------------------------------ faults
    def check_servers(self) -> None:
        self.drop_returned()
        lost = self.heartbeats.first_lost(v["server"] for v in self.placed.values())
        if lost is not None:
            raise lost

    def recover(self, lost: ServerLost) -> int:
        """Move a lost server's layers to the live servers with the fewest layers (a spare one
        first), each resumed from its newest checkpoint; returns the first chapter some layer
        has not trained, where the driver resends from."""
        start = time.perf_counter()
        moved = sorted(i for i, v in self.placed.items() if v["server"] == lost.server)
        self.log.warning(f"{lost}: its layer(s) {moved} move to live servers")
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
        self.cluster.wait_connected(self.model, {i: self.placed[i]["server"] for i in moved})
        done = {i: (self.checkpoints[i].version if i in self.checkpoints else 0) if i in moved
                else (self.status[i].chapters_done if i in self.status else 0) for i in self.placed}
        resume_at = min(done.values())
        took = time.perf_counter() - start
        self.recoveries.append({
            "server": lost.server, "layers": moved, "to": {i: self.placed[i]["server"] for i in moved},
            "silent_seconds": round(lost.silent_seconds, 2), "chapters_done": done, "resumed_from_chapter": resume_at,
            "takeover_seconds": round(took, 2)})
        self.log.info(f"layer(s) {moved} now on {', '.join(groups)}, resumed after chapter(s) "
                      f"{[done[i] for i in moved]}; took {took:.1f} s")
        return resume_at

    def evaluate(self, driver: PipelineDriver) -> dict:
        """The test. A server lost meanwhile has its layers moved, each from its final
        checkpoint (the weights it finished training with), and the test starts again."""
        while True:
            try:
                return driver.evaluate()
            except ServerLost as lost:
                if not (self.pipeline.recover and self.pipeline.train):
                    raise
                final = len(driver.chapters)
                moved = sorted(i for i, v in self.placed.items() if v["server"] == lost.server)
                short = [i for i in moved if i not in self.checkpoints or self.checkpoints[i].version < final]
                if short:
                    raise RunError(f"{lost} while testing, and layer(s) {short} have no checkpoint of their "
                                   f"trained weights to move; the run stops") from None
                self.recover(lost)
                self.log.warning(f"testing again from the first chunk (layer(s) {moved} moved)")

    # ------------------------------------------------------------------ data path
    def on_result(self, d: Delivery, training: bool) -> None:
        if d.model != self.model.name or d.run_id != self.run_id:
            return
        if d.source != len(self.model.layers) - 1:
            self.dropped += 1
            self.log.warning(f"dropped a result from layer {d.source} (results come from the last layer)",
                             throttle_duration_sec=5.0)
            return
        self.bytes_received += d.nbytes
        try:
            self.results.put(d.decode())
        except Exception as e:   # ChunkError, or one no check foresaw: it would end the spinner
            self.dropped += 1
            self.log.warning(f"dropped a malformed result ({type(e).__name__}: {e})", throttle_duration_sec=5.0)

    def on_checkpoint(self, d: Delivery) -> None:
        if d.model != self.model.name or d.run_id != self.run_id or not 0 <= d.source < len(self.model.layers):
            return
        try:
            p = d.decode()
        except MalformedVersion as e:
            self.log.warning(f"dropped a malformed checkpoint ({e})", throttle_duration_sec=5.0)
            return
        bad = nonfinite(p.tensors)
        if bad:   # a replacement resuming from it would train on NaN weights: keep the one before
            self.dropped += 1
            self.log.warning(f"dropped a checkpoint of layer {p.part} with NaN or infinite {', '.join(bad[:3])}",
                             throttle_duration_sec=5.0)
            return
        if self.snapshots is not None and not self.snapshots.add(p.part, p.version, p.tensors):
            self.dropped += 1
            self.log.warning(f"dropped a checkpoint of layer {p.part} that does not fit it", throttle_duration_sec=5.0)
            return
        old = self.checkpoints.get(p.part)
        if old is None or p.version >= old.version:
            self.checkpoints[p.part] = p

    def connect(self) -> PipelineDriver:
        self.cluster.follow_checkpoints(self.model, self.on_checkpoint, key=self.run_key)
        send_train, send_infer = self.cluster.open_pipeline(self.model, self.on_result, key=self.run_key)

        def train(chunk):
            size = send_train(chunk, self.run_id)
            self.bytes_sent += size
            self.chapter_bytes_sent[chunk.chapter] = self.chapter_bytes_sent.get(chunk.chapter, 0) + size

        def infer(chunk):
            self.bytes_sent += send_infer(chunk, self.run_id)

        return PipelineDriver(self.model, self.data, send_train=train, send_infer=infer, results=self.results,
                              chunk_rows=self.pipeline.chunk_rows, window=self.pipeline.window,
                              stall_seconds=self.pipeline.stall_seconds, progress=self.show_progress, log=self.log.info,
                              health=self.check_servers, progress_listener=self.publish_progress,
                              layer_samples=lambda: sum(st.samples for st in list(self.status.values())),
                              recover=self.recover if self.pipeline.recover else None, snapshots=self.snapshots)

    def add_progress(self, report: ProgressReport) -> None:
        if self.driver is not None:
            report.chapters_done, report.chapters = self.driver.head_done, self.model.train.splits
        for i, st in sorted(list(self.status.items())):
            if 0 <= i < len(self.model.layers):
                report.losses[f"layer_{i}"] = st.loss
                trained = [a for a in st.epoch_accuracy if a == a]
                report.train_accuracy[f"layer_{i}"] = trained[-1] if trained else float("nan")
        head = self.driver.head_history if self.driver is not None else None
        if head is not None and head.loss():
            last = max(head.loss())
            report.losses["head"], report.train_accuracy["head"] = head.loss()[last], head.accuracy()[last]

    # ------------------------------------------------------------------ head weights
    def head_path(self):
        return weights.model_dir(self.pipeline.weights_dir, self.model.name) / weights.model_head_file(self.model)

    def save_head(self, driver: PipelineDriver) -> None:
        """Beside the weights; a failed write (a full disk) is said and the run goes on to its test."""
        try:
            weights.save_head(self.head_path(), driver.head.state_dict(), weights.made_by(self.run_id),
                              model=self.model.name)
            self.head_saved = str(self.head_path())
        except (OSError, RuntimeError) as e:   # torch.save reports a full disk as a RuntimeError
            self.save_errors["softmax head"] = f"{self.head_path()}: {type(e).__name__}: {str(e)[:200]}"
            self.log.error(f"could not save the softmax head to {self.save_errors['softmax head']}; the previous "
                           f"file, if any, stays")

    def restore_head(self, driver: PipelineDriver) -> str:
        """Load the saved softmax head if the run restores weights; what was loaded ("" if nothing)."""
        path = self.head_path()
        if driver.head is None or not self.pipeline.restores or not path.exists():
            return ""
        try:
            state, made = weights.read_head(path)
            driver.head.load_state_dict(state)
        except (weights.WeightsError, RuntimeError) as e:
            raise RunError(f"{e}; remove it or set restore_weights: false") from None
        origin = weights.describe(path, made)
        self.log.warning(f"the softmax head starts from saved weights: {origin}")
        return origin

    # ------------------------------------------------------------------ master restart
    def save_run_state(self, driver: PipelineDriver) -> None:
        # where the layers are is asked of the servers on takeover, not kept here
        self.write_run_state({"transport": "activations", **driver.state(), "chapters_done": driver.head_done})

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
            self.log.warning(f"run {state['run_id']} of {self.model.name!r} was interrupted after "
                             f"{state['head_done']} chapter(s), but layer(s) {missing} are no longer "
                             f"hosted; starting a new run")
            return None
        self.log.info(f"taking over run {state['run_id']} (interrupted after {state['head_done']} chapter(s)); "
                      f"layers on {[hosted[i]['server'] for i in sorted(hosted)]}")
        return {**state, "placed": hosted}

    def layers_done(self, timeout: float = 10.0) -> int:
        """The fewest chapters a layer has trained, from the layers' heartbeats."""
        deadline = time.monotonic() + timeout
        while len(self.status) < len(self.model.layers):
            if time.monotonic() > deadline:
                raise RunError(f"no status from layer(s) {sorted(set(self.placed) - set(self.status))} "
                               f"within {timeout:.0f} s")
            time.sleep(0.1)
        return min(self.status[i].chapters_done for i in self.placed)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        servers = self.cluster.servers()
        state = self.saved_run(servers) if self.pipeline.train else None
        if state is not None:
            self.run_id, self.placed = state["run_id"], state["placed"]
            self.run_key = int(state.get("run_key", 0))   # 0: a state from before keys
        else:
            self.placed = self.distribute(servers)
        try:
            return self.train_and_test(state)
        except ServerLost as e:
            why = "recover: false" if not self.pipeline.recover else "lost while testing a train: false run"
            raise RunError(f"{e}; the run stops ({why})") from None
        except PipelineStalled as e:
            raise RunError(str(e)) from None
        finally:
            if not self.pipeline.keep_layers:
                self.drop_layers(sorted({v["server"] for v in self.placed.values()}))

    def train_and_test(self, state: dict | None = None) -> dict:
        m, p, placed = self.model, self.pipeline, self.placed
        driver = self.driver = self.connect()
        head_from = self.restore_head(driver)
        if state is not None:   # the interrupted run's head, not the last finished one
            try:
                driver.restore(state, self.layers_done())
            except ValueError as e:
                raise RunError(f"{self.run_state_path()}: {e}; remove it to start a new run") from None
            self.resumed = {"run_id": self.run_id, "head_done": driver.head_done,
                            "from_chapter": driver.start_chapter, "attempt": driver.attempt}
            self.log.info(f"resending from chapter {driver.start_chapter} (attempt {driver.attempt})")
        driver.on_chapter = lambda: self.save_run_state(driver)
        restored = all(v["restored"] for v in placed.values()) and (driver.head is None or bool(head_from))
        if not p.train and not restored:
            raise RunError("train: false needs saved weights for every layer and the head; "
                           "none found for this model spec (run once with train: true)")
        fit = {}
        if p.train:
            self.log.info(f"training {m.name}: {m.train.epochs} epochs, schedule {m.train.schedule}, "
                          f"{len(driver.train_y)} samples, layers on {[placed[i]['server'] for i in sorted(placed)]}")
            fit = driver.fit()
            self.finished()
            if driver.head is not None:
                self.save_head(driver)
        self.publish_progress(phase="testing")
        result = self.evaluate(driver)
        servers = sorted({v["server"] for v in placed.values()})
        if p.train:
            paths = self.save_all(servers)
        else:   # nothing changed: the files stay as the run that trained them left them
            paths = {s: [v["restored_path"] for v in placed.values() if v["server"] == s and v.get("restored_path")]
                     for s in servers}
        restored_from = {f"layer {i}": placed[i]["restored_from"] for i in sorted(placed)
                         if placed[i].get("restored_from")}
        if head_from:
            restored_from["softmax head"] = head_from
        time.sleep(0.3)  # last status messages
        return {"run_id": self.run_id, "model": m.name, "mode": "dff", "schedule": m.train.schedule,
                "accuracy": result["accuracy"], "eval_seconds": result["eval_seconds"], **fit,
                "trained": p.train, "weights_restored": restored, "restored_from": restored_from,
                # eval only: the head it restored (nothing was saved)
                "head_weights": self.head_saved if p.train else (str(self.head_path()) if head_from else None),
                "save_errors": self.save_errors,
                "run_state_write_failures": self.state_write_failures,
                "layers": self.layer_rows(), "weights": paths, "recoveries": self.recoveries, "resumed": self.resumed,
                "returned": dict(self.returned),   # lost servers heard again -> what dropping their layers said
                "heartbeats_late": dict(self.heartbeats.late),   # silent too long, answered a probe: kept
                **(self.history(driver) if p.train else {}),
                "master": {"bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                           "dropped": self.dropped, "rejected": driver.rejected,   # undecodable; not this run's
                           "statuses_dropped": dict(self.status_gate.dropped)},     # not its servers'; replays
                "train_samples": len(driver.train_y), "test_samples": len(driver.test_y),
                "config": m.to_dict(), "pipeline": dict(vars(p))}

    def layer_rows(self) -> list[dict]:
        rows = []
        for i in sorted(self.placed):
            st, where = self.status.get(i), self.placed[i]
            rows.append({"index": i, "server": where["server"], "weights_restored": where["restored"],
                         "moved_from": where.get("moved_from"),
                         "busy_seconds": round(st.busy_seconds, 2) if st else None,
                         "bytes_in": st.bytes_in if st else None, "bytes_out": st.bytes_out if st else None,
                         "dropped": st.dropped if st else None, "samples": st.samples if st else None})
        return rows

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
