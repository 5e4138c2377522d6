"""The runs (dff_ros.run) against an in-process cluster (test/fake_cluster.py): a DFF run, a
lost server's layers moving, a master taken over (DFF and PFF), restored weights, a PFF run and a
lost PFF node. Each is checked against the reference trainer: equal where nothing is sent
twice; within 0.03 where a DFF chapter is resent after a loss: a layer that had gone on passes
the resent chapter on with its newer weights (as in test_pipeline_logic and test_ros_faults).
No ROS: seconds each."""
import dataclasses
import os
import subprocess
import threading
import time

import pytest

from dff_ros.config import parse_model_config
from dff_ros.config.pipeline import PipelineConfig
from dff_ros.ff.trainer import ReferenceTrainer
from dff_ros.run.cluster import RunError, Status
from dff_ros.run.dff import DFFRun
from dff_ros.run.pff import PFFRun

from fake_cluster import FakeCluster, Log, MasterGone


def model(schedule="chapters", **train):
    return parse_model_config({
        "name": "runs", "model": [[-1, "FFDense", [200]], [-1, "FFDense", [200]]],
        "train": {"epochs": 4, "splits": 4, "lr": 0.003, "schedule": schedule, "train_subset": 3000,
                  "test_subset": 1000, "threads": 2, **train}}, "test")


def pipeline(tmp_path, **kw):
    base = dict(model="m.yaml", layer_types="t.yaml", servers=2, summary_dir=str(tmp_path / "runs"),
                weights_dir=str(tmp_path / "weights"), chunk_rows=500, heartbeat_timeout_seconds=0.4,
                stall_seconds=20.0)
    return PipelineConfig(**{**base, **kw})


def start(run_type, cluster, p, m, data, run_id="r1"):
    log = Log()
    run = run_type(cluster, p, m, run_id=run_id, log=log, data=data, show_progress=False)
    cluster.listen(run)
    return run, log


@pytest.fixture
def cluster(tmp_path):
    made = []

    def make(names=("server_1", "server_2"), **kw):
        c = FakeCluster(names, tmp_path / "weights", **kw)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


@pytest.mark.parametrize("schedule", ["chapters", "stream"])
@pytest.mark.parametrize("negatives", ["random", "adaptive"])
def test_a_dff_run_gives_the_reference_result(mnist, tmp_path, cluster, schedule, negatives):
    m = model(schedule, negatives=negatives, negatives_lag=1 if negatives == "adaptive" else None)
    c = cluster()
    run, log = start(DFFRun, c, pipeline(tmp_path), m, mnist)
    summary = run.run()
    assert summary["accuracy"] == ReferenceTrainer(m, mnist, progress=False).fit()["accuracy"]
    assert summary["accuracy"]["softmax"] > 0.7   # it learned (0.800 on AMD EPYC, 2026-12-03)
    assert [row["server"] for row in summary["layers"]] == ["server_1", "server_2"]
    assert summary["recoveries"] == [] and summary["resumed"] is None
    # weights saved where the servers keep them, the head beside them; nothing left to take over
    assert len(sum(summary["weights"].values(), [])) == 2
    assert (tmp_path / "weights" / "runs").is_dir() and not run.run_state_path().exists()
    assert not any(s.layers for s in c.servers_.values())   # keep_layers: false
    assert c.progress and c.progress[-1].phase == "testing"


def test_bfloat16_scored_negatives_give_the_reference_result(mnist, tmp_path, cluster):
    """The master scores with bf16 matmuls as the reference trainer does: the same labels."""
    m = model(negatives="adaptive", negatives_lag=1, negatives_dtype="bfloat16")
    summary = start(DFFRun, cluster(), pipeline(tmp_path), m, mnist)[0].run()
    assert summary["accuracy"] == ReferenceTrainer(m, mnist, progress=False).fit()["accuracy"]


def test_a_lost_server_moves_its_layers_and_the_result_is_unchanged(mnist, tmp_path, cluster):
    m = model()
    undisturbed = start(DFFRun, cluster(), pipeline(tmp_path), m, mnist)[0].run()["accuracy"]

    def die(server, layer, chunk):   # server_2 (layer 1) dies as chapter 1 reaches it
        if server == "server_2" and chunk.chapter == 1:
            c.kill("server_2")
    c = cluster(("server_1", "server_2", "server_3"), on_chunk=die)
    run, log = start(DFFRun, c, pipeline(tmp_path / "b", servers=3), m, mnist)
    summary = run.run()
    (recovery,) = summary["recoveries"]
    assert recovery["server"] == "server_2" and recovery["layers"] == [1]
    assert recovery["to"] == {1: "server_3"}   # the spare: it hosted nothing
    assert recovery["resumed_from_chapter"] == 1   # its checkpoint after chapter 0
    assert [(row["server"], row["moved_from"]) for row in summary["layers"]] == [("server_1", None),
                                                                                 ("server_3", "server_2")]
    # every row trained once by each layer; layer 0 had gone on and passes the resent chapter on
    # with its newer weights, so the result is close to the undisturbed one, not equal
    assert [row["samples"] for row in summary["layers"]] == [3000 * 4] * 2
    for k, v in summary["accuracy"].items():
        assert abs(v - undisturbed[k]) <= 0.03, (summary["accuracy"], undisturbed)
    assert "move to live servers" in log.text("warning")


def test_a_server_whose_heartbeats_are_late_but_that_answers_keeps_its_layers(mnist, tmp_path, cluster):
    """Silent for longer than the heartbeat timeout, but it answers list_layers (a process
    starved of CPU, its statuses delayed): nothing moves, and the summary counts it."""
    m = model()
    undisturbed = start(DFFRun, cluster(), pipeline(tmp_path), m, mnist)[0].run()["accuracy"]

    def mute(server, layer, chunk):   # server_2's statuses stop for 4 heartbeat timeouts, then go on
        if server == "server_2" and chunk.chapter == 1 and not c.servers_["server_2"].muted:
            c.servers_["server_2"].muted = True
            threading.Timer(1.6, lambda: setattr(c.servers_["server_2"], "muted", False)).start()
    c = cluster(("server_1", "server_2", "server_3"), on_chunk=mute)
    run, log = start(DFFRun, c, pipeline(tmp_path / "b", servers=3), m, mnist)
    summary = run.run()
    assert summary["recoveries"] == [] and summary["heartbeats_late"].get("server_2", 0) >= 1, summary
    assert [row["server"] for row in summary["layers"]] == ["server_1", "server_2"]
    assert summary["accuracy"] == undisturbed
    assert "server_2 sent no heartbeat for 0.4 s but answered list_layers: kept" in log.text("warning")


def test_statuses_of_another_run_naming_a_lost_server_do_not_hide_its_loss(mnist, tmp_path, cluster):
    """Anyone can publish a status naming server_2: only this run's statuses are its heartbeats."""
    def die(server, layer, chunk):
        if server == "server_2" and chunk.chapter == 1:
            c.kill("server_2")
            threading.Thread(target=forge, daemon=True).start()

    def forge():
        while not run.recoveries and not done.is_set():
            run.on_status(Status("other-run", "other-model", "server_2", layer=1, phase="training"))
            time.sleep(0.01)
    done = threading.Event()
    c = cluster(("server_1", "server_2", "server_3"), on_chunk=die)
    run, _ = start(DFFRun, c, pipeline(tmp_path, servers=3), model(), mnist)
    try:
        summary = run.run()
    finally:
        done.set()
    assert [r["server"] for r in summary["recoveries"]] == ["server_2"]


def test_a_lost_server_that_comes_back_drops_the_layers_that_moved_away(mnist, tmp_path, cluster):
    """Frozen (SIGSTOP, a cut link) past the heartbeat timeout, then going on: its statuses
    count for nothing (they would report its stale layer's chapters) and it is told to drop it."""
    def freeze(server, layer, chunk):
        if server == "server_2" and chunk.chapter == 1 and not c.servers_["server_2"].cut:
            c.freeze("server_2")
            threading.Thread(target=thaw_after_recovery, daemon=True).start()

    def thaw_after_recovery():
        while not run.recoveries:
            time.sleep(0.01)
        c.thaw("server_2")
    c = cluster(("server_1", "server_2", "server_3"), on_chunk=freeze)
    run, log = start(DFFRun, c, pipeline(tmp_path, servers=3), model(), mnist)
    summary = run.run()
    (recovery,) = summary["recoveries"]
    assert recovery["server"] == "server_2" and recovery["to"] == {1: "server_3"}
    assert not c.servers_["server_2"].frozen and c.servers_["server_2"].layers == {}
    assert "server_2 was lost and came back: it dropped run" in log.text("warning")
    assert run.status[1].server == "server_3" and run.returned.keys() == {"server_2"}
    assert summary["layers"][1]["samples"] == 3000 * 4


def test_a_server_lost_while_testing_has_its_layers_moved_and_the_test_is_run_again(mnist, tmp_path, cluster):
    """From each moved layer's final checkpoint: the weights it trained, so the same result."""
    m = model(eval_batch_size=250)   # 4 test chunks
    undisturbed = start(DFFRun, cluster(), pipeline(tmp_path), m, mnist)[0].run()["accuracy"]

    def die(server, layer, chunk):   # server_2 (layer 1) dies as the second test chunk reaches it
        if server == "server_2" and chunk.seq == 1:
            c.kill("server_2")
    c = cluster(("server_1", "server_2", "server_3"), on_infer=die)
    run, log = start(DFFRun, c, pipeline(tmp_path / "b", servers=3), m, mnist)
    summary = run.run()
    (recovery,) = summary["recoveries"]
    assert recovery["server"] == "server_2" and recovery["to"] == {1: "server_3"}
    assert recovery["chapters_done"] == {0: 4, 1: 4}
    assert summary["accuracy"] == undisturbed
    assert "testing again from the first chunk" in log.text("warning")
    assert [row["server"] for row in summary["layers"]] == ["server_1", "server_3"]
    assert len(summary["weights"]["server_3"]) == 1   # the moved layer saved where it now is


def test_a_lost_server_ends_the_run_without_recovery(mnist, tmp_path, cluster):
    def die(server, layer, chunk):
        if server == "server_2":
            c.kill("server_2")
    c = cluster(on_chunk=die)
    run, _ = start(DFFRun, c, pipeline(tmp_path, recover=False), model(), mnist)
    with pytest.raises(RunError, match="server_2 sent no heartbeat.*recover: false"):
        run.run()


@pytest.mark.parametrize("negatives", ["random", "adaptive"])
def test_a_new_master_takes_over_an_interrupted_run(mnist, tmp_path, cluster, negatives):
    """Adaptive: the labels of the chapters sent are in the run state; later ones are scored
    with the checkpoints the layers' topics keep for a late subscriber."""
    m = model(negatives=negatives)
    p = pipeline(tmp_path, window=1)
    undisturbed = start(DFFRun, cluster(), p, m, mnist)[0].run()["accuracy"]

    def master_dies(server, layer, chunk):   # after the head has trained 2 chapters (saved in the run state)
        if layer == 0 and first.driver.head_done >= 2 and not c.master_gone:
            c.master_gone = True
            raise MasterGone()
    c = cluster(on_chunk=master_dies)
    first, _ = start(DFFRun, c, p, m, mnist, run_id="first")
    with pytest.raises(MasterGone):
        first.run()
    assert first.run_state_path().exists()
    c.master_gone, c.on_chunk = False, lambda *a: None
    second, log = start(DFFRun, c, p, m, mnist, run_id="second")
    summary = second.run()
    assert summary["run_id"] == "first" and summary["resumed"]["head_done"] == 2
    assert [row["samples"] for row in summary["layers"]] == [3000 * 4] * 2
    for k, v in summary["accuracy"].items():
        assert abs(v - undisturbed[k]) <= 0.03, (summary["accuracy"], undisturbed)
    assert "taking over run first" in log.text("info")
    if negatives == "adaptive":   # lag 2 (the layer count): chapters 2 and 3 scored, none missed
        assert sorted(second.driver.scored) == [2, 3] and "not seen here" not in log.text("info")


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a tmpfs filled to the last byte (root: mount). Skipped, saying why, elsewhere."""
    where = tmp_path / "full"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a full disk needs a tmpfs mount (root)")
    try:
        fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_full_disk_loses_no_result_and_says_what_was_not_saved(mnist, tmp_path, cluster, full_disk):
    """Run states, layer files and the head all fail to write: the run still trains and tests
    to the reference result, each failure is named, and no partial file is left."""
    m = model()
    p = pipeline(tmp_path, summary_dir=str(full_disk / "runs"), weights_dir=str(full_disk / "weights"))
    c = FakeCluster(("server_1", "server_2"), full_disk / "weights")
    try:
        run, log = start(DFFRun, c, p, m, mnist)
        summary = run.run()
    finally:
        c.close()
    assert summary["accuracy"] == ReferenceTrainer(m, mnist, progress=False).fit()["accuracy"]
    assert summary["run_state_write_failures"] == m.train.splits   # one per chapter
    assert sorted(summary["save_errors"]) == ["server_1", "server_2", "softmax head"]
    assert all("No space left" in why for why in summary["save_errors"].values()), summary["save_errors"]
    assert summary["weights"] == {"server_1": [], "server_2": []} and summary["head_weights"] is None
    assert "could not save the run state" in log.text("error")
    assert [f.name for f in full_disk.rglob("*") if f.is_file()] == ["filler"]


def test_a_run_state_of_another_config_is_not_taken_over(mnist, tmp_path, cluster):
    p = pipeline(tmp_path)
    run, _ = start(DFFRun, cluster(), p, model(), mnist)
    run.write_run_state({"transport": "activations", "head_done": 1, "attempt": 0})
    other, log = start(DFFRun, cluster(), p, model(lr=0.01), mnist, run_id="r2")
    assert other.saved_run(["server_1", "server_2"]) is None
    assert "had another config" in log.text("warning")


def test_saved_weights_are_restored_only_when_asked_and_named(mnist, tmp_path, cluster):
    m = model()
    p = pipeline(tmp_path)
    trained = start(DFFRun, cluster(), p, m, mnist)[0].run()
    run, log = start(DFFRun, cluster(), dataclasses.replace(p, train=False), m, mnist, run_id="eval")
    summary = run.run()
    assert summary["trained"] is False and summary["weights_restored"] is True
    assert summary["accuracy"] == trained["accuracy"]
    assert set(summary["restored_from"]) == {"layer 0", "layer 1", "softmax head"}
    assert summary["head_weights"] == trained["head_weights"] is not None
    assert all("(run r1," in origin for origin in summary["restored_from"].values())
    # eval-only: the files stay as the run that trained them left them, and are named
    assert sorted(sum(summary["weights"].values(), [])) == sorted(sum(trained["weights"].values(), []))
    assert "starts from saved weights" in log.text("warning")


def test_train_false_without_saved_weights_says_what_to_do(mnist, tmp_path, cluster):
    run, _ = start(DFFRun, cluster(), pipeline(tmp_path, train=False), model(), mnist)
    with pytest.raises(RunError, match="train: false needs saved weights"):
        run.run()


@pytest.mark.parametrize("variant", ["all_layers", "single_layer"])
def test_a_pff_run_gives_the_sequential_result(mnist, tmp_path, cluster, variant):
    m = model()
    c = cluster()
    c.data = mnist
    run, _ = start(PFFRun, c, pipeline(tmp_path, transport="parameters", pff_variant=variant), m, mnist)
    summary = run.run()
    assert summary["accuracy"] == ReferenceTrainer(m, mnist, progress=False).fit()["accuracy"]
    assert summary["nodes"] == ["server_1", "server_2"] and summary["recoveries"] == []
    parts = len(m.layers) + 1
    assert len(summary["timeline"]) == parts * m.train.splits
    assert not run.run_state_path().exists()


def test_a_pff_node_gone_after_its_last_task_costs_its_files_not_the_result(mnist, tmp_path):
    """Killed once the master has its final versions: the run still tests; that node's
    files are named as not saved (the master once waited 30 s on it and failed)."""
    class KilledAfterFetch(FakeCluster):
        def fetch(self, *a, **kw):
            out = super().fetch(*a, **kw)
            self.kill("server_2")
            return out
    m = model()
    c = KilledAfterFetch(("server_1", "server_2"), tmp_path / "weights")
    c.data = mnist
    try:
        run, log = start(PFFRun, c, pipeline(tmp_path, transport="parameters", pff_variant="all_layers"), m, mnist)
        summary = run.run()
    finally:
        c.close()
    assert summary["accuracy"] == ReferenceTrainer(m, mnist, progress=False).fit()["accuracy"]
    assert list(summary["save_errors"]) == ["server_2"] and "is gone" in summary["save_errors"]["server_2"]
    assert summary["weights"]["server_2"] == [] and "is gone" in log.text("error")


def test_a_lost_pff_node_is_replaced_by_a_spare(mnist, tmp_path, cluster):
    m = model()
    c = cluster(("server_1", "server_2", "server_3"))
    c.data = mnist
    p = pipeline(tmp_path, transport="parameters", pff_variant="all_layers", servers=2)
    run, log = start(PFFRun, c, p, m, mnist)
    reference = ReferenceTrainer(m, mnist, progress=False).fit()["accuracy"]

    def kill_when_busy():
        while not any(t.get("node") == 1 for t in run.tasks):
            time.sleep(0.01)
        c.kill("server_2")
    threading.Thread(target=kill_when_busy, daemon=True).start()
    summary = run.run()
    (recovery,) = summary["recoveries"]
    assert recovery["server"] == "server_2" and recovery["to"] == "server_3" and recovery["node"] == 1
    assert summary["nodes"] == ["server_1", "server_3"]
    assert summary["accuracy"] == reference


def test_a_new_master_takes_over_a_pff_run_the_nodes_went_on_with(mnist, tmp_path, cluster):
    m = model()
    c = cluster()
    c.data = mnist
    p = pipeline(tmp_path, transport="parameters", pff_variant="all_layers")
    first, _ = start(PFFRun, c, p, m, mnist, run_id="first")

    def die_after_some_tasks():
        while len(first.tasks) < 4:
            time.sleep(0.01)
        c.master_gone = True
    threading.Thread(target=die_after_some_tasks, daemon=True).start()
    with pytest.raises(MasterGone):
        first.run()
    assert first.run_state_path().exists()
    c.master_gone = False
    second, log = start(PFFRun, c, p, m, mnist, run_id="second")
    summary = second.run()
    assert summary["run_id"] == "first" and summary["resumed"]["run_id"] == "first"
    assert "taking over PFF run first" in log.text("info")
    assert summary["accuracy"] == ReferenceTrainer(m, mnist, progress=False).fit()["accuracy"]
    assert len(summary["timeline"]) == (len(m.layers) + 1) * m.train.splits   # every task once


def test_a_dff_master_keeps_no_checkpoint_with_nan_in_it(tmp_path, cluster):
    """A replacement resumes from the master's newest checkpoint of its layer: a forged one full
    of NaN must not become it (the real one before it stays)."""
    import torch

    from dff_ros.parts.versions import Parameters
    from dff_ros.run.cluster import Delivery

    run, log = start(DFFRun, cluster(), pipeline(tmp_path), model(), None)

    def checkpoint(version, value, run_id="r1", part=1):
        p = Parameters(part, version, {"layer.weight": torch.full((2, 2), value)}, {})
        return Delivery(run_id, "runs", part, 16, lambda: p)

    run.on_checkpoint(checkpoint(1, 0.5))
    run.on_checkpoint(checkpoint(2, float("nan")))
    run.on_checkpoint(checkpoint(3, float("inf")))
    run.on_checkpoint(checkpoint(4, 0.25, run_id="someone-else"))
    assert run.checkpoints[1].version == 1 and run.dropped == 2
    assert "dropped a checkpoint of layer 1 with NaN or infinite layer.weight" in log.text("warning")
    run.on_checkpoint(checkpoint(2, 0.75))
    assert run.checkpoints[1].version == 2


def combinations():
    """Every {negatives} x {classifier} x {schedule} x {transport} the model schema accepts (one
    classifier at a time; 'refused' the rest, with the schema's key)."""
    out = []
    for negatives in ("random", "fixed", "adaptive", "hybrid"):
        for algorithm, classifiers in (("ff", ("goodness", "softmax")), ("pon", ("pon_last", "pon_all")),
                                       ("cwc", ("cwc_last", "cwc_all"))):
            for classifier in classifiers:
                for schedule in ("chapters", "stream"):
                    for transport in ("activations", "single_layer", "all_layers", "federated"):
                        out.append((negatives, algorithm, classifier, schedule, transport))
    return out


def combination_model(negatives, algorithm, classifier, schedule):
    return parse_model_config({
        "name": "combo", "model": [[-1, "FFDense", [40]], [-1, "FFDense", [40]]],
        "train": {"epochs": 2, "splits": 2, "lr": 0.003, "schedule": schedule, "train_subset": 600,
                  "test_subset": 200, "threads": 1, "algorithm": algorithm, "classifiers": [classifier],
                  "negatives": negatives,
                  # adaptive: chapter 2 scored after chapter 0 (a lag every variant takes on 2 nodes)
                  **({"negatives_lag": 2, "epochs": 3, "splits": 3} if negatives == "adaptive" else {})}},
        "combo.yaml")


def test_every_combination_the_schema_accepts_runs_or_is_refused_with_its_reason(mnist, tmp_path, cluster):
    """Accepted: the run ends with the reference trainer's result (federated trains on shards:
    its own result, in range). Refused: when the config is read, naming the key and why."""
    from dff_ros.config.schema import ConfigError
    from dff_ros.pff.worker import check_pff_supported
    from dff_ros.pipeline.driver import check_supported

    ran, refused, references = [], {}, {}
    for i, (negatives, algorithm, classifier, schedule, transport) in enumerate(combinations()):
        what = f"{negatives} x {algorithm}/{classifier} x {schedule} x {transport}"
        try:
            m = combination_model(negatives, algorithm, classifier, schedule)
            (check_supported if transport == "activations" else check_pff_supported)(m)
        except ConfigError as e:
            assert e.key.startswith("train.") and e.problem, what
            refused[what] = e.key
            continue
        except ValueError as e:   # the master's own checks say which key
            assert "combo.yaml: train." in str(e), (what, str(e))
            refused[what] = str(e).split(": ")[1]
            continue
        c = cluster()
        c.data = mnist
        p = pipeline(tmp_path / str(i)) if transport == "activations" else \
            pipeline(tmp_path / str(i), transport="parameters", pff_variant=transport)
        try:
            summary = start(DFFRun if transport == "activations" else PFFRun, c, p, m, mnist)[0].run()
        finally:   # 55 clusters beating every 50 ms side by side starved the late runs' workers
            c.close()
        acc = summary["accuracy"]
        assert set(acc) == {classifier} and 0.0 <= acc[classifier] <= 1.0, (what, acc)
        if transport != "federated":
            key = (negatives, algorithm, classifier, schedule)
            if key not in references:
                references[key] = ReferenceTrainer(m, mnist, progress=False).fit()["accuracy"]
            assert acc == references[key], (what, acc, references[key])
        ran.append(what)
    # refused: negatives that pon and cwc would ignore, hybrid but for softmax-only FF, PFF's stream
    # schedule; every other combination ran
    assert set(refused.values()) == {"train.negatives", "train.schedule"}, refused
    for what in refused:
        negatives, model_, schedule, transport = what.split(" x ")
        assert (model_.split("/")[0] != "ff" and negatives in ("fixed", "adaptive")) or \
            (negatives == "hybrid" and model_ != "ff/softmax") or (schedule == "stream" and transport != "activations"), what
    # 11 models (ff: 3 negatives x 2 classifiers + hybrid/softmax; pon, cwc: 2 classifiers each),
    # each on chapters with 4 transports and on stream with activations
    assert len(ran) == 11 * 5 and len(ran) + len(refused) == len(combinations()), ran
