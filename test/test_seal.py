"""Seals (dff_ros/wire/seal.py): the same seal on every form of a message, a different one for
any change to what it covers, and none without a key."""
import pytest
import torch

from dff_ros.ff.learners import Activities
from dff_ros.msg import InferenceBatch, LayerParameters, TrainingBatch
from dff_ros.parts.versions import Parameters
from dff_ros.pipeline.chunks import InferChunk, TrainChunk
from dff_ros.wire import cdr
from dff_ros.wire.codec import infer_to_msg, params_to_msg, train_to_msg
from dff_ros.wire.seal import seal, sealed
from dff_ros.wire.tensors import to_msg

KEY = 0x1234_5678_9ABC_DEF1


def train_chunk():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (8,), generator=g)
    acts = Activities(*(torch.rand(8, 5, generator=g) for _ in range(3)), labels)
    return TrainChunk(2, 3, 1, 4, labels, acts=acts, features=torch.rand(8, 5, generator=g), attempt=1)


def infer_chunk():
    g = torch.Generator().manual_seed(1)
    return InferChunk(1, 3, torch.randint(0, 10, (8,), generator=g), goodness=torch.rand(8, 10, generator=g),
                      neutral=torch.rand(8, 5, generator=g))


def forms(kind):
    """The message as the sender fills it (Blank of views), as the receiver reads it (Blank from
    bytes) and as rclpy builds it."""
    chunk, encode, msg_type = ((train_chunk(), train_to_msg, TrainingBatch) if kind == "train"
                               else (infer_chunk(), infer_to_msg, InferenceBatch))
    sent = encode(chunk, run_id="r1", model="m", layer=0, msg=cdr.blank(msg_type))
    received = cdr.deserialize(cdr.serialize(sent, msg_type), msg_type)
    return sent, received, encode(chunk, run_id="r1", model="m", layer=0)


@pytest.mark.parametrize("kind", ["train", "infer"])
def test_every_form_of_a_message_has_one_seal_and_it_verifies(kind):
    sent, received, built = forms(kind)
    s = seal(KEY, sent)
    assert s != 0 and seal(KEY, received) == s == seal(KEY, built)
    received.seal = s
    assert sealed(KEY, received)
    assert not sealed(KEY + 2, received)    # another run's key
    received.seal = 0
    assert not sealed(KEY, received)        # unsealed: what a node without the key sends


def test_without_a_key_nothing_is_sealed_and_everything_passes():
    sent, received, _ = forms("train")
    assert seal(0, sent) == 0 and sealed(0, received)


TRAIN_CHANGES = {
    "run_id": lambda m: setattr(m, "run_id", "r2"),
    "model": lambda m: setattr(m, "model", "n"),
    "layer": lambda m: setattr(m, "layer", 1),
    "chapter": lambda m: setattr(m, "chapter", 3),
    "epoch": lambda m: setattr(m, "epoch", 4),
    "seq": lambda m: setattr(m, "seq", 2),
    "count": lambda m: setattr(m, "count", 5),
    "attempt": lambda m: setattr(m, "attempt", 2),
    "a label": lambda m: to_msg((torch.arange(8) + 1) % 10, m.labels),
    "the rows": lambda m: to_msg(torch.rand(7, 5), m.pos),
    "a dtype": lambda m: to_msg(torch.rand(8, 5).double(), m.neg),
    "a tensor added": lambda m: to_msg(torch.zeros(8, 784, dtype=torch.uint8), m.images),
}


@pytest.mark.parametrize("change", list(TRAIN_CHANGES))
def test_a_changed_header_label_or_shape_breaks_the_seal(change):
    _, received, _ = forms("train")
    before = seal(KEY, received)
    TRAIN_CHANGES[change](received)
    assert seal(KEY, received) != before


def test_changed_scores_break_an_inference_seal():
    _, received, _ = forms("infer")
    before = seal(KEY, received)
    to_msg(torch.rand(8, 10), received.goodness)
    assert seal(KEY, received) != before


def test_activity_values_are_not_covered():
    """The documented gap: the large tensors' values (hashing them would cost as much as sending
    them); a copy made after the real chunk is a duplicate of a chunk already accepted."""
    _, received, _ = forms("train")
    before = seal(KEY, received)
    to_msg(torch.rand(8, 5), received.pos)
    assert seal(KEY, received) == before


def params_forms():
    p = Parameters(1, 3, {"layer.linear.weight": torch.rand(4, 3), "optim.0.step": torch.tensor(7.0)},
                   {"start": 1.5, "inputs": {0: 2}})
    sent = params_to_msg(p, run_id="r1", model="m", node_name="server_1", msg=cdr.blank(LayerParameters))
    received = cdr.deserialize(cdr.serialize(sent, LayerParameters), LayerParameters)
    return sent, received, params_to_msg(p, run_id="r1", model="m", node_name="server_1")


def test_parameters_are_sealed_whole():
    """A checkpoint or PFF version goes out once per chapter: every byte counts, values too."""
    sent, received, built = params_forms()
    s = seal(KEY, sent)
    assert s != 0 and seal(KEY, received) == s == seal(KEY, built)
    for change in (lambda m: setattr(m, "version", 4), lambda m: setattr(m, "node", "server_2"),
                   lambda m: to_msg(torch.rand(4, 3), m.tensors[0]),
                   lambda m: setattr(m, "metric_values", [2.5, 2.0]),
                   lambda m: setattr(m, "names", ["layer.linear.bias", "optim.0.step"])):
        _, m, _ = params_forms()
        change(m)
        assert seal(KEY, m) != s


def test_the_encoders_seal_with_the_key_they_are_given():
    p = Parameters(0, 1, {"w": torch.ones(2)}, {})
    assert sealed(KEY, params_to_msg(p, run_id="r", model="m", node_name="n", key=KEY))
    assert params_to_msg(p, run_id="r", model="m", node_name="n").seal == 0
    assert sealed(KEY, train_to_msg(train_chunk(), run_id="r", model="m", layer=0, key=KEY))
    assert sealed(KEY, infer_to_msg(infer_chunk(), run_id="r", model="m", layer=0, msg=cdr.blank(InferenceBatch),
                                    key=KEY))


def status_msg(stamp=100.0, **fields):
    """A status as a server sends it: a Python float loss that float32 cannot hold exactly."""
    from dff_ros.msg import LayerStatus
    from dff_ros.run.cluster import Status
    from dff_ros.wire.codec import status_to_msg
    st = Status(run_id="r1", model="m", server="server_1", layer=1, phase="training", loss=0.1, samples=640,
                busy_seconds=1.25, epoch_loss=[0.7, float("nan")], chapter_start=[1.5e9], chapter_bytes_out=[7])
    msg = status_to_msg(st, LayerStatus())
    for k, v in fields.items():
        setattr(msg, k, v)
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp), int(stamp % 1 * 1e9)
    msg.seal = seal(KEY, msg)
    return msg


def over_the_wire(msg):
    from rclpy.serialization import deserialize_message, serialize_message
    return deserialize_message(serialize_message(msg), type(msg))


def test_a_status_is_sealed_whole_and_verifies_as_received():
    """The receiver reads float32 fields rounded; the seal is of what it reads (a PFF share's
    running-mean loss once broke every status seal)."""
    sent = status_msg()
    received = over_the_wire(sent)
    assert received.loss != 0.1 and sealed(KEY, received)
    for change in (lambda m: setattr(m, "server", "server_2"), lambda m: setattr(m, "phase", "trained"),
                   lambda m: setattr(m.header.stamp, "sec", 101), lambda m: setattr(m, "loss", 0.5),
                   lambda m: setattr(m, "epoch_loss", [0.7, 0.6]), lambda m: setattr(m, "samples", 641)):
        m = over_the_wire(sent)
        change(m)
        assert not sealed(KEY, m)


def test_the_status_gate_takes_only_fresh_sealed_statuses_of_each_server():
    from dff_ros.wire.seal import StatusGate
    gate = StatusGate(window=5.0)
    first = over_the_wire(status_msg(100.0))
    assert gate.admit(KEY, first)
    assert not gate.admit(KEY, over_the_wire(first))                    # the same status again: a replay
    forged = over_the_wire(status_msg(101.0))
    forged.seal = 0
    assert not gate.admit(KEY, forged)                                  # unsealed: not the server's
    assert not gate.admit(KEY + 2, over_the_wire(status_msg(102.0)))    # another run's key
    assert gate.admit(KEY, over_the_wire(status_msg(120.0)))
    assert gate.admit(KEY, over_the_wire(status_msg(116.0)))            # another thread's, a little late
    assert not gate.admit(KEY, over_the_wire(status_msg(110.0)))        # recorded before the newest: old
    assert gate.admit(KEY, over_the_wire(status_msg(50.0, server="server_2")))   # each server by its own clock
    assert gate.dropped == {"unsealed": 2, "replayed": 2}
    assert StatusGate().admit(0, forged)                                # an unkeyed run takes anything
