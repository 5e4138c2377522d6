"""Training schedule: E epochs in S splits (chapters of C = E/S epochs) and lr cooldown (PFF 3-4, 5.1)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chapter:
    """E/S consecutive epochs of training: the unit of the chapters schedule and of PFF tasks."""
    index: int        # 0-based chapter number
    epochs: range     # 1-based global epoch numbers trained in this chapter

    def ends_at(self, epoch: int, seq: int, count: int) -> bool:
        """Stream schedule: whether minibatch ``seq`` of ``count`` in ``epoch`` is the chapter's last."""
        return epoch == self.epochs[-1] and seq == count - 1


def chapters(epochs: int, splits: int) -> list[Chapter]:
    if epochs <= 0 or splits <= 0 or epochs % splits:
        raise ValueError(f"splits ({splits}) must divide epochs ({epochs}), both positive")
    c = epochs // splits
    return [Chapter(j, range(j * c + 1, (j + 1) * c + 1)) for j in range(splits)]


def lr_factor(epoch: int, total_epochs: int, cooldown: bool = True) -> float:
    """1 for the first half of training, then linear decay towards 0 (cooldown after E/2)."""
    if not cooldown or 2 * epoch <= total_epochs:
        return 1.0
    return 2.0 * (1 + total_epochs - epoch) / total_epochs
