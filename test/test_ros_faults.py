"""Faults over real DDS: a server killed mid-training (SIGKILL, no goodbye) is noticed by its
missing heartbeat; DFF moves its layer to a live server that resumes from the last checkpoint,
PFF moves the node's share to a spare server. A killed master's successor takes the run over. Separate processes,
one ROS domain per test."""
import re
import time

import pytest
import yaml

from rosutil import (FOLDER, Client, finished, kill_when, master, master_killed, ros_env, run_launcher, server_2_killed,
                     start_server, write_pipeline)

FAST = {"heartbeat_timeout_seconds": 3, "restore_weights": False}
# 12k rows: chapters long enough that a kill after the first one lands before the last (the status
# subscription itself takes a second or two to match)
TRAIN = {"epochs": 8, "splits": 4, "train_subset": 12000}


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


@pytest.mark.parametrize("schedule", ["chapters", "stream"])
def test_dff_server_killed_mid_training_its_layer_moves_and_the_run_finishes(env, tmp_path, data_root, undisturbed,
                                                                             schedule):
    pipeline = write_pipeline(tmp_path, data_root, pipeline={"servers": 3, **FAST}, **TRAIN, schedule=schedule)
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
    # (stream: every minibatch once, though layer 0 had gone on a window of minibatches further)
    assert summary["layers"][1]["samples"] == TRAIN["train_subset"] * TRAIN["epochs"], summary["layers"]
    assert summary["layers"][0]["samples"] == TRAIN["train_subset"] * TRAIN["epochs"], summary["layers"]
    for k, v in summary["accuracy"].items():
        if schedule == "chapters":
            assert abs(v - undisturbed["accuracy"][k]) <= 0.03, (summary["accuracy"], undisturbed["accuracy"])
        else:   # another schedule than the undisturbed run's: an absolute bar
            assert v >= 0.85, summary["accuracy"]


def test_a_conv_block_killed_mid_training_moves_with_its_batch_statistics(env, tmp_path, data_root):
    """Conv layers (a BatchNorm block, class groups) recover as dense ones do: the checkpoint
    carries the block's weights, optimizer and running statistics."""
    # conv chapters take longer than dense ones: half the rows still leave the kill time to land
    pipeline = write_pipeline(tmp_path, data_root, pipeline={"servers": 3, **FAST}, **{**TRAIN, "train_subset": 6000},
                              algorithm="cwc", classifiers=["cwc_last", "cwc_all"])
    model = yaml.safe_load((tmp_path / "model.yaml").read_text())
    model["model"] = [[-1, "FFConv", {"channels": 10, "norm": "batch"}],
                      [-1, "FFConv", {"channels": 20, "depth": 2, "norm": "batch"}]]
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))
    summary, killed = server_2_killed(env, tmp_path, pipeline, lambda m: m.layer == 1 and m.chapters_done >= 1,
                                      delay=0.5)
    (rec,) = summary["recoveries"]
    assert rec["layers"] == [1] and rec["to"] == {"1": "server_3"} and rec["resumed_from_chapter"] >= 1, rec
    assert summary["layers"][1]["samples"] == 6000 * TRAIN["epochs"], summary["layers"]
    assert min(summary["accuracy"].values()) >= 0.9, summary["accuracy"]


def test_master_killed_mid_training_its_successor_takes_the_run_over(env, tmp_path, data_root, undisturbed):
    pipeline = write_pipeline(tmp_path, data_root, pipeline=FAST, **TRAIN)
    state = tmp_path / "runs" / f"{FOLDER}.run-state.pt"   # written once the head has trained a chapter
    summary, first_id, second = master_killed(env, tmp_path, pipeline,
                                              lambda m: m.layer == 1 and m.chapters_done >= 2, state)
    out = second.output()
    assert f"taking over run {first_id}" in out, out
    assert summary["run_id"] == first_id and summary["resumed"]["run_id"] == first_id, out
    assert summary["resumed"]["head_done"] >= 1 and summary["resumed"]["attempt"] == 1, summary["resumed"]
    assert not state.exists()   # the run finished: nothing left to take over
    # the servers kept their layers; every chapter was trained once, none lost or repeated
    assert [l["samples"] for l in summary["layers"]] == [TRAIN["train_subset"] * TRAIN["epochs"]] * 2
    for k, v in summary["accuracy"].items():
        assert abs(v - undisturbed["accuracy"][k]) <= 0.03, (summary["accuracy"], undisturbed["accuracy"])


def test_pff_master_killed_its_successor_follows_the_run_to_the_end(env, tmp_path, data_root, undisturbed):
    """The PFF nodes train on their own: a master killed mid-run leaves them going. The next
    master finds the run state, checks that both nodes still run it, reads the task reports
    from the transient-local history and fetches, tests and saves as if nothing happened."""
    pipeline = write_pipeline(tmp_path, data_root, pipeline={"transport": "parameters", "pff_variant": "all_layers",
                                                             **FAST}, **TRAIN)
    state = tmp_path / "runs" / f"{FOLDER}.run-state.pt"
    summary, first_id, second = master_killed(env, tmp_path, pipeline,
                                              lambda m: m.phase == "training" and m.chapter >= 1, state)
    out = second.output()
    assert f"taking over PFF run {first_id}" in out, out
    assert summary["run_id"] == first_id and summary["resumed"]["run_id"] == first_id, summary["resumed"]
    assert sorted(summary["nodes"]) == ["server_1", "server_2"] and not state.exists()
    # every task once, on the nodes that started the run
    assert sorted((t["part"], t["chapter"]) for t in summary["timeline"]) == [
        (p, c) for p in range(3) for c in range(TRAIN["splits"])]
    for k, v in summary["accuracy"].items():
        assert abs(v - undisturbed["accuracy"][k]) <= 0.005, (summary["accuracy"], undisturbed["accuracy"])


@pytest.mark.parametrize("negatives", ["random", "adaptive"])
def test_pff_node_killed_mid_training_a_spare_takes_its_share(env, tmp_path, data_root, undisturbed, negatives):
    """All-Layers on the first two servers the master finds (the third is spare): node 1 dies
    in its second chapter. The spare becomes node 1 from that chapter, on the versions the
    parameter topics kept; the run ends with the undisturbed run's result (the tasks are
    deterministic). Adaptive: the spare scores chapter 3's negatives again (node 1 had scored
    them with a network that died with it)."""
    pipeline = write_pipeline(tmp_path, data_root, pipeline={"transport": "parameters", "pff_variant": "all_layers",
                                                             **FAST}, **TRAIN, negatives=negatives)
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
        if task["part"] >= 0:   # (-1: adaptive negatives scored)
            by_server.setdefault(task["server"], set()).add(task["chapter"])
    assert by_server == {first: {0, 2}, victim: {1} | (by_server[victim] & {3}), spare: {3}}, by_server
    if negatives == "random":
        for k, v in summary["accuracy"].items():
            assert abs(v - undisturbed["accuracy"][k]) <= 0.005, (summary["accuracy"], undisturbed["accuracy"])
        return
    # chapter 2's labels: node 0 after chapter 0; chapter 3's: node 1, then again on the spare
    scored = sorted((x["chapter"], x["server"]) for x in summary["timeline"] if x["part"] == -1)
    assert scored[0] == (2, first) and (3, spare) in scored and {c for c, _ in scored} == {2, 3}, scored
    assert all(v >= 0.85 for v in summary["accuracy"].values()), summary["accuracy"]


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
