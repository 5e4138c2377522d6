"""dff_ros.wire.cdr against rosidl's own serializer: the same bytes mean the same message both
ways, and bytes that are not a message raise CDRError (never anything else)."""
import random

import pytest
import torch
from rclpy.serialization import deserialize_message, serialize_message

from dff_ros.msg import InferenceBatch, LayerParameters, Tensor, TrainingBatch
from dff_ros.wire import cdr
from dff_ros.wire.tensors import from_msg, nbytes, to_msg


def _tensor(rng: random.Random):
    kind = rng.choice(["none", "float32", "int64", "uint8", "bfloat16", "empty"])
    if kind == "none":
        return None
    if kind == "empty":
        return torch.zeros(0, 3)
    shape = [rng.randint(1, 5) for _ in range(rng.randint(1, 3))]
    t = torch.randn(shape) * 100
    return t.to(getattr(torch, kind))


def _training(rng: random.Random) -> TrainingBatch:
    m = TrainingBatch(run_id=rng.choice(["", "r-1", "rün ✓"]), model="m" * rng.randint(0, 9),
                      layer=rng.randint(-1, 5), chapter=rng.randint(0, 2 ** 32 - 1), epoch=rng.randint(0, 9),
                      seq=rng.randint(0, 99), count=rng.randint(0, 99), attempt=rng.randint(0, 3))
    m.header.stamp.sec, m.header.stamp.nanosec = rng.randint(-2 ** 31, 2 ** 31 - 1), rng.randint(0, 10 ** 9 - 1)
    m.header.frame_id = "f" * rng.randint(0, 5)
    for f in ("images", "labels", "neg_labels", "neg_images", "pos", "neg", "neutral", "features"):
        to_msg(_tensor(rng), getattr(m, f))
    return m


def _parameters(rng: random.Random) -> LayerParameters:
    n = rng.randint(0, 4)
    m = LayerParameters(run_id="r", model="m", node="server_1", part=rng.randint(-1, 3), chapter=1, version=2,
                        names=[f"layer.{i}" * rng.randint(1, 3) for i in range(n)],
                        metric_names=["start", "end"][:rng.randint(0, 2)])
    m.metric_values = [rng.random() * 1e9 for _ in m.metric_names]
    m.tensors = [to_msg(_tensor(rng) if i % 2 else torch.randn(3)) for i in range(n)]
    return m


@pytest.mark.parametrize("seed", range(40))
def test_the_same_message_both_ways(seed):
    rng = random.Random(seed)
    for m in (_training(rng), _parameters(rng), InferenceBatch(run_id="x", seq=seed)):
        mine = cdr.serialize(m)
        assert deserialize_message(mine, type(m)) == m
        assert 0 <= len(serialize_message(m)) - len(mine) <= 8   # Fast CDR may pad the end
        back = cdr.deserialize(serialize_message(m), type(m))
        assert nbytes(back) == nbytes(m)
        assert deserialize_message(cdr.serialize(back, type(m)), type(m)) == m


def test_blank_tensors_are_views_both_ways():
    x = torch.randn(4, 6)
    m = to_msg(x, cdr.blank(Tensor))
    x[0, 0] = 7.0                       # sent as it is when serialized: no copy before that
    data = cdr.serialize(m, Tensor)
    got = from_msg(cdr.deserialize(data, Tensor))
    assert torch.equal(got, x) and got.data_ptr() != x.data_ptr()
    assert deserialize_message(data, Tensor) == to_msg(x)
    buf = bytearray(3)
    view = cdr.serialize_into(m, Tensor, lambda n: buf if len(buf) >= n else buf.extend(bytes(n - len(buf))) or buf)
    assert bytes(view) == data


def test_an_eight_byte_tensor_off_its_alignment_is_copied():
    m = TrainingBatch(run_id="ab")     # a 3-byte string puts the tensors after it off 8-byte alignment
    to_msg(torch.arange(5), m.labels)
    labels = from_msg(cdr.deserialize(serialize_message(m), TrainingBatch).labels)
    assert labels.data_ptr() % 8 == 0 and labels.tolist() == [0, 1, 2, 3, 4]


def test_every_truncation_and_flip_is_a_cdr_error_or_a_message():
    data = serialize_message(_training(random.Random(3)))
    for n in range(len(data)):
        with pytest.raises(cdr.CDRError):
            cdr.deserialize(data[:n], TrainingBatch)
    rng = random.Random(0)
    for _ in range(300):   # a flipped byte: a different message, or a CDRError naming the field
        b = bytearray(data)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        try:
            cdr.deserialize(bytes(b), TrainingBatch)
        except cdr.CDRError:
            pass


def test_errors_name_what_is_wrong():
    with pytest.raises(cdr.CDRError, match="encapsulation 0003"):
        cdr.deserialize(b"\x00\x03\x00\x00" + bytes(200), TrainingBatch)
    good = serialize_message(TrainingBatch(run_id="r"))
    with pytest.raises(cdr.CDRError, match="bytes after the message"):
        cdr.deserialize(good + bytes(64), TrainingBatch)
    huge = bytearray(serialize_message(Tensor(dtype="float32")))
    huge[-4:] = (2 ** 32 - 1).to_bytes(4, "little")   # data: 4 G elements claimed, none sent
    with pytest.raises(cdr.CDRError, match=r"Tensor\.data: 4294967295 bytes needed"):
        cdr.deserialize(bytes(huge), Tensor)
    bad = bytearray(serialize_message(TrainingBatch(run_id="rr")))
    bad[bad.index(b"rr")] = 0xff
    with pytest.raises(cdr.CDRError, match=r"TrainingBatch\.run_id: not UTF-8"):
        cdr.deserialize(bytes(bad), TrainingBatch)


def test_big_endian_bytes_are_read():
    le = bytearray(cdr.serialize(TrainingBatch(layer=-2, seq=258, run_id="r")))
    be = bytearray(b"\x00\x00\x00\x00")   # written field by field, big-endian
    import struct
    body = struct.pack(">iI", 0, 0) + struct.pack(">I", 1) + b"\x00"   # header: stamp, frame_id ""
    body += bytes(-len(body) % 4) + struct.pack(">I", 2) + b"r\x00"    # run_id
    body += bytes(-len(body) % 4) + struct.pack(">I", 1) + b"\x00"     # model
    body += bytes(-len(body) % 4) + struct.pack(">iIIIII", -2, 0, 0, 258, 0, 0)
    body += bytes(-len(body) % 8) + struct.pack(">Q", 0x0102030405060708)   # seal
    body += (struct.pack(">I", 1) + b"\x00\x00\x00\x00" + struct.pack(">II", 0, 0)) * 8   # 8 absent tensors
    m = cdr.deserialize(bytes(be + body), TrainingBatch)
    assert (m.layer, m.seq, m.run_id, m.seal) == (-2, 258, "r", 0x0102030405060708) and from_msg(m.pos) is None
    assert cdr.deserialize(bytes(le), TrainingBatch).seq == 258
