"""What a run asks of the servers, and what it hears from them: the small interface between the
runs (``dff_ros.run.dff``, ``dff_ros.run.pff``) and the middleware. The master node implements
it over ROS 2 services and topics (``dff_ros.nodes.master``); the unit tests implement it in
process (``test/fake_cluster.py``). Requests and reports are plain dataclasses; the codec
(``dff_ros.wire.codec``) turns them into messages and back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

from dff_ros.config.schema import ModelConfig
from dff_ros.parts.versions import Parameters
from dff_ros.pff.plan import PFFPlan


class RunError(RuntimeError):
    """The run cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class HostRequest:
    """Have a server host layers of a run: DFF layers (``layers``), or node ``node_index``'s
    share of a PFF run (``plan`` set: it travels as the master made it)."""
    run_id: str
    model: ModelConfig
    layers: tuple[int, ...]                # DFF: the layers to host; PFF: every layer
    restore: bool = False                  # DFF: start from saved weights of the same spec, if any
    add: bool = False                      # DFF: keep this model's other layers (a recovery adds some)
    resume: tuple[Parameters, ...] = ()    # DFF: checkpoints the added layers continue from
    plan: PFFPlan | None = None            # PFF: who trains what when
    node_index: int = 0
    evaluate_only: bool = False            # PFF: train nothing; load what is saved there
    start_chapter: int = 0                 # PFF: a replacement starts here
    data_root: str = ""
    param_history: int = 0                 # PFF: versions kept per part for late joiners (the pipeline's)
    run_key: int = 0                       # the run's key (dff_ros/control.py)

    @property
    def pff(self) -> bool:
        return self.plan is not None


@dataclass(frozen=True)
class HostReport:
    """A server's answer to a HostRequest it accepted (a refusal is a RunError)."""
    message: str
    restored: tuple[bool, ...]             # DFF: per requested layer; PFF: per part
    restored_from: tuple[str, ...] = ()    # DFF: per requested layer, what was restored ("" if nothing)
    restored_paths: tuple[str, ...] = ()   # DFF: per requested layer, the file restored ("" if nothing)


@dataclass(frozen=True)
class Hosting:
    """One layer (or PFF part) a server lists as hosted."""
    model: str
    run_id: str
    index: int
    weights_restored: bool = False


@dataclass
class Status:
    """A hosted layer's or PFF share's heartbeat (msg/LayerStatus.msg says what each field is)."""
    run_id: str
    model: str
    server: str
    layer: int = 0
    phase: str = "created"
    chapter: int = 0
    chapters_done: int = 0
    epoch: int = 0
    loss: float = math.nan
    samples: int = 0
    busy_seconds: float = 0.0
    idle_seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: int = 0
    message: str = ""
    epoch_loss: list = field(default_factory=list)
    epoch_accuracy: list = field(default_factory=list)
    chapter_start: list = field(default_factory=list)
    chapter_end: list = field(default_factory=list)
    chapter_bytes_out: list = field(default_factory=list)


@dataclass
class ProgressReport:
    """A run's progress, for whoever watches it (msg/RunProgress.msg)."""
    run_id: str
    model: str
    mode: str
    phase: str
    recoveries: int = 0
    done: int = 0
    total: int = 0
    fraction: float = 0.0
    elapsed_seconds: float = 0.0
    eta_seconds: float = 0.0
    epoch: int = 0
    chapters_done: int = 0
    chapters: int = 0
    losses: dict = field(default_factory=dict)
    train_accuracy: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    """What arrives for a run: a result chunk from the last layer (``decode()`` gives the chunk,
    or raises ChunkError), a layer's checkpoint or a PFF task report (``decode()`` gives
    Parameters, or raises MalformedVersion). The header fields come without decoding, so a
    foreign message costs nothing."""
    run_id: str
    model: str
    source: int              # result: the layer that sent it; checkpoint / task: its part
    nbytes: int
    decode: Callable


class Cluster(Protocol):
    """The servers as a run sees them. Every call may raise RunError (saying which server and why)."""

    def servers(self) -> list[str]:
        """The servers now reachable (name order: server_2 before server_10)."""

    def host(self, calls: list[tuple[str, HostRequest]], *, answered: list[float] | None = None,
             timeout: float | None = None) -> list[HostReport]:
        """Send every request at once (servers build in parallel); ``answered``: each answer's
        perf_counter time. A refusal raises RunError naming the server."""

    def drop(self, servers: list[str], model: str, *, key: int = 0, timeout: float | None = None) -> None:
        """Have ``servers`` stop and forget ``model``'s layers (delete_model; ``key``: the run's)."""

    def hosting(self, server: str) -> list[Hosting]:
        """What ``server`` hosts now (list_layers), asked again until it answers."""

    def answers(self, server: str, timeout: float) -> bool:
        """``server`` answers list_layers within ``timeout`` s (a probe of a silent server)."""

    def save(self, server: str, model: str, *, key: int = 0) -> list[str]:
        """Have ``server`` save ``model``'s layers; the files it wrote."""

    def fetch(self, model: str, wanted: list[tuple[str, int]], *, key: int = 0) -> list[tuple[Delivery, int]]:
        """PFF: the final version of each (server, part), asked all at once, and the bytes each
        answer took on the network."""

    def open_pipeline(self, model: ModelConfig, on_result: Callable[[Delivery, bool], None], *, key: int = 0
                      ) -> tuple[Callable, Callable]:
        """DFF: wire the master's ends of the layer chain (``on_result(delivery, training)``)
        and return ``(send_train, send_infer)``, each taking ``(chunk, run_id)`` and
        returning the bytes sent. Returns once every hop is connected. ``key``: the run key;
        what is sent is sealed with it, and only results sealed with it are delivered."""

    def wait_connected(self, model: ModelConfig, moved: dict[int, str]) -> None:
        """DFF: every hop connected, with layer i's ends on server ``moved[i]``."""

    def follow_checkpoints(self, model: ModelConfig, on_checkpoint: Callable[[Delivery], None], *,
                           key: int = 0) -> None:
        """DFF: hear each hosted layer's checkpoint after every chapter it trains (only those
        sealed with the run key ``key``)."""

    def follow_tasks(self, model: ModelConfig, on_task: Callable[[Delivery], None], *, key: int = 0) -> None:
        """PFF: hear every task report (the whole history, for a master that takes over; only
        those sealed with ``key``)."""

    def publish_progress(self, report: ProgressReport) -> None:
        """Tell whoever watches how the run goes."""
