"""What every run keeps, DFF or PFF: its servers' heartbeats and statuses, the recoveries so far,
the run state a restarted master takes over from, and its progress reports."""
from __future__ import annotations

import time
from pathlib import Path

from dff_ros import weights
from dff_ros.control import new_run_key
from dff_ros.pipeline.driver import ServerLost
from dff_ros.run.cluster import Cluster, Hosting, ProgressReport, RunError, Status
from dff_ros.stopping import CLEANUP_SECONDS, STOPPING
from dff_ros.wire.seal import StatusGate


PROBE_SECONDS = 2.0   # how long a silent server has to answer list_layers before it is lost


class Heartbeats:
    """When each server was last heard of (any status it sends is a heartbeat), and which are
    lost: silent for longer than ``timeout`` and not answering ``probe(server)`` (True: it
    answered). The probe tells a server whose heartbeats are late (its process starved of CPU
    for a few seconds, its statuses delayed) from one that is gone (killed, frozen, cut off),
    which answers nothing. A lost server is asked nothing any more."""

    def __init__(self, timeout: float, probe=None):
        self.timeout = timeout
        self.probe = probe
        self.last_seen: dict[str, float] = {}
        self.lost: set[str] = set()
        self.late: dict[str, int] = {}   # server -> times it was silent too long but answered

    def beat(self, server: str) -> None:
        self.last_seen[server] = time.monotonic()

    def first_lost(self, servers) -> ServerLost | None:
        """The first of ``servers`` whose heartbeat stopped; from now on it is lost."""
        for s in sorted(set(servers)):
            seen = self.last_seen.get(s)
            if seen is None or time.monotonic() - seen <= self.timeout:
                continue
            if self.probe is not None and self.probe(s):
                self.beat(s)
                self.late[s] = self.late.get(s, 0) + 1
                continue
            self.lost.add(s)
            return ServerLost(s, time.monotonic() - seen)
        return None


class Run:
    """A run of one model on the cluster: the shared state of ``DFFRun`` and ``PFFRun``.
    ``log``: a logger with info / warning / error (rclpy's, or the tests')."""
    mode = ""

    def __init__(self, cluster: Cluster, pipeline, model, *, run_id: str, log, data: dict | None = None,
                 show_progress: bool = True):
        self.cluster, self.pipeline, self.model, self.run_id, self.log = cluster, pipeline, model, run_id, log
        self.run_key = new_run_key()   # what lets only this master change the run on the servers
        self.data = data
        self.show_progress = show_progress
        self.heartbeats = Heartbeats(pipeline.heartbeat_timeout_seconds, probe=self._answers)
        self.status_gate = StatusGate()   # which of this run's statuses its servers sent
        self.server_status: dict[str, Status] = {}   # this run's latest status per server
        self.recoveries: list[dict] = []
        self.resumed: dict | None = None              # the run this master took over
        self.save_errors: dict[str, str] = {}         # what could not be saved (a full disk), by where
        self.state_write_failures = 0                 # run-state writes that failed (a full disk)
        self.returned: dict[str, str] = {}            # lost servers heard again -> "" | what dropping their layers said
        self._progress = None                         # the latest Progress
        self.phase = "training"

    # ------------------------------------------------------------------ statuses
    def on_status(self, st: Status) -> None:
        """Every status on the domain. This run's are its servers' heartbeats (a server sends one
        per layer or share it hosts, every second); another run's or model's say nothing about
        this run (anyone can publish one naming a server whose heartbeat stopped). A lost
        server's statuses count for nothing: its layers moved away (a frozen or cut-off one that
        comes back would report chapters its successor has not trained). It is told to drop them."""
        if st.model != self.model.name or st.run_id != self.run_id:
            return
        if st.server in self.heartbeats.lost:
            if st.server not in self.returned:
                self.returned[st.server] = ""   # dropped by drop_returned, on the run's own thread
            return
        self.heartbeats.beat(st.server)
        self.server_status[st.server] = st
        self.note_status(st)
        if st.phase == "error":
            self.log.error(f"{st.server} layer {st.layer}: {st.message}")

    def _answers(self, server: str) -> bool:
        """A server silent for longer than the heartbeat timeout still answers (list_layers)."""
        answered = self.cluster.answers(server, PROBE_SECONDS)
        if answered and server not in self.heartbeats.late:
            self.log.warning(f"{server} sent no heartbeat for {self.pipeline.heartbeat_timeout_seconds:g} s but "
                             "answered list_layers: kept (its heartbeats are late, not stopped)")
        return answered

    def note_status(self, st: Status) -> None:
        """A status of this run (a subclass keeps what it needs of it)."""

    def errors_of(self, servers) -> list[str]:
        return [f"{s}: {st.message}" for s, st in list(self.server_status.items())
                if s in servers and st.phase == "error"]

    def wait_phase(self, servers, phase: str, timeout: float) -> dict[str, Status]:
        """Latest status of each server once all report ``phase`` (or whatever came by the timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s in self.server_status and self.server_status[s].phase == phase for s in servers):
                break
            time.sleep(0.1)
        else:
            self.log.warning(f"not every server reported {phase!r} within {timeout:.0f} s")
        return {s: self.server_status[s] for s in servers if s in self.server_status}

    def live_servers(self) -> list[str]:
        """Servers that are reachable and not lost (their heartbeats checked again now)."""
        names = set(self.cluster.servers())
        while self.heartbeats.first_lost(names - self.heartbeats.lost) is not None:   # more may have gone silent
            pass
        return sorted(names - self.heartbeats.lost, key=lambda s: (len(s), s))

    # ------------------------------------------------------------------ servers
    def drop_layers(self, servers) -> None:
        """Have ``servers`` drop this model's layers (briefly when interrupted: the servers
        are likely stopping too). Lost servers that came back drop theirs too."""
        if not STOPPING.is_set():
            self.drop_returned()
        servers = [s for s in servers if s not in self.heartbeats.lost]
        if not servers:
            return
        try:
            self.cluster.drop(servers, self.model.name, key=self.run_key, timeout=CLEANUP_SECONDS if STOPPING.is_set() else None)
        except RunError as e:
            if STOPPING.is_set():   # a terminal's Ctrl-C reaches the servers too: they are stopping
                # a server may have dropped the run and its answer missed the new client (see
                # call_all); one that is stopping drops it anyway
                self.log.info(f"not every server answered delete_model in time ({e}); one that still hosts run "
                              f"{self.run_id} keeps it for its release_seconds: `dff-ros delete {self.model.name} "
                              f"--run {self.run_id}` drops it now")
            else:
                self.log.warning(f"could not delete the layers of {self.model.name!r}: {e}")
            return
        if STOPPING.is_set():
            self.log.info(f"dropped run {self.run_id}'s layers on {', '.join(servers)}")

    def drop_returned(self) -> None:
        """Have lost servers that are heard again drop this run's layers: they moved to other
        servers, and a zombie copy would keep sending stale chunks (once per server)."""
        for server in [s for s, said in list(self.returned.items()) if not said]:
            try:
                self.cluster.drop([server], self.model.name, key=self.run_key, timeout=5.0)
                said = f"{server} was lost and came back: it dropped run {self.run_id}'s layers (they moved away)"
                self.log.warning(said)
            except RunError as e:
                said = f"{server} was lost and came back; it did not drop run {self.run_id}'s layers: {e}"
                self.log.warning(said)
            self.returned[server] = said

    def hosting(self, servers: list[str], run_id: str) -> dict[str, list[Hosting]]:
        """Server -> what it hosts of run ``run_id`` of this model."""
        return {s: [h for h in self.cluster.hosting(s) if h.model == self.model.name and h.run_id == run_id]
                for s in servers}

    def save_all(self, servers) -> dict[str, list[str]]:
        """Each server saves its layers; one that cannot (a full disk) is said and kept in
        ``save_errors``, and the others still save: the run's result is reported either way."""
        paths = {}
        live = set(self.live_servers())
        for s in servers:
            if s not in live:   # gone after its last task (a PFF node): asking it would wait for nothing
                self.save_errors[s] = f"{s} is gone (lost or no longer on the graph): its layers were not saved"
                self.log.error(self.save_errors[s])
                paths[s] = []
                continue
            try:
                paths[s] = self.cluster.save(s, self.model.name, key=self.run_key)
            except RunError as e:
                self.save_errors[s] = str(e)
                self.log.error(f"{e}; its files, if any, are the previous run's")
                paths[s] = []
        return paths

    # ------------------------------------------------------------------ master restart
    def run_state_path(self) -> Path:
        return weights.run_state_path(self.pipeline.summary_dir, self.model.name)

    def write_run_state(self, state: dict) -> None:
        """Save what a master taking over needs. A failed write (a full disk) keeps the previous
        file (the writes are atomic) and the run goes on: it is the takeover that loses ground."""
        try:
            weights.save_run_state(self.run_state_path(), run_id=self.run_id, config=self.model.to_dict(),
                                   state={**state, "run_key": self.run_key})
        except (OSError, RuntimeError) as e:   # torch.save reports a full disk as a RuntimeError
            self.state_write_failures += 1
            self.log.error(f"could not save the run state to {self.run_state_path()} ({type(e).__name__}: "
                           f"{str(e)[:200]}); the previous one stays, so a master taking over would resend "
                           f"from there ({self.state_write_failures} failed write(s) so far)",
                           throttle_duration_sec=10.0)

    def read_run_state(self, transport: str) -> dict | None:
        """The state a killed master of this model left for a run of ``transport``, if it is
        one this master can take over; otherwise None, saying why."""
        path = self.run_state_path()
        if not path.exists():
            return None
        try:
            state = weights.read_run_state(path)
        except weights.WeightsError as e:   # a file this version cannot read: say so, start again
            self.log.warning(f"{e}; starting a new run")
            return None
        if state.get("config") != self.model.to_dict():
            self.log.warning(f"{path}: run {state.get('run_id')} had another config; starting a new run")
            return None
        if state.get("transport", "activations") != transport:
            self.log.warning(f"{path}: run {state['run_id']} passed {state.get('transport')}, this master "
                             f"passes {transport}; starting a new run")
            return None
        return state

    def finished(self) -> None:
        self.run_state_path().unlink(missing_ok=True)   # nothing to take over

    # ------------------------------------------------------------------ progress
    def publish_progress(self, progress=None, *, phase: str | None = None, accuracy: dict | None = None) -> None:
        """Report the run's progress (``progress``: a Progress that just advanced; ``phase``:
        the phase from now on, training | testing | done)."""
        if progress is not None:
            self._progress = progress
        self.phase = phase = phase or self.phase
        pr = self._progress
        report = ProgressReport(run_id=self.run_id, model=self.model.name, phase=phase, mode=self.mode,
                                recoveries=len(self.recoveries), accuracy=dict(accuracy or {}))
        if pr is not None:
            elapsed, eta = pr.elapsed_eta()
            report.done, report.total, report.fraction = pr.done, pr.total, float(pr.fraction)
            report.elapsed_seconds, report.eta_seconds = elapsed, 0.0 if phase != "training" else eta
            report.epoch = int(pr.info.get("epoch", 0))
            report.chapters_done, report.chapters = pr.done, pr.total
        self.add_progress(report)
        self.cluster.publish_progress(report)

    def add_progress(self, report: ProgressReport) -> None:
        """What a subclass adds to a progress report (losses, chapters)."""
