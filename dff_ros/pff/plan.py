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
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

VARIANTS = ("single_layer", "all_layers", "federated")


@dataclass(frozen=True)
class PFFPlan:
    variant: str
    nodes: int
    num_layers: int
    head: bool
    layer_nodes: tuple[int, ...] = ()   # single_layer: the node training each layer

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown PFF variant {self.variant!r} (one of {', '.join(VARIANTS)})")
        if self.nodes < 1 or self.num_layers < 1:
            raise ValueError(f"need at least one node and one layer (nodes {self.nodes}, layers {self.num_layers})")
        if self.variant == "single_layer":
            if len(self.layer_nodes) != self.num_layers:
                raise ValueError(f"single_layer needs a node for each of the {self.num_layers} layers, "
                                 f"got {list(self.layer_nodes)}")
            bad = [n for n in self.layer_nodes if not 0 <= n < self.nodes]
            if bad:
                raise ValueError(f"layer_nodes {list(self.layer_nodes)}: nodes must be 0..{self.nodes - 1}")

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

    def trained_by(self, node: int, splits: int) -> list[int]:
        """Parts ``node`` trains in some chapter (it publishes their versions)."""
        return [p for p in range(self.parts) if any(self.trainer(p, j) == node for j in range(splits))]

    def received_by(self, node: int, splits: int) -> list[int]:
        """Parts some other node trains in some chapter (``node`` listens for their versions)."""
        return [p for p in range(self.parts) if any(self.trainer(p, j) != node for j in range(splits))]

def shard_indices(rows: int, node: int, nodes: int, seed: int) -> torch.Tensor:
    """Federated PFF: node ``node``'s rows of the training set. Shards are disjoint, cover every
    row and are class-mixed (a seeded shuffle, then every N-th row)."""
    if not 0 <= node < nodes:
        raise ValueError(f"node {node} outside 0..{nodes - 1}")
    perm = torch.randperm(rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + 777))
    return perm[node::nodes].sort().values
