"""Nodes behave like any ROS 2 package's: settings are ROS parameters on the nodes themselves
(read here through their parameter services, no ros2cli needed), and servers are found by the
services they offer whatever their name and namespace."""
import json
import re
import subprocess
import sys

import pytest
from rcl_interfaces.srv import GetParameters, ListParameters

from rosutil import REPO, Client, Proc, finished, master, ros_env, write_pipeline


@pytest.fixture
def env():
    return ros_env()


def server(env, tmp_path, label, *ros_args):
    args = ["-m", "dff_ros.nodes.server", "--weights-dir", str(tmp_path / "weights"), "--ros-args", *ros_args]
    return Proc(args, env, tmp_path / f"server-{label}.log")


def parameters(client, node: str, names: list[str]) -> dict:
    listed = client.call(ListParameters, f"{node}/list_parameters", ListParameters.Request(), resend_every=5.0).result.names
    got = client.call(GetParameters, f"{node}/get_parameters", GetParameters.Request(names=names), resend_every=5.0).values
    from rclpy.parameter import parameter_value_to_python
    return {"listed": sorted(listed), **{n: parameter_value_to_python(v) for n, v in zip(names, got)}}


def test_namespaced_renamed_and_pinned_servers_are_found_and_show_their_parameters(env, tmp_path, data_root):
    pipeline = write_pipeline(tmp_path, data_root, widths=(60, 60, 60), epochs=2, splits=1, train_subset=2000,
                              test_subset=500, pipeline={"servers": 3})
    procs = [server(env, tmp_path, "ns", "-r", "__ns:=/robot1", "-p", "threads:=2"),
             server(env, tmp_path, "remapped", "-r", "__node:=my_server"),
             server(env, tmp_path, "pinned", "-p", "name:=server_kitchen", "-p", "solo_threads:=3")]
    client = Client(env)
    foreign = client.rclpy.create_node("server_9", context=client.context)   # a name alike, no services
    run = None
    try:
        for p in procs:
            p.wait_for("ready:", 40)
        ns = parameters(client, "/robot1/server_1", ["threads", "weights_dir", "name", "solo_threads"])
        assert {"threads", "weights_dir", "name", "solo_threads", "data_root"} <= set(ns["listed"]), ns
        assert ns["threads"] == 2 and ns["weights_dir"] == str(tmp_path / "weights") and ns["name"] == "server_1", ns
        assert parameters(client, "/my_server", ["name", "threads"])["threads"] == 1
        assert parameters(client, "/server_kitchen", ["solo_threads"])["solo_threads"] == 3

        status = subprocess.run([sys.executable, "-m", "dff_ros.cli", "status", "--servers", "3"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        for name in ("robot1/server_1", "my_server", "server_kitchen"):
            assert name in status.stdout, status.stdout + status.stderr
        assert "server_9" not in status.stdout

        run = master(env, tmp_path, pipeline)
        run.wait_for("servers:", 60)
        got = parameters(client, "/dff_master", ["servers", "pipeline", "transport", "restore_weights", "placement"])
        assert got["servers"] == 3 and got["pipeline"] == str(pipeline) and got["transport"] == "activations", got
        assert got["restore_weights"] is None and got["placement"] == "round_robin", got
        assert "chunk_rows" in got["listed"] and "heartbeat_timeout_seconds" in got["listed"], got
        summary = finished(run)
        assert sorted(l["server"] for l in summary["layers"]) == ["my_server", "robot1/server_1", "server_kitchen"]
        assert summary["accuracy"]["softmax"] > 0.5
    finally:
        foreign.destroy_node()
        client.close()
        for p in [*procs, *([run] if run else [])]:
            p.stop()


def test_a_ros_parameter_overrides_the_yaml_and_a_bad_one_is_named(env, tmp_path, data_root):
    pipeline = write_pipeline(tmp_path, data_root, pipeline={"servers": 1, "wait_servers_seconds": 1})
    out = subprocess.run([sys.executable, "-m", "dff_ros.nodes.master", "--pipeline", str(pipeline), "--no-progress",
                          "--ros-args", "-p", "servers:=0"], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "servers" in out.stderr and "must be an integer 1..1,024, got 0" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"/**": {"ros__parameters": {"wait_servers_seconds": 2.0}}}))
    out = subprocess.run([sys.executable, "-m", "dff_ros.nodes.master", "--pipeline", str(pipeline), "--no-progress",
                          "--ros-args", "--params-file", str(params)], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    # no server runs: it gives up after the 2 s the params file gave, not the YAML's 1 s
    assert out.returncode == 1 and re.search(r"waited 2 s for 1 server", out.stdout + out.stderr), out
