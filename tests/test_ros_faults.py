"""Faults over real DDS: a server killed mid-training (SIGKILL, no goodbye) is noticed by its
missing heartbeat; DFF moves its layer to a live server that resumes from the last checkpoint,
PFF moves the node's share to a spare server. A killed master's successor takes the run over. Separate processes,
one ROS domain per test."""
import re
import signal
import time

import pytest

from rosutil import (Client, finished, kill_when, master, ros_env, run_launcher, server_2_killed, start_server,
                     wait_status, write_pipeline)

FAST = {"heartbeat_timeout_seconds": 3, "restore_weights": False}
TRAIN = {"epochs": 8, "splits": 4, "train_subset": 6000}


@pytest.fixture
def env():
    return ros_env()


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, data_root):
    tmp = tmp_path_factory.mktemp("undisturbed")
    pipeline = write_pipeline(tmp, data_root, pipeline={"servers": 3, **FAST}, **TRAIN)
    summary, _ = run_launcher(ros_env(), tmp, pipeline, "--servers", "3", name="undisturbed")
    assert summary["recoveries"] == [] and summary["resumed"] is None
    return summary


def test_dff_server_killed_mid_training_its_layer_moves_and_the_run_finishes(env, tmp_path, data_root, undisturbed):
    pipeline = write_pipeline(tmp_path, data_root, pipeline={"servers": 3, **FAST}, **TRAIN)
    # layer 1 (round robin: server_2) dies after its first chapter, mid-way through the second
    summary, killed = server_2_killed(env, tmp_path, pipeline, lambda m: m.layer == 1 and m.chapters_done >= 1,
                                      delay=0.5)
    (rec,) = summary["recoveries"]
    assert rec["server"] == "server_2" and rec["layers"] == [1] and rec["to"] == {"1": "server_3"}, rec
    # resumed from layer 1's newest checkpoint: no chapter it had trained is trained again
    assert rec["chapters_done"]["1"] >= killed.chapters_done >= 1 and rec["resumed_from_chapter"] >= 1, rec
    assert 3 <= rec["silent_seconds"] < 10, rec
    assert [(l["server"], l["moved_from"]) for l in summary["layers"]] == [("server_1", None), ("server_3", "server_2")]
    assert "server_3" in summary["weights"] and "server_2" not in summary["weights"]
    # every sample of every chapter reached layer 1 once more after the move, none lost
    assert summary["layers"][1]["samples"] == TRAIN["train_subset"] * TRAIN["epochs"], summary["layers"]
    for k, v in summary["accuracy"].items():
        assert abs(v - undisturbed["accuracy"][k]) <= 0.03, (summary["accuracy"], undisturbed["accuracy"])


def test_master_killed_mid_training_its_successor_takes_the_run_over(env, tmp_path, data_root, undisturbed):
    pipeline = write_pipeline(tmp_path, data_root, pipeline=FAST, **TRAIN)
    servers = [start_server(env, tmp_path, name=f"server_{i}") for i in (1, 2)]
    runs = []
    try:
        for s in servers:
            s.wait_for("ready:")
        runs.append(master(env, tmp_path, pipeline, "first"))
        client = Client(env)
        try:
            wait_status(client, lambda m: m.layer == 1 and m.chapters_done >= 2, timeout=120)
        finally:
            client.close()
        state = tmp_path / "runs" / "pipe_test.run-state.pt"
        end = time.monotonic() + 60
        while not state.exists() and time.monotonic() < end:   # the head's first chapter is saved
            time.sleep(0.1)
        assert state.exists(), runs[0].output()
        runs[0].p.send_signal(signal.SIGKILL)
        runs[0].p.wait()
        runs.append(master(env, tmp_path, pipeline, "second"))
        summary = finished(runs[1])
    finally:
        for p in [*servers, *runs]:
            p.stop()
    out = runs[1].output()
    first_id = re.search(r"taking over run (\w+)", out).group(1)
    assert summary["run_id"] == first_id and summary["resumed"]["run_id"] == first_id, out
    assert summary["resumed"]["head_done"] >= 1 and summary["resumed"]["attempt"] == 1, summary["resumed"]
    assert not state.exists()   # the run finished: nothing left to take over
    # the servers kept their layers; every chapter was trained once, none lost or repeated
    assert [l["samples"] for l in summary["layers"]] == [TRAIN["train_subset"] * TRAIN["epochs"]] * 2
    for k, v in summary["accuracy"].items():
        assert abs(v - undisturbed["accuracy"][k]) <= 0.03, (summary["accuracy"], undisturbed["accuracy"])


def test_pff_node_killed_mid_training_a_spare_takes_its_share(env, tmp_path, data_root, undisturbed):
    """All-Layers on the first two servers the master finds (the third is spare): node 1 dies
    in its second chapter. The spare becomes node 1 from that chapter, on the versions the
    parameter topics kept; the run ends with the undisturbed run's result (the tasks are
    deterministic)."""
    pipeline = write_pipeline(tmp_path, data_root, pipeline={"transport": "parameters", "pff_variant": "all_layers",
                                                             **FAST}, **TRAIN)
    servers = {f"server_{i}": start_server(env, tmp_path, name=f"server_{i}") for i in (1, 2, 3)}
    run = None
    try:
        for s in servers.values():
            s.wait_for("ready:")
        run = master(env, tmp_path, pipeline)
        run.wait_for("PFF all_layers: 2 node(s)", 60)   # which two it found first is up to discovery
        first, victim = re.search(r"PFF all_layers: 2 node\(s\) (\w+), (\w+)", run.output()).groups()
        (spare,) = set(servers) - {first, victim}
        kill_when(Client(env), servers[victim], victim, lambda m: m.phase == "training" and m.chapter == 3, delay=0.3)
        summary = finished(run)
    finally:
        for p in [*servers.values(), *([run] if run else [])]:
            p.stop()
    (rec,) = summary["recoveries"]
    assert (rec["server"], rec["node"], rec["to"], rec["resumed_from_chapter"]) == (victim, 1, spare, 3), rec
    assert 3 <= rec["silent_seconds"] < 10, rec
    assert summary["nodes"] == [first, spare] and summary["timeline_nodes"][-1] == f"{victim} (lost)"
    by_server = {}
    for task in summary["timeline"]:
        by_server.setdefault(task["server"], set()).add(task["chapter"])
    assert by_server == {first: {0, 2}, victim: {1} | (by_server[victim] & {3}), spare: {3}}, by_server
    for k, v in summary["accuracy"].items():
        assert abs(v - undisturbed["accuracy"][k]) <= 0.005, (summary["accuracy"], undisturbed["accuracy"])


def test_lost_server_stops_the_run_with_a_message_when_it_cannot_recover(env, tmp_path, data_root):
    """PFF without a spare server, and recover: false: the master says which server went
    silent and exits non-zero instead of waiting for stall_seconds."""
    for name, pipe in (("pff", {"transport": "parameters", "pff_variant": "all_layers"}),
                       ("norecover", {"recover": False})):
        env = ros_env()
        pipeline = write_pipeline(tmp_path, data_root, pipeline={**FAST, "stall_seconds": 200, **pipe},
                                  epochs=8, splits=4, train_subset=6000)
        servers = [start_server(env, tmp_path, name=f"server_{i}") for i in (1, 2)]
        run = None
        try:
            for s in servers:
                s.wait_for("ready:")
            run = master(env, tmp_path, pipeline)
            kill_when(Client(env), servers[1], "server_2", lambda m: m.phase == "training")
            start = time.monotonic()
            rc = run.p.wait(60)
            took = time.monotonic() - start
            out = run.output()
        finally:
            for p in [*servers, *([run] if run else [])]:
                p.stop()
        assert rc == 1, (name, out)
        assert took < 20, (name, took, out)
        assert "server_2 sent no heartbeat for" in out, (name, out)
        assert ("its PFF share cannot move: no spare server" if name == "pff" else "recover: false") in out, (name, out)
