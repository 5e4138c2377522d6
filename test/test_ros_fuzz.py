"""Random and edge-value requests for every service of a live server (hypothesis builds them
from the service types' own field types): each one is answered in time, the server stays up,
and its memory stays bounded. Random bytes on a layer's input go the same way."""
import os
import random

import psutil
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rosutil import Client, ros_env, start_server

from bad_inputs import create_request, spec_msg

from dff_ros.msg import TrainingBatch
from dff_ros.nodes.common import DATA_QOS
from dff_ros.srv import CreateLayers, DeleteModel, FetchParameters, ListLayers, SaveWeights
from dff_ros.topics import layer_topics

pytestmark = pytest.mark.ros

INTS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
UINTS = {"uint8": 8, "byte": 8, "octet": 8, "char": 8, "uint16": 16, "uint32": 32, "uint64": 64}
EXAMPLES = int(os.environ.get("DFF_FUZZ_EXAMPLES", "300"))   # per service


def _edges(bits: int, signed: bool):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    return st.one_of(st.sampled_from(sorted({lo, hi, 0, 1, -1 if signed else 2, hi // 2})), st.integers(lo, hi))


def _text():
    return st.one_of(st.sampled_from(["", "m", "server_1", "../x", "a/../../b", "\x00", "é" * 300, "mnist_default",
                                      "FFDense", "parameters", "activations", "all_layers", "{}", "[1]", "nan"]),
                     st.text(max_size=40))


def strategy(kind: str, depth: int = 0):
    """Values of a rosidl field type ('int32', 'sequence<string>', 'dff_ros/LayerSpec', ...)."""
    if kind.startswith("sequence<"):
        inner = kind[len("sequence<"):-1].split(",")[0]
        return st.lists(strategy(inner, depth + 1), max_size=4 if depth < 2 else 1)
    if kind in INTS:
        return _edges(INTS[kind], True)
    if kind in UINTS:
        return _edges(UINTS[kind], False)
    if kind in ("float", "double"):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if kind == "float" else 64)
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return _text()
    pkg, name = kind.split("/")
    module = __import__(f"{pkg}.msg", fromlist=[name])
    return message(getattr(module, name), depth + 1)


def message(cls, depth: int = 0):
    fields = cls.get_fields_and_field_types()
    return st.builds(lambda values: cls(**values),
                     st.fixed_dictionaries({f: strategy(k, depth) for f, k in fields.items()}))


def request(srv):
    plain = message(srv.Request)
    if srv is not CreateLayers:
        return plain
    fields = srv.Request.get_fields_and_field_types()

    @st.composite
    def near(draw):
        """A valid request with up to 3 fields made strange: the checks past the first are reached too."""
        req = create_request([spec_msg(model="fz")], model="fz")
        for f in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)):
            setattr(req, f, draw(strategy(fields[f])))
        return req

    return st.one_of(plain, near())


def rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    env = ros_env()
    tmp = tmp_path_factory.mktemp("fuzz")
    server = start_server(env, tmp, name="server_1")
    client = Client(env)
    server.wait_for("ready:")
    yield server, client
    server.stop()
    client.close()


@pytest.mark.parametrize("srv,name", [(CreateLayers, "create_layers"), (DeleteModel, "delete_model"),
                                      (SaveWeights, "save_weights"), (FetchParameters, "fetch_parameters"),
                                      (ListLayers, "list_layers")])
def test_every_request_is_answered_and_the_server_stays_up(live, srv, name):
    server, client = live
    before = rss(server.p.pid)
    answered, tried = [], []

    service = client.node.create_client(srv, f"/server_1/{name}")
    assert service.wait_for_service(timeout_sec=20.0)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(request(srv))
    def one(req):
        tried.append(1)
        future = service.call_async(req)
        client.executor.spin_until_future_complete(future, timeout_sec=20.0)
        assert future.done(), f"{name} did not answer {req} in 20 s"
        res = future.result()
        answered.append(getattr(res, "success", True))
        if srv is CreateLayers and res.success:   # a valid request hosts a layer: drop it again
            client.call(DeleteModel, "/server_1/delete_model", DeleteModel.Request(model=req.model, run_id=req.run_id))
        assert server.p.poll() is None, server.output()[-3000:]

    one()
    assert len(answered) == len(tried) > 0 and server.p.poll() is None
    print(f"{name}: {len(answered)} requests, {sum(map(bool, answered))} accepted")
    client.node.destroy_client(service)
    grown = rss(server.p.pid) - before
    assert grown < 400 * 2 ** 20, f"{name}: the server grew by {grown / 2 ** 20:.0f} MB"
    assert "Traceback" not in server.output(), server.output()[-3000:]


def test_random_bytes_on_a_layers_input_are_dropped(live):
    server, client = live
    assert client.call(CreateLayers, "/server_1/create_layers",
                       create_request([spec_msg(model="fzb")], model="fzb", run_id="rb")).success
    pub = client.node.create_publisher(TrainingBatch, layer_topics("fzb", 0, 0)["train_input"], DATA_QOS)
    client.spin(1.5)
    rng = random.Random(7)
    for i in range(300):
        n = rng.choice([1, 3, 4, 7, 64, 200, 5000])
        data = b"\x00\x01\x00\x00" + rng.randbytes(n) if i % 2 else rng.randbytes(n)
        pub.publish(data)
    client.spin(3.0)
    layers = client.call(ListLayers, "/server_1/list_layers", ListLayers.Request()).layers
    mine = [l for l in layers if l.model == "fzb"]
    assert mine and mine[0].dropped >= 250, [(l.model, l.dropped) for l in layers]
    assert server.p.poll() is None and "Traceback" not in server.output()
    client.call(DeleteModel, "/server_1/delete_model", DeleteModel.Request(model="fzb", run_id="rb"))
