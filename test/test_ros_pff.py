"""PFF parameter passing with real server/master processes over DDS (each test: its own domain)."""
import time
from pathlib import Path

import pytest
import torch

from rosutil import FOLDER, Client, check_run_plots, ros_env, run_launcher, start_server, write_pipeline

from dff_ros.config import load_model_config
from dff_ros.msg import LayerParameters, LayerStatus
from dff_ros.nodes.common import STATUS_QOS, params_qos
from dff_ros.topics import STATUS_TOPIC, params_topic
from dff_ros.srv import CreateLayers
from dff_ros.wire.codec import params_from_msg, spec_to_msg, to_parameters

SMALL = dict(widths=(200, 200), epochs=4, splits=4, train_subset=3000, test_subset=1000)


@pytest.fixture
def env():
    return ros_env()


def check_schedule_order(summary):
    """No task trained chapter j on inputs older than version j+1 of the layers below it."""
    for task in summary["timeline"]:
        assert all(int(v) >= task["chapter"] + 1 for v in task["inputs"].values()), task


def test_all_layers_on_two_servers_reproduces_the_sequential_run(env, tmp_path, data_root, mnist):
    from dff_ros.ff.trainer import ReferenceTrainer

    pipeline = write_pipeline(tmp_path, data_root, pipeline={"transport": "parameters", "pff_variant": "all_layers"},
                              **SMALL)
    summary, out = run_launcher(env, tmp_path, pipeline)
    ref = ReferenceTrainer(load_model_config(tmp_path / "model.yaml"), mnist, progress=False).fit()["accuracy"]
    for k in ("goodness", "softmax"):
        # same tasks in the same order; servers run 1 torch thread, the reference 2: the same bits
        assert summary["accuracy"][k] == ref[k], (summary["accuracy"], ref)
    assert summary["nodes"] == ["server_1", "server_2"] and summary["optimizer_state_passed"]
    tasks = summary["timeline"]
    assert len(tasks) == 3 * 4                                   # 2 layers + head, 4 chapters
    assert {t["server"] for t in tasks if t["chapter"] % 2 == 0} == {"server_1"}
    assert {t["server"] for t in tasks if t["chapter"] % 2 == 1} == {"server_2"}
    check_schedule_order(summary)
    # bytes: every version of every part crossed once; ~3x the weights (Adam moments travel along)
    weights = 4 * (785 * 200 + 201 * 200 + 201 * 10)
    assert 3 * weights * 4 < summary["bytes_published"] < 3.2 * weights * 4, summary["bytes_per_topic"]
    # the master followed the task reports and fetched only the final weights of each part
    assert weights <= summary["master_bytes_received"] < 1.1 * weights, summary["master_bytes_received"]
    assert all(n["dropped"] == 0 and n["idle_seconds"] is not None for n in summary["per_node"]), summary["per_node"]
    check_run_plots(summary, out, ["layer_0", "layer_1", "head"])
    saved = sorted(p.name.split("-")[0] for p in (tmp_path / "weights" / FOLDER).glob("*.pt"))
    assert saved == ["head", "layer0", "layer1"]                 # by server_2, which trained chapter 4

    # train: false: the nodes publish the final versions they saved; the master tests them again
    again, _ = run_launcher(env, tmp_path, pipeline, "--set", "train=false", name="restored")
    assert again["trained"] is False and again["accuracy"] == summary["accuracy"], (again, summary["accuracy"])
    assert set(again["restored_from"]) == {"layer 0", "layer 1", "softmax head"}
    # nothing saved anywhere: a message saying what is missing, and a non-zero exit
    from rosutil import Proc
    proc = Proc(["-m", "dff_ros.launcher", "--pipeline", str(pipeline), "--no-progress", "--set", "train=false",
                 "--set", f"weights_dir={tmp_path / 'empty'}"], env, tmp_path / "missing.log")
    try:
        rc = proc.p.wait(120)
    finally:
        proc.stop()
    assert rc != 0 and "none of server_1, server_2 has layer 0, layer 1, softmax head" in proc.output(), proc.output()


def test_single_layer_adaptive_negatives_cross_nodes(env, tmp_path, data_root, mnist):
    """server_2 (last layer) scores each chapter's negatives 2 chapters ahead with the network it
    holds and publishes them; server_1 waits for them: the sequential run with lag 2."""
    from dff_ros.ff.trainer import ReferenceTrainer

    pipeline = write_pipeline(tmp_path, data_root, pipeline={"transport": "parameters", "pff_variant": "single_layer"},
                              negatives="adaptive", **SMALL)
    summary, _ = run_launcher(env, tmp_path, pipeline)
    assert summary["negatives_lag"] == 2 and summary["layer_nodes"] == [0, 1]
    ref_cfg = load_model_config(tmp_path / "model.yaml", overrides={"negatives_lag": 2})
    ref = ReferenceTrainer(ref_cfg, mnist, progress=False).fit()["accuracy"]
    for k in ("goodness", "softmax"):
        assert summary["accuracy"][k] == ref[k], (summary["accuracy"], ref)
    scored = [t for t in summary["timeline"] if t["part"] == -1]
    assert sorted(t["chapter"] for t in scored) == [2, 3] and {t["server"] for t in scored} == {"server_2"}
    # two chapters of 3000 one-byte labels crossed, plus message overhead
    assert 6000 < summary["bytes_per_topic"]["/dff/pipe_test/negatives"] < 7000, summary["bytes_per_topic"]
    check_schedule_order(summary)


def test_federated_publishes_parameters_only(env, tmp_path, data_root):
    # adaptive negatives too: each node scores its own shard, so no labels are published
    pipeline = write_pipeline(tmp_path, data_root, pipeline={"transport": "parameters", "pff_variant": "federated"},
                              negatives="adaptive", **{**SMALL, "epochs": 8, "splits": 8})
    client = Client(env)
    try:
        from rosutil import Proc
        proc = Proc(["-m", "dff_ros.launcher", "--pipeline", str(pipeline), "--no-progress"], env,
                    tmp_path / "run.log")
        seen: dict[str, set] = {}
        while proc.p.poll() is None:                             # watch the graph while it trains
            client.spin(0.5)
            for name, types in client.node.get_topic_names_and_types():
                seen.setdefault(name, set()).update(types)
        proc.stop()
        assert proc.p.returncode == 0, proc.output()
    finally:
        client.close()
    dff_topics = {n: t for n, t in seen.items() if n.startswith("/dff/")}
    assert any(n.endswith("/params/layer_0") for n in dff_topics), dff_topics
    assert not any(n.endswith("/negatives") for n in dff_topics), dff_topics
    types = set().union(*dff_topics.values())
    # parameters, status, name claims and the master's progress: no data-carrying message type
    assert types <= {"dff_ros/msg/LayerParameters", "dff_ros/msg/LayerStatus", "dff_ros/msg/ServerClaim",
                     "dff_ros/msg/RunProgress"}, types

    import json
    import re
    summary = json.loads(Path(re.search(r"\[dff_master\]: summary: (\S+)", proc.output()).group(1)).read_text())
    # every published byte is a parameter version (2 layers + head per chapter, 8 chapters)
    weights = 4 * (785 * 200 + 201 * 200 + 201 * 10)
    assert summary["bytes_published"] < 3.2 * weights * 8
    assert [n["samples"] for n in summary["per_node"]] == [1500 * 4 * 3] * 2   # own shard: 4 chapters x 3 parts
    assert summary["accuracy"]["softmax"] > 0.8, summary["accuracy"]


def create_share(client, server, cfg, node, layer_nodes, data_root, history):
    req = CreateLayers.Request(run_id="late", model=cfg.name, num_classes=cfg.num_classes,
                               image_shape=list(cfg.data.image_shape),
                               train=to_parameters(cfg.to_dict()["train"]), transport="parameters",
                               pff_variant="single_layer", node_index=node, num_nodes=2, layer_nodes=layer_nodes,
                               dataset="MNIST", data_root=str(data_root), param_history=history)
    topics = dict.fromkeys(("train_input", "train_output", "infer_input", "infer_output"), "")
    req.layers = [spec_to_msg(s, topics, s.index == len(cfg.layers) - 1) for s in cfg.layers]
    res = client.call(CreateLayers, f"/{server}/create_layers", req, timeout=60)
    assert res.success, res.message


def test_single_layer_node_joining_late_catches_up(env, tmp_path, data_root):
    """server_1 trains layer 0 through every chapter before server_2 exists; server_2 then gets
    the versions still in server_1's transient-local history (the last 2 of 4) and trains
    layer 1 + head on them: never older than the schedule allows."""
    write_pipeline(tmp_path, data_root, **SMALL)
    cfg = load_model_config(tmp_path / "model.yaml")
    first = start_server(env, tmp_path, name="server_1")
    client = Client(env)
    late = None
    status: dict[str, LayerStatus] = {}
    client.node.create_subscription(LayerStatus, STATUS_TOPIC, lambda m: status.__setitem__(m.server, m), STATUS_QOS)

    def wait_trained(server, timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not (server in status and status[server].phase == "trained"):
            client.spin(0.2)
        assert status[server].phase == "trained", status.get(server)

    try:
        first.wait_for("ready:")
        create_share(client, "server_1", cfg, 0, [0, 1], data_root, history=2)
        wait_trained("server_1")
        late = start_server(env, tmp_path, name="server_2")
        late.wait_for("ready:")
        create_share(client, "server_2", cfg, 1, [0, 1], data_root, history=2)
        wait_trained("server_2")
        got: list = []
        client.node.create_subscription(LayerParameters, params_topic(cfg.name, 1, 2),
                                        lambda m: got.append(params_from_msg(m)), params_qos(4))
        end = time.monotonic() + 20
        while len(got) < 2 and time.monotonic() < end:
            client.spin(0.2)
    finally:
        for p in (first, late):
            if p is not None:
                p.stop()
        client.close()
    assert [p.version for p in got] == [3, 4]                    # the history of 2 of layer 1
    # chapters 2 and 3 (0-based) used layer 0 at versions 3 and 4: the oldest allowed it still had
    assert [p.meta["inputs"] for p in got] == [{0: 3}, {0: 4}]
    assert all(torch.isfinite(t).all() for p in got for t in p.tensors.values())
