"""Who may change a model's run on a server, without ROS: the run's master, or an operator who
names the run.

A master draws a random **run key** for each run and hands it to the servers with
``create_layers``; a server then lets only a request with that key (or an operator's request
naming the run id, as ``dff-ros delete MODEL --run RUN`` sends) delete the model, save its
weights, fetch its parameters or replace it with another run, while the run is live. A run is
live from its create_layers until its master deletes it, or until nothing of it was heard for
``release_seconds`` (its master is gone: the model is free again).

What this protects against: a second master or an operator's command aimed at a model that is
in use, and any node that does not know the key. What it does not: without DDS security
(SROS2) a service request is a DDS sample anyone on the domain can read, key included; a node
that reads the master's create_layers requests can present the key.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

KEY_BITS = 63   # a uint64 field; 0 means "no key" (requests from before keys, tests, operators)


def new_run_key() -> int:
    """A run's key: random, never 0."""
    return secrets.randbits(KEY_BITS) | 1


@dataclass
class Holder:
    run_id: str
    key: int
    heard: float      # monotonic time the run was last heard from (chunks, keyed calls)


class RunKeys:
    """The live run of each model on one server, and whether a request may change it."""

    def __init__(self, release_seconds: float = 600.0, clock=time.monotonic):
        self.release_seconds, self.clock = release_seconds, clock
        self.holders: dict[str, Holder] = {}

    def hold(self, model: str, run_id: str, key: int) -> None:
        """``model`` is now hosted for run ``run_id`` (an accepted create_layers)."""
        self.holders[model] = Holder(run_id, int(key), self.clock())

    def heard(self, model: str) -> None:
        """Something of the model's run arrived (keeps it live)."""
        h = self.holders.get(model)
        if h is not None:
            h.heard = self.clock()

    def release(self, model: str) -> None:
        self.holders.pop(model, None)

    def live(self, model: str) -> Holder | None:
        h = self.holders.get(model)
        return h if h is not None and self.clock() - h.heard < self.release_seconds else None

    def refusal(self, what: str, model: str, *, run_id: str = "", key: int = 0, creating: str = "") -> str:
        """Why ``what`` for ``model`` is refused ("" if allowed). ``key``: the run key presented;
        ``run_id``: the run an operator names; ``creating``: the run id of a create_layers
        request (its own run may add layers; another run needs the live one's key)."""
        h = self.live(model)
        if h is None or not h.key or key == h.key:   # nothing live, an unkeyed run, or its master
            return ""
        if creating and creating == h.run_id and not key:
            return (f"{what}: model {model!r} is in run {h.run_id!r} here; only its master (with the run's "
                    "key) may add layers to it")
        if not creating and run_id and run_id == h.run_id and not key:
            return ""   # an operator who names the run
        idle = self.clock() - h.heard
        return (f"{what}: model {model!r} is in run {h.run_id!r} here (heard from {idle:.0f} s ago); only that "
                f"run's master may change it. Stop the run with `dff-ros delete {model!r} --run {h.run_id}`, "
                f"or it is released after {self.release_seconds:.0f} s without being heard from")
