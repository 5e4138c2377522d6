"""A DFF layer as a server hosts it for a run, without ROS: its LayerHost, where its weights file
is, what it has received, sent and dropped, and its status. The server node
(``dff_ros.nodes.server``) gives it a worker thread and topics."""
from __future__ import annotations

import math
import queue
import threading
from pathlib import Path

from dff_ros import weights
from dff_ros.pipeline.host import LayerHost
from dff_ros.pipeline.scoring import checkpoint_depth
from dff_ros.run.cluster import HostRequest, Status

# Unsealed inference chunks (the classifier's, or anyone's) waiting in a layer's inbox at most:
# the run's own chunks are paced by its master, these by nobody, and a flood of them would
# queue without bound and keep the worker from the run's chunks.
UNSEALED_WAITING = 8


class HostedLayer:
    """Layer ``spec`` of ``request``'s model, hosted for its run; ``topics``: where its chunks
    come from and go to; ``last``: the model's last layer."""

    def __init__(self, request: HostRequest, spec, topics: dict, *, last: bool, weights_dir: Path):
        m = request.model
        self.model, self.run_id, self.spec, self.topics = m.name, request.run_id, spec, topics
        self.key = request.run_key   # seals what it sends, checks what it trains on (wire/seal.py)
        self.config = m
        self.host = LayerHost(spec, m.train, m.num_classes, last=last)
        self.hash = weights.layer_key(m, spec)
        self.path = weights.model_dir(weights_dir, m.name) / weights.layer_file(spec, self.hash)
        self.epochs, self.splits, self.schedule = m.train.epochs, m.train.splits, m.train.schedule
        self.checkpoint_depth = checkpoint_depth(m)   # checkpoints its topic keeps
        self.restored = False
        self.restored_from = ""   # what was restored: file, run, chapters, when saved
        self.provenance: dict = {}   # the restored file's run_id, chapters, saved_at
        self.saved_path = ""
        self.phase = "created"
        self.bytes_in = self.bytes_out = 0
        self.chapter_bytes: dict[int, int] = {}   # chapter -> bytes sent for it
        self.drops: dict[str, int] = {}            # kind -> chunks dropped
        self.lock = threading.Lock()               # compute vs. save
        self.inbox: queue.Queue = queue.Queue()    # chunks for the worker thread
        self.unsealed = threading.BoundedSemaphore(UNSEALED_WAITING)   # places for unsealed ones in it
        self.worker: threading.Thread | None = None

    def above_finished(self) -> bool:
        """The layers above have sent their final chapter: its last chunk waits in the inbox."""
        last = self.splits - 1
        with self.inbox.mutex:
            queued = list(self.inbox.queue)
        return any(isinstance(item, tuple) and item[0] and item[1].chapter == last and item[1].seq == item[1].count - 1
                   for item in queued)

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    # ------------------------------------------------------------------ what arrives
    def foreign(self, run_id: str, model: str, source: int) -> tuple[str, str] | None:
        """(kind, why) if a chunk with this header is not for this layer, else None."""
        if model != self.model:
            return "foreign", f"model {model!r} on {self.model!r}'s topic"
        if run_id != self.run_id:   # another pipeline of the same model, or a stray publisher
            return "foreign", f"run {run_id!r}, this layer belongs to run {self.run_id!r}"
        if source != self.spec.source:
            return "misrouted", f"from layer {source}, this layer reads layer {self.spec.source}"
        return None

    def take_unsealed_place(self) -> bool:
        """A place in the inbox for an unsealed inference chunk (False: all taken, drop it);
        give it back with ``free_unsealed_place`` once the chunk is done."""
        return self.unsealed.acquire(blocking=False)

    def free_unsealed_place(self) -> None:
        self.unsealed.release()

    def drop(self, kind: str) -> bool:
        """Count a dropped chunk; True for the first of its kind (the one worth a log line)."""
        self.drops[kind] = self.drops.get(kind, 0) + 1
        return self.drops[kind] == 1

    # ------------------------------------------------------------------ compute
    def train(self, chunk) -> list:
        self.phase = "training"
        with self.lock:
            return self.host.train(chunk)

    def infer(self, chunk):
        self.phase = "inference"
        with self.lock:
            return self.host.infer(chunk)

    def sent(self, chapter: int | None, size: int) -> None:
        self.bytes_out += size
        if chapter is not None:
            self.chapter_bytes[chapter] = self.chapter_bytes.get(chapter, 0) + size

    def finished(self, chunk, outs) -> bool:
        """This training chunk completed the layer's last chapter."""
        if self.schedule == "stream":
            return chunk.epoch == self.epochs and chunk.seq == chunk.count - 1
        return bool(outs) and chunk.chapter == self.splits - 1

    # ------------------------------------------------------------------ weights
    def resume(self, checkpoint) -> None:
        self.host.resume(checkpoint)
        self.restored = True

    def save(self) -> str:
        with self.lock:
            # which run wrote it and how far it got: only a layer that trained every chapter is
            # ever restored (an interrupted run's weights are not a trained layer)
            made = weights.made_by(self.run_id, self.host.chapters_done, self.splits)
            if self.restored and not self.host.chapters_done:   # restored, not trained further: as it was
                made = self.provenance
            state = self.host.state_dict()
        path = weights.save_layer(self.path, model=self.model, index=self.spec.index, spec_hash=self.hash,
                                  state=state, provenance=made)
        self.saved_path = str(path)
        return self.saved_path

    def restore(self) -> str:
        """Load the saved weights if a run trained them to the end. Returns why not, if a file
        was there and is not restored ("" otherwise); sets ``restored`` and ``restored_from``."""
        if not self.path.exists():
            return ""
        state, made = weights.read_layer(self.path, self.hash)
        why = weights.unfinished(made)
        if why:
            return (f"not restoring {self.path}: {why}; layer {self.spec.index} of {self.model!r} trains "
                    "from scratch")
        self.host.load_state_dict(state)
        self.restored, self.provenance = True, made
        self.restored_from = weights.describe(self.path, made)
        return ""

    # ------------------------------------------------------------------ status
    def status(self, server: str, phase: str | None = None, message: str = "") -> Status:
        """The layer's heartbeat (msg/LayerStatus.msg), with its per-epoch and per-chapter history."""
        host = self.host
        if not message and self.drops:
            message = "dropped: " + ", ".join(f"{k} {n}" for k, n in sorted(self.drops.items()))
        loss, acc = host.history.as_lists(self.epochs)
        spans = [host.timeline.get(c, (math.nan, math.nan)) for c in range(self.splits)]
        return Status(self.run_id, self.model, server, layer=self.spec.index, phase=phase or self.phase,
                      chapter=host.chapter, chapters_done=host.chapters_done, epoch=host.epoch,
                      loss=float(host.mean_loss), samples=host.samples, busy_seconds=host.busy_seconds,
                      bytes_in=self.bytes_in, bytes_out=self.bytes_out, dropped=self.dropped, message=message,
                      epoch_loss=loss, epoch_accuracy=acc, chapter_start=[s[0] for s in spans],
                      chapter_end=[s[1] for s in spans],
                      chapter_bytes_out=[int(self.chapter_bytes.get(c, 0)) for c in range(self.splits)])
