"""Server and master nodes as separate processes over real DDS (each test: its own domain)."""
import time

import pytest
import torch

from rosutil import Client, Proc, ros_env, run_launcher, start_server, write_pipeline

from dff_ros.msg import LayerSpec, TrainingBatch
from dff_ros.nodes.common import DATA_QOS, SERVER_NAME, layer_topics
from dff_ros.srv import CreateLayers, DeleteModel, ListLayers
from dff_ros.transport.codec import to_parameter_value, to_parameters
from dff_ros.transport.tensors import to_msg


@pytest.fixture
def env():
    return ros_env()


def node_names(client, want: int, timeout=20.0):
    """Server names in the graph once ``want`` distinct ones are seen (or at the timeout)."""
    end = time.monotonic() + timeout
    while True:
        client.spin(0.5)
        names = sorted(n for n, _ in client.node.get_node_names_and_namespaces() if SERVER_NAME.match(n))
        if len(set(names)) >= want or time.monotonic() > end:
            client.spin(1.0)  # a duplicate would show up by now too
            return sorted(n for n, _ in client.node.get_node_names_and_namespaces() if SERVER_NAME.match(n))


def test_servers_started_together_get_distinct_names(env, tmp_path):
    servers = [start_server(env, tmp_path) for _ in range(3)]
    client = Client(env)
    try:
        for s in servers:
            s.wait_for("ready:", 40)
        names = node_names(client, 3)
        assert names == ["server_1", "server_2", "server_3"], names
        late = start_server(env, tmp_path)
        late.wait_for("ready:", 40)
        assert node_names(client, 4) == ["server_1", "server_2", "server_3", "server_4"]
        servers.append(late)
    finally:
        for s in servers:
            s.stop()
        client.close()


def spec_msg(index=0, module="FFDense", args=(50,), in_features=784, out_features=50, last=True):
    t = layer_topics("bad", index, 0 if last else 1)
    return LayerSpec(index=index, source=index - 1, module=module, args=[to_parameter_value(a) for a in args],
                     in_features=in_features, out_features=out_features, last=last, **t)


def create(client, layers, train=None, model="bad", num_classes=10):
    req = CreateLayers.Request(run_id="r", model=model, num_classes=num_classes, layers=layers,
                               train=to_parameters(train or {"epochs": 1, "splits": 1}))
    return client.call(CreateLayers, "/server_1/create_layers", req)


def test_bad_requests_and_malformed_chunks_are_answered_not_fatal(env, tmp_path):
    server = start_server(env, tmp_path, name="server_1")
    client = Client(env)
    try:
        server.wait_for("ready:")
        cases = [
            ([spec_msg(module="NoSuchLayer")], None, "unknown layer type"),
            ([spec_msg(args=(-5,))], None, "positive integer"),
            ([spec_msg(out_features=7)], None, "out_features 7"),
            ([spec_msg()], {"epochs": 3, "splits": 2}, "train.splits"),
            ([spec_msg()], {"lr": "fast"}, "train.lr"),
            ([], None, "no layers"),
        ]
        for layers, train, reason in cases:
            res = create(client, layers, train)
            assert not res.success and reason in res.message, (reason, res.message)
        bad_topic = spec_msg()
        bad_topic.train_input = "relative/topic"
        res = create(client, [bad_topic])
        assert not res.success and "absolute topic" in res.message

        res = create(client, [spec_msg()])
        assert res.success and list(res.weights_restored) == [False], res.message
        listing = client.call(ListLayers, "/server_1/list_layers", ListLayers.Request())
        assert [(l.model, l.index, l.out_features) for l in listing.layers] == [("bad", 0, 50)]

        # malformed chunks on the layer's input: dropped and counted, the server keeps serving
        pub = client.node.create_publisher(TrainingBatch, layer_topics("bad", 0, 0)["train_input"], DATA_QOS)
        client.spin(1.5)
        bad = TrainingBatch(model="bad", run_id="r", count=1)
        bad.labels.dtype = "float32"                          # labels must be int64
        bad.labels.shape = [2]
        bad.labels.data = bytes(8)
        pub.publish(bad)
        short = TrainingBatch(model="bad", run_id="r", count=1)
        to_msg(torch.tensor([1, 2]), short.labels)
        to_msg(torch.tensor([3, 4]), short.neg_labels)
        short.images.dtype, short.images.shape, short.images.data = "uint8", [2, 784], bytes(10)  # too few bytes
        pub.publish(short)
        wrong_width = TrainingBatch(model="bad", run_id="r", count=1)
        to_msg(torch.tensor([1, 2]), wrong_width.labels)
        to_msg(torch.tensor([3, 4]), wrong_width.neg_labels)
        to_msg(torch.zeros(2, 10, dtype=torch.uint8), wrong_width.images)
        pub.publish(wrong_width)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            listing = client.call(ListLayers, "/server_1/list_layers", ListLayers.Request())
            if listing.layers[0].dropped >= 3:
                break
            client.spin(0.2)
        assert listing.layers[0].dropped == 3, server.output()
        assert "dropped a malformed chunk (labels: dtype float32, expected int64)" in server.output()

        res = client.call(DeleteModel, "/server_1/delete_model", DeleteModel.Request(model="bad"))
        assert res.success and res.deleted == 1
        assert not client.call(ListLayers, "/server_1/list_layers", ListLayers.Request()).layers
    finally:
        server.stop()
        client.close()


def test_two_servers_train_then_restore(env, tmp_path, data_root):
    pipeline = write_pipeline(tmp_path, data_root)
    first, out = run_launcher(env, tmp_path, pipeline, name="first")
    acc = first["accuracy"]
    assert acc["goodness"] > 0.75 and acc["softmax"] > 0.8, acc
    assert {l["server"] for l in first["layers"]} == {"server_1", "server_2"}
    assert not first["weights_restored"]
    assert all(l["bytes_in"] > 0 and l["dropped"] == 0 for l in first["layers"]), first["layers"]
    weights = sorted((tmp_path / "weights" / "pipe_test").glob("layer*.pt"))
    assert len(weights) == 2 and (tmp_path / "weights" / "pipe_test").glob("head-*.pt")

    # second run: same model spec -> every server restores its layer; evaluate only
    second, out = run_launcher(env, tmp_path, pipeline, "--set", "train=false", name="second")
    assert second["weights_restored"] and all(l["weights_restored"] for l in second["layers"])
    assert second["accuracy"] == acc, (second["accuracy"], acc)


def test_stream_schedule_matches_reference(env, tmp_path, data_root, mnist):
    from dff_ros.config import load_model_config
    from dff_ros.ff.trainer import ReferenceTrainer

    pipeline = write_pipeline(tmp_path, data_root, schedule="stream", epochs=2, splits=1)
    summary, _ = run_launcher(env, tmp_path, pipeline, "--set", "restore_weights=false")
    ref = ReferenceTrainer(load_model_config(tmp_path / "model.yaml"), mnist, progress=False).fit()["accuracy"]
    for k in ("goodness", "softmax"):
        assert abs(summary["accuracy"][k] - ref[k]) <= 0.01, (summary["accuracy"], ref)


def run_master(env, tmp_path, pipeline, *sets):
    args = ["-m", "dff_ros.nodes.master", "--pipeline", str(pipeline)]
    for item in sets:
        args += ["--set", item]
    proc = Proc(args, env, tmp_path / "master.log")
    rc = proc.p.wait(60)
    proc.stop()
    return rc, proc.output()


def test_master_reports_missing_servers(env, tmp_path, data_root):
    rc, out = run_master(env, tmp_path, write_pipeline(tmp_path, data_root), "wait_servers_seconds=3")
    assert rc == 1 and "found 0 (none)" in out, out


def test_master_config_error_names_file_and_key(env, tmp_path, data_root):
    rc, out = run_master(env, tmp_path, write_pipeline(tmp_path, data_root), "window=0")
    assert rc == 2 and "pipeline.yaml: window: must be a positive integer" in out, out
