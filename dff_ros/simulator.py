"""What a run would take on N nodes: the PFF and DFF schedules played out against a link model.

A discrete-event simulation of the schedules the nodes follow, fed with measured numbers
(a task's compute seconds, the bytes each hop sends) instead of running them:

* PFF: the tasks of ``PFFPlan`` (part p, chapter j), each node running its own in order
  (chapter, then part, as ``PFFWorker`` does). A task starts once its node is free and the
  versions it needs are there: version j of p and version j+1 of the layers feeding p (all
  layers, for the head). A version goes from its trainer to every other node that needs it.
* DFF, chapters schedule: layer k trains chapter j once it has trained chapter j-1 and layer
  k-1's activities of chapter j have arrived; the master's images feed layer 0.

The link model: every node sends one message at a time on its uplink (the cap is on each
host's egress); a message takes latency + size / bandwidth per reader, unicast to each as Fast
DDS sends user data, datagram by datagram to all of them in turn, so all its readers have it at
the end. A PFF version goes to every node that subscribes to its part (``PFFPlan.received_by``).
Nodes on one host (``hosts``) pass messages over shared memory at ``local`` speed and share the
host's cores: k tasks on c cores run at min(1, c/k) of their speed (processor sharing), times
``beside`` when a task shares the host.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from dff_ros.pff.plan import PFFPlan


@dataclass(frozen=True)
class Link:
    name: str
    bits_per_second: float
    latency_seconds: float = 0.0

    def seconds(self, nbytes: float) -> float:
        return self.latency_seconds + 8.0 * nbytes / self.bits_per_second


SHARED_MEMORY = Link("shared memory", 8 * 2.0e9)   # ~2 GB/s between processes (bench/transport_throughput.py)


@dataclass(frozen=True)
class Workload:
    """Measured inputs. ``task_seconds[p]``: one chapter of part p on one core with the host to
    itself; ``version_bytes[p]``: one version of p as published; ``activity_bytes[k]``: what DFF
    layer k sends on per chapter (layer -1, the master's images, is ``image_bytes``)."""
    task_seconds: tuple[float, ...]
    version_bytes: tuple[float, ...]
    splits: int
    activity_bytes: tuple[float, ...] = ()
    image_bytes: float = 0.0


@dataclass
class Result:
    wall_seconds: float
    busy_seconds: list[float]
    tasks: list[dict] = field(default_factory=list)   # node, part, chapter, start, end

    @property
    def utilisation(self) -> float:
        return sum(self.busy_seconds) / (len(self.busy_seconds) * self.wall_seconds) if self.wall_seconds else 0.0


class _Network:
    """Each node's uplink queue: when a message sent at ``t`` arrives."""

    def __init__(self, nodes: int, link: Link, hosts: list[int], local: Link):
        self.link, self.hosts, self.local = link, hosts, local
        self.up = [0.0] * nodes

    def send(self, t: float, src: int, dests: list[int], nbytes: float) -> dict[int, float]:
        """When a message sent at ``t`` to ``dests`` arrives at each. Fast DDS sends each datagram
        of a sample to all its readers' addresses in turn, so the k copies over the link share the
        uplink and all arrive at the end, after k transfers; copies to nodes on the sender's host
        go over shared memory one by one. Only the sender's uplink is a queue: the caps are on
        each host's egress (as tc tbf puts them on the emulated hosts), and a receiver's share of
        several senders is not modelled (reserving its downlink in the order sends are issued
        made a version wait behind transfers that had not started yet)."""
        out = {}
        remote = [d for d in dests if d != src and self.hosts[d] != self.hosts[src]]
        for d in dests:
            if d != src and d not in remote:
                self.up[src] = max(t, self.up[src]) + 8.0 * nbytes / self.local.bits_per_second
                out[d] = self.up[src] + self.local.latency_seconds
        if remote:
            self.up[src] = max(t, self.up[src]) + len(remote) * 8.0 * nbytes / self.link.bits_per_second
            for d in remote:
                out[d] = self.up[src] + self.link.latency_seconds
        return out


class _Cores:
    """Processor sharing per host: runs tasks (given their work in seconds) and says when each ends."""

    def __init__(self, hosts: list[int], cores: dict[int, int], beside: float):
        self.hosts, self.cores, self.beside = hosts, cores, beside
        self.running: dict[int, list] = {}   # host -> [[remaining, node, key], ...]
        self.now = 0.0

    def rate(self, host: int) -> float:
        k = len(self.running.get(host, []))
        if not k:
            return 1.0
        return min(1.0, self.cores[host] / k) / (self.beside if k > 1 else 1.0)

    def advance(self, t: float) -> None:
        for host, tasks in self.running.items():
            r = self.rate(host)
            for task in tasks:
                task[0] -= (t - self.now) * r
        self.now = t

    def start(self, t: float, node: int, key, work: float) -> None:
        self.advance(t)
        self.running.setdefault(self.hosts[node], []).append([work, node, key])

    def next_end(self):
        best = None
        for host, tasks in self.running.items():
            r = self.rate(host)
            for task in tasks:
                end = self.now + max(task[0], 0.0) / r
                if best is None or end < best[0]:
                    best = (end, host, task)
        return best

    def finish(self, host: int, task) -> None:
        self.running[host].remove(task)


def _play(nodes: int, order: list[list], needs, work, produce, link: Link, hosts, cores, beside, local,
          cpus=None) -> Result:
    """Runs each node's task list in order; ``needs(task)`` -> keys that must have arrived at the
    node, ``produce(task)`` -> [(key, nbytes, destination nodes)]. ``cpus[n]``: whose cores node
    n's tasks share (default its host's; emulated hosts on one machine share that machine's)."""
    hosts = list(range(nodes)) if hosts is None else list(hosts)
    cpus = hosts if cpus is None else list(cpus)
    pool_cores = {h: (cores.get(h, 1) if isinstance(cores, dict) else cores) for h in set(cpus)}
    net, cpu = _Network(nodes, link, hosts, local), _Cores(cpus, pool_cores, beside)
    arrived: dict[tuple[int, object], float] = {}    # (node, key) -> time
    nxt = [0] * nodes
    idle = [True] * nodes
    started: dict[object, float] = {}
    busy = [0.0] * nodes
    tasks: list[dict] = []
    pending: list[tuple[float, int, object]] = []   # (arrival time, node, key), a heap
    t = 0.0
    total = sum(len(o) for o in order)
    while len(tasks) < total:
        for n in range(nodes):   # start what can start now
            if idle[n] and nxt[n] < len(order[n]):
                task = order[n][nxt[n]]
                if all(arrived.get((n, k), float("inf")) <= t for k in needs(task)):
                    idle[n] = False
                    started[task] = t
                    cpu.start(t, n, task, work(task))
        ending = cpu.next_end()
        arrival = pending[0][0] if pending else None
        if ending is None and arrival is None:
            raise RuntimeError("the schedule cannot go on: a task waits for a version nobody sends")
        if ending is not None and (arrival is None or ending[0] <= arrival):
            end, host, item = ending
            cpu.advance(end)
            cpu.finish(host, item)
            t = end
            _, n, task = item
            busy[n] += t - started[task]
            tasks.append({"node": n, "task": task, "start": started[task], "end": t})
            idle[n], nxt[n] = True, nxt[n] + 1
            for key, nbytes, dests in produce(task, n):
                arrived[(n, key)] = t
                for d, at in net.send(t, n, dests, nbytes).items():
                    heapq.heappush(pending, (at, d, key))
        else:
            t, d, key = heapq.heappop(pending)
            cpu.advance(t)
            arrived[(d, key)] = min(arrived.get((d, key), float("inf")), t)
    return Result(max(x["end"] for x in tasks), busy, tasks)


def simulate_pff(plan: PFFPlan, w: Workload, link: Link, *, hosts=None, cores=1, beside: float = 1.0,
                 local: Link = SHARED_MEMORY, cpus=None) -> Result:
    """Wall time and utilisation of a PFF run of ``plan`` (``hosts[n]``: the host of node n,
    default one host each; ``cores``: per host, an int or {host: cores}; ``cpus[n]``: whose
    cores node n uses, when that is not its host's, with ``cores`` keyed by it)."""
    L, parts, splits = plan.num_layers, plan.parts, w.splits
    order = [[(p, j) for j in range(splits) for p in plan.parts_for(n, j)] for n in range(plan.nodes)]

    def inputs(p: int) -> list[int]:
        return list(range(L)) if p == L else ([p - 1] if p > 0 else [])

    def needs(task):
        p, j = task
        return [(p, j)] * (j > 0) + [(q, j + 1) for q in inputs(p)]   # keys: (part, version)

    # every node that listens to a part's topic gets each version (a node also watches the parts
    # it does not need, to see that the others have finished)
    readers = {p: [m for m in range(plan.nodes) if p in plan.received_by(m, splits)] for p in range(parts)}

    def produce(task, n):
        p, j = task
        return [((p, j + 1), w.version_bytes[p], readers[p])]

    return _play(plan.nodes, order, needs, lambda task: w.task_seconds[task[0]], produce, link, hosts,
                 cores, beside, local, cpus)


def simulate_dff(w: Workload, link: Link, *, layer_nodes=None, hosts=None, cores=1, beside: float = 1.0,
                 local: Link = SHARED_MEMORY) -> Result:
    """The DFF chapters schedule: layer k on node ``layer_nodes[k]`` (default one node each), the
    master on a node of its own (the last one), streaming each chapter's images. The layers are
    those with ``activity_bytes``; a part after them (the softmax head) is not simulated."""
    L = len(w.activity_bytes)
    layer_nodes = list(range(L)) if layer_nodes is None else list(layer_nodes)
    nodes = max(layer_nodes) + 2
    master = nodes - 1
    order = [[] for _ in range(nodes)]
    for j in range(w.splits):
        for k in range(L):
            order[layer_nodes[k]].append((k, j))
    # the master streams each chapter's images, then collects the last layer's results
    order[master] = [("images", j) for j in range(w.splits)] + [("results", j) for j in range(w.splits)]

    def needs(task):
        k, j = task
        if k == "images":
            return []
        return [("acts", L - 1 if k == "results" else k - 1, j)]

    def produce(task, n):
        k, j = task
        if k == "results":
            return []
        if k == "images":
            return [(("acts", -1, j), w.image_bytes, [layer_nodes[0]])]
        dest = [layer_nodes[k + 1]] if k + 1 < L else [master]
        return [(("acts", k, j), w.activity_bytes[k], dest)]

    def work(task):
        return 0.0 if task[0] in ("images", "results") else w.task_seconds[task[0]]

    hosts = list(range(nodes)) if hosts is None else list(hosts)
    r = _play(nodes, order, needs, work, produce, link, hosts, cores, beside, local)
    r.busy_seconds = r.busy_seconds[:master]   # the master only sends
    return r
