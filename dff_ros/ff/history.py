"""Per-epoch means of a part's minibatch metrics (loss, training accuracy): what a run's
plots and summaries show per layer. Epochs are 1-based, as everywhere in training."""
from __future__ import annotations

import math


_KEYS = ("loss", "accuracy", "batches")   # sums per epoch


class EpochMeans:
    """Per-epoch means of a part's minibatch loss and training accuracy, summed as it trains (the
    learning curves)."""
    def __init__(self):
        self._sums: dict[int, list[float]] = {}   # epoch -> [loss sum, accuracy sum, batches]

    def add(self, epoch: int, loss: float, accuracy: float = math.nan) -> None:
        s = self._sums.setdefault(int(epoch), [0.0, 0.0, 0])
        s[0] += loss
        s[1] += accuracy
        s[2] += 1

    def loss(self) -> dict[int, float]:
        return {e: s[0] / s[2] for e, s in sorted(self._sums.items())}

    def accuracy(self) -> dict[int, float]:
        return {e: s[1] / s[2] for e, s in sorted(self._sums.items())}

    def state(self) -> dict[str, float]:
        """Flat numbers (``epoch_<e>_<sum>``) that fit a parameters message's metrics: a host
        that takes a layer over, or the master of a PFF run, gets the curve with the weights."""
        return {f"epoch_{e}_{k}": v for e, s in self._sums.items() for k, v in zip(_KEYS, s)}

    def load(self, state: dict) -> None:
        """Add the epochs found in ``state`` (other keys are ignored)."""
        for key, value in state.items():
            parts = str(key).split("_", 2)
            if len(parts) == 3 and parts[0] == "epoch" and parts[1].isdigit() and parts[2] in _KEYS:
                self._sums.setdefault(int(parts[1]), [0.0, 0.0, 0])[_KEYS.index(parts[2])] += value

    def as_lists(self, epochs: int) -> tuple[list[float], list[float]]:
        """Loss and accuracy for epochs 1..epochs, NaN where an epoch has no batch yet."""
        loss, acc = self.loss(), self.accuracy()
        return ([loss.get(e, math.nan) for e in range(1, epochs + 1)],
                [acc.get(e, math.nan) for e in range(1, epochs + 1)])


def curves(parts: dict[str, EpochMeans], epochs: int) -> dict:
    """A run's ``history``: per-epoch loss and training accuracy of each named part, as JSON
    lists over epochs 1..epochs (None: not trained). Every trainer writes this shape."""
    out: dict = {"epochs": epochs, "loss": {}, "accuracy": {}}
    for name, means in parts.items():
        loss, acc = means.as_lists(epochs)
        out["loss"][name], out["accuracy"][name] = rounded(loss), rounded(acc)
    return out


def rounded(values) -> list[float | None]:
    """JSON-ready: 5 decimals, None for NaN (not trained yet)."""
    return [None if v != v else round(float(v), 5) for v in values]
