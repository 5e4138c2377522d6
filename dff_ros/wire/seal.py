"""Seals: which chunks on a run's data topics come from the run's own writers.

The run id and model name of a chunk are readable by anyone on the domain, so they tell runs
apart but prove nothing. A run's master and the servers hosting its layers share the run key
(``dff_ros.control``); every ``TrainingBatch`` and ``InferenceBatch`` they send carries
``seal``, a keyed BLAKE2b MAC of its header (run, model, producing layer, attempt, chapter,
epoch, seq, count), the dtype and shape of each tensor, and the bytes of its small tensors
(labels, negative labels, class scores). A receiver in a keyed run drops a training chunk
whose seal does not verify, so nobody without the key can make a layer train on, or the master
score, a chunk it did not plan. ``LayerParameters`` (checkpoints, PFF versions and task
reports) are sealed whole, every tensor byte included: one goes out per chapter.

Why the large tensors (images, activities) are not covered: hashing them would cost as much
as sending them. It leaves one way in: copy a real chunk's header and seal and change its
activities. That copy can only be made after the real chunk was sent, and each (attempt,
chapter, seq) is accepted once, so the real one is already taken. What stays open without
DDS security: a node that reads the master's create_layers requests learns the key.

A ``LayerStatus`` is sealed whole with its stamp, so only the run's servers can send the
heartbeats the master counts; ``StatusGate`` turns replays of a server's earlier statuses away.

Inference chunks pass unsealed (the classifier asks a run's hosted layers to infer without
the key); a layer seals its inference output only when the input was sealed, so the master
takes only results of the chunks it sent.
"""
from __future__ import annotations

import hashlib
import struct
from array import array
from collections import deque

# the tensors whose bytes the seal covers: small (B or B x classes values), and what a forger
# would change to mislead (labels, negatives, scores)
SMALL_TENSORS = ("labels", "neg_labels", "goodness")
INTEGERS = ("layer", "chapter", "epoch", "seq", "count", "attempt", "part", "version")


def seal(key: int, msg) -> int:
    """The seal of ``msg`` (a TrainingBatch, InferenceBatch, LayerParameters or LayerStatus, rosidl or
    ``cdr.Blank``) under ``key``; 0 for an unkeyed run (key 0)."""
    if not key:
        return 0
    h = hashlib.blake2b(digest_size=8, key=int(key).to_bytes(8, "little"), person=b"dff_ros seal")
    kind = _kind(msg)
    for text in (kind, msg.run_id, msg.model):
        _text(h, text)
    h.update(struct.pack(f"<{len(INTEGERS)}q", *(int(getattr(msg, f, 0)) for f in INTEGERS)))
    if kind == "LayerStatus":
        _status(h, msg)
    elif kind == "LayerParameters":   # once per chapter: every byte is covered
        _text(h, msg.node)
        for name, t in zip(msg.names, msg.tensors):
            _text(h, name)
            _tensor(h, t, values=True)
        h.update(struct.pack("<2Q", len(msg.names), len(msg.tensors)))
        for name in msg.metric_names:
            _text(h, name)
        h.update(struct.pack(f"<Q{len(msg.metric_values)}d", len(msg.metric_values), *msg.metric_values))
    else:
        for field in TENSOR_FIELDS[kind]:
            _tensor(h, getattr(msg, field), values=field in SMALL_TENSORS)
    return int.from_bytes(h.digest(), "little") or 1   # 0 means "unsealed"


def _kind(msg) -> str:
    for kind, field in (("TrainingBatch", "attempt"), ("LayerParameters", "version"), ("LayerStatus", "busy_seconds")):
        if hasattr(msg, field):
            return kind
    return "InferenceBatch"


def _text(h, text: str) -> None:
    b = text.encode()
    h.update(struct.pack("<I", len(b)) + b)


def _tensor(h, t, *, values: bool) -> None:
    shape = [int(s) for s in t.shape]
    dtype = t.dtype.encode()
    h.update(struct.pack(f"<I{len(dtype)}sI{len(shape)}Q", len(dtype), dtype, len(shape), *shape))
    if values:
        h.update(struct.pack("<Q", len(t.data)))
        h.update(t.data)


STATUS_INTEGERS = ("chapters_done", "samples", "bytes_in", "bytes_out", "dropped")


def _status(h, msg) -> None:
    for text in (msg.server, msg.phase, msg.message):
        _text(h, text)
    stamp = msg.header.stamp
    h.update(struct.pack(f"<2q{len(STATUS_INTEGERS)}Q2d", stamp.sec, stamp.nanosec,
                         *(int(getattr(msg, f)) for f in STATUS_INTEGERS), msg.busy_seconds, msg.idle_seconds))
    # float32 fields as the receiver reads them: the sender's Python float is rounded on the wire
    for field, code in (("loss", "f"), ("epoch_loss", "f"), ("epoch_accuracy", "f"), ("chapter_start", "d"),
                        ("chapter_end", "d"), ("chapter_bytes_out", "Q")):
        values = getattr(msg, field)
        data = array(code, [values] if field == "loss" else values).tobytes()
        h.update(struct.pack("<Q", len(data)) + data)


class StatusGate:
    """Which statuses of a run are its servers' heartbeats: sealed with the run key, and not a
    replay: each seal is taken once, and a status stamped more than ``window`` seconds before the
    newest taken from its server is old (stamps are compared only with the same server's)."""

    def __init__(self, window: float = 5.0, remember: int = 512):
        self.window, self.remember = window, remember
        self.newest: dict[str, float] = {}
        self.seen: dict[str, tuple[deque, set]] = {}
        self.dropped = {"unsealed": 0, "replayed": 0}

    def admit(self, key: int, msg) -> bool:
        if not sealed(key, msg):
            self.dropped["unsealed"] += 1
            return False
        if not key:   # an unkeyed run: nothing to tell replays by
            return True
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        order, seals = self.seen.setdefault(msg.server, (deque(), set()))
        newest = self.newest.get(msg.server, stamp)
        if msg.seal in seals or stamp < newest - self.window:
            self.dropped["replayed"] += 1
            return False
        self.newest[msg.server] = max(newest, stamp)
        order.append(msg.seal)
        seals.add(msg.seal)
        if len(order) > self.remember:
            seals.discard(order.popleft())
        return True


def sealed(key: int, msg) -> bool:
    """``msg`` carries the seal of ``key`` (an unkeyed run accepts anything)."""
    return not key or msg.seal == seal(key, msg)


TENSOR_FIELDS = {
    "TrainingBatch": ("images", "labels", "neg_labels", "neg_images", "pos", "neg", "neutral", "features"),
    "InferenceBatch": ("images", "labels", "candidates", "goodness", "neutral", "features"),
}
