"""Parameter versions a node has seen: its own, as it publishes them, and other nodes', as
they arrive. A worker blocks in ``get`` until the version its schedule needs is there."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


class MalformedVersion(ValueError):
    """A message that does not describe a parameter version (dropped by the receiver)."""


class ParametersTimeout(TimeoutError):
    """A needed parameter version did not arrive in time (its node died or is unreachable)."""


@dataclass
class Parameters:
    """One version of a part: its tensors after ``version`` chapters, and what the task that made it
    reported."""
    part: int
    version: int                       # chapters trained: version j+1 is the output of chapter j
    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)   # node, start/end times, loss, input versions


class ParameterStore:
    """Thread-safe. ``publish`` sends what this node puts to the other nodes; the transport
    calls ``add`` with what arrives. Versions below the last one taken are dropped."""

    def __init__(self, publish: Callable[[Parameters], None] | None = None, names: dict[int, str] | None = None):
        self.publish = publish
        self.names = names or {}
        self._versions: dict[int, dict[int, Parameters]] = {}
        self._cond = threading.Condition()
        self._closed: str | None = None

    def put(self, params: Parameters) -> None:
        """Send a version this node trained to the others (its own state stays in its learners,
        so it is not kept here)."""
        if self.publish is not None:
            self.publish(params)

    def add(self, params: Parameters) -> None:
        with self._cond:
            self._versions.setdefault(params.part, {})[params.version] = params
            self._cond.notify_all()

    def close(self, why: str) -> None:
        """Wake every waiter with an error (the run was stopped)."""
        with self._cond:
            self._closed = why
            self._cond.notify_all()

    def latest(self, part: int) -> Parameters | None:
        with self._cond:
            got = self._versions.get(part)
            return got[max(got)] if got else None

    def get(self, part: int, version: int, *, exact: bool, timeout: float) -> Parameters:
        """Version ``version`` of ``part`` (``exact``), or else the oldest version >= it: a node
        never trains on inputs older than the schedule allows, and a late joiner whose exact
        version has left the publisher's history takes the next one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise ParametersTimeout(f"stopped while waiting for {self.name(part)} version {version}: "
                                            f"{self._closed}")
                got = self._versions.get(part, {})
                ok = [v for v in got if (v == version if exact else v >= version)]
                if ok:
                    v = min(ok)
                    for old in [o for o in got if o < v]:
                        del got[old]
                    return got[v]
                left = deadline - time.monotonic()
                if left <= 0:
                    have = sorted(got)
                    raise ParametersTimeout(
                        f"waited {timeout:.0f} s for {self.name(part)} version {version}"
                        f"{'' if exact else ' or newer'} (have {have or 'none'}); is the node training it still up?")
                self._cond.wait(min(left, 1.0))

    def name(self, part: int) -> str:
        return self.names.get(part, f"layer {part}")
