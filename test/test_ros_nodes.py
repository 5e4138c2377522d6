"""Server and master nodes as separate processes over real DDS (each test: its own domain)."""
import dataclasses
import json
import re
import time
from pathlib import Path

import pytest
import torch

from rosutil import FOLDER, Client, Proc, check_run_plots, ros_env, run_launcher, start_server, write_pipeline

from bad_inputs import TRAVERSAL_NAMES, chunk_cases, create_request, first_layer_chunk, request_cases, spec_msg

from dff_ros.msg import RunProgress, TrainingBatch
from dff_ros.nodes.common import DATA_QOS, SERVER_NAME
from dff_ros.topics import layer_topics, progress_topic
from dff_ros.srv import CreateLayers, DeleteModel, ListLayers, SaveWeights
from dff_ros.wire.seal import seal
from dff_ros.wire.tensors import to_msg


@pytest.fixture
def env():
    return ros_env()


def held_dropped(client) -> int:
    return next(l.dropped for l in client.call(ListLayers, "/server_1/list_layers", ListLayers.Request()).layers
                if l.model == "held")


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


def create(client, request):
    return client.call(CreateLayers, "/server_1/create_layers", request)


def test_bad_requests_and_malformed_chunks_are_answered_not_fatal(env, tmp_path):
    server = start_server(env, tmp_path, name="server_1")
    client = Client(env)
    try:
        server.wait_for("ready:")
        for what, request, reason in request_cases():
            res = create(client, request)
            assert not res.success and reason in res.message, (what, res.message)

        res = create(client, create_request([spec_msg()]))
        assert res.success and list(res.weights_restored) == [False], res.message
        listing = client.call(ListLayers, "/server_1/list_layers", ListLayers.Request())
        assert [(l.model, l.index, l.out_features) for l in listing.layers] == [("bad", 0, 50)]

        # malformed and foreign chunks on the layer's input: dropped and counted by kind, the
        # first of each kind logged; the server keeps serving
        pub = client.node.create_publisher(TrainingBatch, layer_topics("bad", 0, 0)["train_input"], DATA_QOS)
        client.spin(1.5)
        cases = chunk_cases("bad", "r")
        for _, msg, _ in cases:
            pub.publish(msg)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            listing = client.call(ListLayers, "/server_1/list_layers", ListLayers.Request())
            if listing.layers[0].dropped >= len(cases):
                break
            client.spin(0.2)
        assert listing.layers[0].dropped == len(cases), server.output()
        out = server.output()
        assert "dropped a malformed chunk (images: shape [2, 784] of uint8 needs 1568 bytes, got 10)" in out
        assert "dropped a misrouted chunk (from layer 3, this layer reads layer -1)" in out
        assert "dropped a foreign chunk (run 'someone-else', this layer belongs to run 'r')" in out
        assert out.count("dropped a malformed chunk") == 1, out   # once per kind

        # names that try to leave the weights folder stay inside it
        weights = (tmp_path / "weights").resolve()
        for name in TRAVERSAL_NAMES:
            assert create(client, create_request([spec_msg(model=name)], model=name)).success, name
            saved = client.call(SaveWeights, "/server_1/save_weights", SaveWeights.Request(model=name))
            assert saved.success and len(saved.paths) == 1, (name, saved.message)
            assert Path(saved.paths[0]).resolve().parent.parent == weights, (name, saved.paths)

        res = client.call(DeleteModel, "/server_1/delete_model", DeleteModel.Request(model="bad"))
        assert res.success and res.deleted == 1

        # a run created with a key: only a caller with the key, or an operator naming the run,
        # may replace, save or delete it (dff_ros/control.py)
        key = 0x1234_5678_9abc
        held = create_request([spec_msg(model="held")], model="held", run_id="run-h", run_key=key)
        assert create(client, held).success
        other = create(client, create_request([spec_msg(model="held")], model="held", run_id="run-x"))
        assert not other.success and "is in run 'run-h' here" in other.message, other.message
        for srv, name, req in ((SaveWeights, "save_weights", SaveWeights.Request(model="held")),
                               (SaveWeights, "save_weights", SaveWeights.Request()),     # every model: held too
                               (DeleteModel, "delete_model", DeleteModel.Request(model="held", run_key=key + 1))):
            res = client.call(srv, f"/server_1/{name}", req)
            assert not res.success and "--run run-h" in res.message, (name, res.message)
        assert client.call(SaveWeights, "/server_1/save_weights", SaveWeights.Request(model="held", run_key=key)).success
        # a keyed run trains only on chunks sealed with its key (dff_ros/wire/seal.py): an unsealed
        # one is dropped before it is read; a sealed one is read (this one is then malformed)
        pub = client.node.create_publisher(TrainingBatch, layer_topics("held", 0, 0)["train_input"], DATA_QOS)
        client.spin(1.5)
        unsealed, narrow = first_layer_chunk("held", "run-h"), first_layer_chunk("held", "run-h")
        to_msg(torch.zeros(2, 10, dtype=torch.uint8), narrow.images)
        narrow.seal = seal(key, narrow)
        for msg in (unsealed, narrow):
            pub.publish(msg)
        end = time.monotonic() + 20
        while time.monotonic() < end and held_dropped(client) < 2:
            client.spin(0.2)
        assert held_dropped(client) == 2, server.output()
        out = server.output()
        assert "layer 0 of 'held': dropped an unsealed chunk (its seal does not verify with the run's key)" in out
        assert "layer 0 of 'held': dropped a malformed chunk (" in out
        res = client.call(DeleteModel, "/server_1/delete_model", DeleteModel.Request(model="held", run_id="run-h"))
        assert res.success and res.deleted == 1, res.message
        assert [l.model for l in client.call(ListLayers, "/server_1/list_layers", ListLayers.Request()).layers] \
            == TRAVERSAL_NAMES
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
    check_run_plots(first, out, ["layer_0", "layer_1", "head"])
    assert {(t["server"], t["part"]) for t in first["timeline"]} == \
        {("server_1", 0), ("server_2", 1), ("master", 2)}, first["timeline"]
    links = first["history"]["bytes_per_chapter"]
    sent = links["master -> layer_0"]   # every chapter is the whole training set once
    assert sent[0] == sent[-1] and sum(sent) < first["master"]["bytes_sent"], (links, first["master"])
    assert links["layer_0 -> layer_1"][0] > sent[0], links   # float activities vs uint8 pixels
    weights = sorted((tmp_path / "weights" / FOLDER).glob("layer*.pt"))
    assert len(weights) == 2 and (tmp_path / "weights" / FOLDER).glob("head-*.pt")

    # second run: same model spec -> every server restores its layer; evaluate only, and say so
    second, out = run_launcher(env, tmp_path, pipeline, "--set", "train=false", name="second")
    assert second["weights_restored"] and all(l["weights_restored"] for l in second["layers"])
    assert second["accuracy"] == acc, (second["accuracy"], acc)
    assert sorted(second["restored_from"]) == ["layer 0", "layer 1", "softmax head"], second["restored_from"]
    assert all(f"(run {first['run_id']}" in v for v in second["restored_from"].values()), second["restored_from"]
    assert "layer 0 started from saved weights" in out and "softmax head started from saved weights" in out
    # (a run that trains with restore_weights: null asks for no restore: test_pipeline_config.py)


@pytest.mark.parametrize("train", [{"schedule": "stream", "epochs": 2, "splits": 1},
                                   # the master scores chapters 2 and 3 with the layers' checkpoints
                                   # after chapters 0 and 1 (lag: the layer count)
                                   {"negatives": "adaptive", "epochs": 4, "splits": 4},
                                   # PON: each server trains its layer with its own softmax head
                                   {"algorithm": "pon", "classifiers": ["pon_last", "pon_all"]}])
def test_pipeline_matches_reference_over_dds(env, tmp_path, data_root, mnist, train):
    from dff_ros.config import load_model_config
    from dff_ros.ff.trainer import ReferenceTrainer

    pipeline = write_pipeline(tmp_path, data_root, **train)
    summary, _ = run_launcher(env, tmp_path, pipeline, "--set", "restore_weights=false")
    cfg = load_model_config(tmp_path / "model.yaml")
    if train.get("negatives") == "adaptive":
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, negatives_lag=2))
        assert summary["scoring_seconds"] > 0
    ref = ReferenceTrainer(cfg, mnist, progress=False).fit()["accuracy"]
    assert summary["accuracy"] == ref, (summary["accuracy"], ref)


def run_master(env, tmp_path, pipeline, *sets):
    args = ["-m", "dff_ros.nodes.master", "--pipeline", str(pipeline)]
    for item in sets:
        args += ["--set", item]
    proc = Proc(args, env, tmp_path / "master.log")
    rc = proc.p.wait(60)
    proc.stop()
    return rc, proc.output()


def test_master_publishes_progress_for_ros2_topic_echo(env, tmp_path, data_root):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    # one chapter of 4 epochs x 12000 rows: seconds per layer, so the progress (~1 message a
    # second) is seen moving while the layers train, before the head has trained anything
    pipeline = write_pipeline(tmp_path, data_root, epochs=4, splits=1, train_subset=12000)
    client = Client(env)
    got = []
    client.node.create_subscription(RunProgress, progress_topic("pipe test"), got.append, QoSProfile(
        depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    run = Proc(["-m", "dff_ros.launcher", "--pipeline", str(pipeline), "--no-progress"], env, tmp_path / "run.log")
    try:
        end = time.monotonic() + 240
        while run.p.poll() is None and time.monotonic() < end:
            client.spin(0.1)
        client.spin(0.5)
    finally:
        run.stop()
        client.close()
    out = run.output()
    summary = json.loads(open(re.search(r"\[dff_master\]: summary: (\S+)", out).group(1)).read())
    phases = [m.phase for m in got]
    assert phases[0] == "training" and phases[-1] == "done" and "testing" in phases, phases
    training = [m for m in got if m.phase == "training"]
    assert [m.fraction for m in training] == sorted(m.fraction for m in training) and training[-1].fraction == 1.0
    # the layers' rows count too (2 layers + the head, 12000 rows x 4 epochs each), so progress
    # moves while layer 0 trains its first chapter, before any result reaches the head
    assert training[-1].done == training[-1].total == 12000 * 4 * 3 and training[-1].chapters == 1
    assert any(m.done > 0 and m.chapters_done == 0 for m in training), [(m.done, m.chapters_done) for m in training]
    last = got[-1]
    assert last.run_id == summary["run_id"] and last.mode == "dff" and last.chapters_done == 1
    assert dict(zip(last.accuracy_names, last.accuracy_values)) == pytest.approx(summary["accuracy"])
    assert list(last.loss_names) == ["layer_0", "layer_1", "head"], last.loss_names
    assert len(last.train_accuracy_values) == 3 and all(0.5 < a <= 1.0 for a in last.train_accuracy_values), \
        list(last.train_accuracy_values)


def test_master_reports_missing_servers(env, tmp_path, data_root):
    rc, out = run_master(env, tmp_path, write_pipeline(tmp_path, data_root), "wait_servers_seconds=3")
    assert rc == 1 and "found 0 (none)" in out, out


def test_master_config_error_names_file_and_key(env, tmp_path, data_root):
    rc, out = run_master(env, tmp_path, write_pipeline(tmp_path, data_root), "window=0")
    assert rc == 2 and "pipeline.yaml: window: must be an integer 1.." in out, out
