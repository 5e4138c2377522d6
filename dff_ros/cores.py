"""A trainer's share of a machine's cores: its own torch threads while others on the machine
have work, ``solo`` threads while it alone has (used by the DFF layer hosts and the PFF workers).

Servers that share a machine each take a share of its cores; the one that still has work when
the others have none (the first layer's first chapter, the last chapters) takes them all. The
layers' numbers stay those of one thread on this CPU: the matmuls sum in the same order for any
thread count (dff_ros/numerics.py); a few shapes (the softmax head's weight gradient) differ in
the last bit, as between 1- and 2-thread sequential runs.
"""
from __future__ import annotations

from typing import Callable

import torch

RECHECK_BATCHES = 32   # how often a trainer asks whether the others ran out of work meanwhile


class CoreShare:
    """``use(alone)`` sets torch's thread count; ``recheck`` switches to solo mid-chapter."""

    def __init__(self, solo: int = 0):
        self.own = torch.get_num_threads()
        self.solo = solo if solo > self.own else 0   # 0: always the process's own threads

    def use(self, alone: bool) -> int:
        if not self.solo:
            return torch.get_num_threads()   # nothing to share: whatever the process set
        n = self.solo if alone else self.own
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n

    def recheck(self, batches: int, alone: Callable[[], bool]) -> int:
        """After minibatch ``batches``: every RECHECK_BATCHES, take the solo threads once
        ``alone()`` (the others have just finished); returns the thread count in use."""
        now = torch.get_num_threads()
        if self.solo and now != self.solo and batches % RECHECK_BATCHES == 0 and alone():
            return self.use(True)
        return now

    def release(self) -> None:
        self.use(False)
