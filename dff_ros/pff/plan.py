"""Who trains which part in which chapter.

Parts are the model's layers 0..L-1 and, with a softmax head, the head as part L. Task
(part p, chapter j) produces version j+1 of p (version 0 is the seeded initialisation every
node builds itself) and needs version j of p and version j+1 of the layers feeding p: the
sequential schedule's dependencies. The variants only assign tasks to nodes:
  single_layer (Algorithm 1): node of layer i trains it every chapter (the head goes with the
                last layer); a node may hold several layers when there are fewer nodes;
  all_layers   (Algorithm 2): node j mod N trains every part in chapter j, so N chapters run
                at once, staggered by one part;
  federated:   all_layers, each node on its own shard of the training set.
Adaptive negatives for chapter j are scored on the node that trained the last layer in
chapter j - lag, with the network it then holds, and sent on (as pseudo-part NEGATIVES) to
the nodes that train layers in chapter j, unless that is only itself. The default lag N makes
All-Layers nodes score their own next chapter's negatives (the paper's "each node computes its
own negative samples") and keeps a Single-Layer pipeline full; lag 1 is the sequential choice
and serialises the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dff_ros.parts.names import NEGATIVES, VARIANTS


MAX_NODES = 1024   # nodes (and layers) of one run; a plan is built per node and per chapter


@dataclass(frozen=True)
class PFFPlan:
    """Which node trains which part in which chapter of a PFF run, and where adaptive negatives are
    scored."""
    variant: str
    nodes: int
    num_layers: int
    head: bool
    layer_nodes: tuple[int, ...] = ()   # single_layer: the node training each layer
    negatives_lag: int = 0              # adaptive negatives: scored this many chapters ahead (0: not adaptive)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown PFF variant {self.variant!r} (one of {', '.join(VARIANTS)})")
        if not (1 <= self.nodes <= MAX_NODES and 1 <= self.num_layers <= MAX_NODES):
            raise ValueError(f"need 1..{MAX_NODES} nodes and layers (nodes {self.nodes}, layers {self.num_layers})")
        if self.variant == "single_layer":
            if len(self.layer_nodes) != self.num_layers:
                raise ValueError(f"single_layer needs a node for each of the {self.num_layers} layers, "
                                 f"got {list(self.layer_nodes)}")
            bad = [n for n in self.layer_nodes if not 0 <= n < self.nodes]
            if bad:
                raise ValueError(f"layer_nodes {list(self.layer_nodes)}: nodes must be 0..{self.nodes - 1}")
        if self.negatives_lag < 0:
            raise ValueError(f"negatives_lag must be >= 0, got {self.negatives_lag}")
        if self.variant == "federated" and self.negatives_lag % self.nodes:
            # another node's labels would be for rows of another shard (and would leak labels)
            raise ValueError(f"train.negatives_lag: federated adaptive negatives are scored by each node on its "
                             f"own shard: it must be a multiple of the node count {self.nodes}, "
                             f"got {self.negatives_lag}")

    @classmethod
    def for_model(cls, config, variant: str, nodes: int, layer_nodes: tuple[int, ...] = ()) -> "PFFPlan":
        """The plan of ``config`` on ``nodes`` nodes (the master and every server derive the same)."""
        t = config.train
        adaptive = t.algorithm == "ff" and t.negatives == "adaptive"
        try:
            return cls(variant, nodes, len(config.layers), t.algorithm == "ff" and "softmax" in t.classifiers,
                       tuple(layer_nodes), (t.negatives_lag or nodes) if adaptive else 0)
        except ValueError as e:
            raise ValueError(f"{config.source}: {e}") from None

    @property
    def parts(self) -> int:
        return self.num_layers + int(self.head)

    @property
    def passes_optimizer(self) -> bool:
        """The next trainer of a part is another node: its optimizer state travels with it."""
        return self.variant != "single_layer" and self.nodes > 1

    def trainer(self, part: int, chapter: int) -> int:
        if self.variant == "single_layer":
            return self.layer_nodes[min(part, self.num_layers - 1)]
        return chapter % self.nodes

    def parts_for(self, node: int, chapter: int) -> list[int]:
        return [p for p in range(self.parts) if self.trainer(p, chapter) == node]

    @staticmethod
    def is_root(part: int, chapter: int) -> bool:
        """Task (0, 0) is the one every other task waits for, directly or through others."""
        return part == 0 and chapter == 0

    def others_last_outputs(self, node: int, splits: int) -> dict[int, int]:
        """By part, the newest version the other nodes' last tasks produce. Once ``node`` has
        seen them all, no other node has training left: versions are made in order, so seeing
        version v of a part means every older version exists."""
        last: dict[int, int] = {}
        for other in range(self.nodes):
            tasks = [(c, p) for c in range(splits) for p in self.parts_for(other, c)] if other != node else []
            if tasks:
                chapter, part = max(tasks)   # a node runs its chapters in order, parts bottom-up
                last[part] = max(last.get(part, 0), chapter + 1)
        return last

    def negatives_scorer(self, chapter: int) -> int:
        """The node that scores adaptive negatives after ``chapter`` (for chapter + lag)."""
        return self.trainer(self.num_layers - 1, chapter)

    def negatives_users(self, chapter: int) -> set[int]:
        """Nodes that need chapter ``chapter``'s negative labels (they train layers in it)."""
        return {self.trainer(p, chapter) for p in range(self.num_layers)}

    def _negatives_routes(self, splits: int) -> list[tuple[int, int]]:
        """(scorer, user) pairs across nodes for every chapter with scored labels."""
        if not self.negatives_lag:
            return []
        return [(self.negatives_scorer(j - self.negatives_lag), user) for j in range(self.negatives_lag, splits)
                for user in self.negatives_users(j) if user != self.negatives_scorer(j - self.negatives_lag)]

    def trained_by(self, node: int, splits: int) -> list[int]:
        """Parts ``node`` trains in some chapter (it publishes their versions), and NEGATIVES
        first when it scores labels another node uses."""
        parts = [p for p in range(self.parts) if any(self.trainer(p, j) == node for j in range(splits))]
        return ([NEGATIVES] if any(s == node for s, _ in self._negatives_routes(splits)) else []) + parts

    def received_by(self, node: int, splits: int) -> list[int]:
        """Parts some other node trains in some chapter (``node`` listens for their versions),
        and NEGATIVES first when another node scores labels it uses."""
        parts = [p for p in range(self.parts) if any(self.trainer(p, j) != node for j in range(splits))]
        return ([NEGATIVES] if any(u == node for _, u in self._negatives_routes(splits)) else []) + parts

    def resume_chapter(self, node: int, splits: int, done: set[tuple[int, int]]) -> int:
        """Where a replacement for a lost ``node`` starts: the first chapter with a task of that
        node not in ``done`` (the reported (part, chapter) pairs), moved back while the versions
        it would start from were trained on that node itself. Those went with it (a topic's
        transient-local history lives in its writer), so the replacement trains them again:
        a Single-Layer node starts over (the layers below give their newest versions), and an
        All-Layers node that had done its last chapter does it again to hold the final versions."""
        start = next((c for c in range(splits) if any((p, c) not in done for p in self.parts_for(node, c))), splits)

        def inputs_lost(c: int) -> bool:   # version c of what it trains in chapter c (or holds at the end)
            return c > 0 and any(self.trainer(p, c - 1) == node for p in self.parts_for(node, min(c, splits - 1)))

        while inputs_lost(start):
            start -= 1
        return start


def shard_indices(rows: int, node: int, nodes: int, seed: int) -> torch.Tensor:
    """Federated PFF: node ``node``'s rows of the training set. Shards are disjoint, cover every
    row and are class-mixed (a seeded shuffle, then every N-th row)."""
    if not 0 <= node < nodes:
        raise ValueError(f"node {node} outside 0..{nodes - 1}")
    perm = torch.randperm(rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + 777))
    return perm[node::nodes].sort().values
