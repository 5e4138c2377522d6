"""Attacks from another node on the domain against a live DFF run (issue 24's table); writes the
README "Attacks" report.

    source scripts/env.sh && python bench/attacks.py [--only nan_rows,forged_results,...]

Each attack gets a run of its own: `mnist_default` with the system benches' recipe on a
3,000-image subset (4 epochs, 4 chapters), master and 2 servers as separate processes, and an
rclpy node in this process that reads what anyone can read (the run id from /dff/status, chunks
and checkpoints off their topics) and then sends what the attack sends, once layer 0 is
training. Some rows change what the run starts from instead (planted weights files, a full
disk), start the master alone with a hostile config, or put each node on an emulated host and
cut one off the network (root: network namespaces). Reported per attack: what was sent, how
often, the outcome (dropped or refused and counted, run finished, servers up, their peak RSS),
accuracy against the undisturbed run, and training samples lost.
Writes bench/results/attacks.{json,md} and the README block.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from common import REPO, RESULTS, SYSTEM_RECIPE, data_root, machine, machine_cell, markdown_table, publish_table  # noqa: E402
from dff_ros.netns import VirtualHosts  # noqa: E402
from faults import _accuracy, _lost_samples, bench_env  # noqa: E402
from rosutil import Client, Proc, start_server, wait_status  # noqa: E402

import torch  # noqa: E402

from dff_ros.config.schema import load_model_config  # noqa: E402
from dff_ros.ff.learners import Activities  # noqa: E402
from bad_inputs import create_request, spec_msg  # noqa: E402
from dff_ros.msg import InferenceBatch, LayerParameters, LayerStatus, ServerClaim, TrainingBatch  # noqa: E402
from dff_ros.nodes.common import CLAIMS_QOS, DATA_QOS, STATUS_QOS, params_qos  # noqa: E402
from dff_ros.pipeline.chunks import TrainChunk  # noqa: E402
from dff_ros.pipeline.scoring import checkpoint_depth  # noqa: E402
from dff_ros.srv import CreateLayers, DeleteModel, SaveWeights  # noqa: E402
from dff_ros.topics import CLAIMS_TOPIC, STATUS_TOPIC, checkpoints_topic, layer_topics  # noqa: E402
from dff_ros.wire.codec import train_to_msg  # noqa: E402
from dff_ros.wire.tensors import from_msg, to_msg  # noqa: E402

MODEL = REPO / "config" / "models" / "mnist_default.yaml"
SMALL = {**SYSTEM_RECIPE, "train_subset": 3000, "test_subset": 1000, "epochs": 4, "splits": 4}
RUN_ID = "attacked"
ROWS = 64
CUT = {**SMALL, "train_subset": 12000, "epochs": 8, "splits": 8}   # training outlasts a 15 s cut
CUT_SECONDS = 15.0


def pipeline_args(tmp: str, overrides: dict, sets: dict | None = None, model: Path = MODEL) -> list[str]:
    args = ["--pipeline", str(REPO / "config" / "mnist_pipeline.yaml"), "--set", f"model={model}",
            "--set", f"data_root={data_root()}", "--set", f"weights_dir={tmp}/w", "--set", f"summary_dir={tmp}/runs",
            "--set", "restore_weights=false", "--set", "servers=2", "--set", "stall_seconds=60", "--no-progress",
            "--run-id", RUN_ID]
    for k, v in (sets or {}).items():
        args += ["--set", f"{k}={v}"]
    for k, v in overrides.items():
        args += ["--train-set", f"{k}={json.dumps(v)}"]
    return args


class Attacker:
    """What the attack's node sends; ``ctx``: the model name, layer count, chunk count per chapter."""

    def __init__(self, client: Client, ctx: dict):
        self.client, self.ctx = client, ctx
        self.pubs: dict[str, object] = {}

    def publish(self, topic: str, msg, msg_type=TrainingBatch, qos=DATA_QOS) -> None:
        if topic not in self.pubs:
            self.pubs[topic] = self.client.node.create_publisher(msg_type, topic, qos)
            time.sleep(1.0)   # matched before the first sample
        self.pubs[topic].publish(msg)

    def topics(self, layer: int) -> dict[str, str]:
        return layer_topics(self.ctx["model"], layer, self.ctx["layers"] - 1)

    def activities_chunk(self, layer: int, chapter: int, seq: int, fill) -> TrainingBatch:
        """A chunk as layer ``layer - 1`` sends it, right run id and count, activities ``fill(shape)``."""
        shape = (ROWS, self.ctx["width"])
        labels = torch.randint(0, 10, (ROWS,))
        acts = Activities(fill(shape), fill(shape), fill(shape), labels)
        chunk = TrainChunk(chapter, chapter, seq, self.ctx["count"], labels, acts=acts)
        return train_to_msg(chunk, run_id=RUN_ID, model=self.ctx["model"], layer=layer - 1)

    def call(self, srv_type, name: str, request) -> str:
        try:
            res = self.client.call(srv_type, name, request, timeout=20.0)
        except AssertionError as e:   # no answer: that is an outcome too
            return f"NOT answered ({e})"
        return f"{'accepted' if res.success else 'refused'}: {res.message}"


def nan_rows(a: Attacker) -> dict:
    a.publish(a.topics(1)["train_input"], a.activities_chunk(1, 0, 0, lambda s: torch.full(s, float("nan"))))
    return {"sent": 1}


def random_activities(a: Attacker) -> dict:
    for chapter in range(4):
        a.publish(a.topics(1)["train_input"], a.activities_chunk(1, chapter, 0, lambda s: torch.rand(s) * 3))
    return {"sent": 4}


def forged_results(a: Attacker) -> dict:
    last = a.ctx["layers"] - 1
    for chapter in range(1000, 1008):
        msg = a.activities_chunk(last + 1, chapter, 0, torch.rand)
        to_msg(torch.rand(ROWS, a.ctx["width"]), msg.features)
        a.publish(a.topics(last)["train_output"], msg)
    return {"sent": 8}


def shape_overflow(a: Attacker) -> dict:
    """A tensor that declares [0, 2^32-1, 2^32-1] and holds no bytes (it killed servers and the master)."""
    for topic in (a.topics(0)["train_input"], a.topics(a.ctx["layers"] - 1)["train_output"]):
        msg = TrainingBatch(model=a.ctx["model"], run_id=RUN_ID, layer=-1, count=1)
        to_msg(torch.tensor([1]), msg.labels)
        msg.images.dtype, msg.images.shape, msg.images.data = "uint8", [0, 2 ** 32 - 1, 2 ** 32 - 1], b""
        a.publish(topic, msg)
    return {"sent": 2}


def huge_attempt(a: Attacker) -> dict:
    """A malformed chunk with attempt 2^32-1 (it once made every real chunk stale)."""
    msg = TrainingBatch(model=a.ctx["model"], run_id=RUN_ID, layer=-1, count=a.ctx["count"], attempt=2 ** 32 - 1)
    to_msg(torch.tensor([1, 2]), msg.labels)
    to_msg(torch.tensor([3, 4]), msg.neg_labels)
    to_msg(torch.zeros(2, 10, dtype=torch.uint8), msg.images)   # not 784 wide
    a.publish(a.topics(0)["train_input"], msg)
    return {"sent": 1}


def control_calls(a: Attacker) -> dict:
    """delete_model, save_weights and create_layers (another run id) for the live model, without its run key."""
    m = a.ctx["model"]
    said = {"delete_model": a.call(DeleteModel, "/server_1/delete_model", DeleteModel.Request(model=m)),
            "save_weights": a.call(SaveWeights, "/server_2/save_weights", SaveWeights.Request(model=m)),
            "create_layers": a.call(CreateLayers, "/server_1/create_layers",
                                    CreateLayers.Request(run_id="intruder", model=m))}
    return {"sent": 3, "answers": said}


def statuses_for_killed(a: Attacker, msg: LayerStatus, seconds: float) -> dict:
    """server_2 SIGKILLed, then ``msg`` (a status naming server_2) 10 times a second for
    ``seconds`` or until the run ends."""
    a.servers[1].p.send_signal(signal.SIGKILL)
    end, sent = time.monotonic() + seconds, 0
    while time.monotonic() < end and a.master.p.poll() is None:
        a.publish(STATUS_TOPIC, msg, LayerStatus, STATUS_QOS)
        sent += 1
        time.sleep(0.1)
    return {"sent": sent}


def killed(a: Attacker) -> dict:
    """server_2 SIGKILLed as in the status rows, nothing sent: what those rows are compared with."""
    a.servers[1].p.send_signal(signal.SIGKILL)
    return {"sent": 0}


def foreign_heartbeats(a: Attacker) -> dict:
    """Statuses of another model naming the killed server_2 (they once hid the loss)."""
    return statuses_for_killed(a, LayerStatus(server="server_2", model="other_model", run_id="other",
                                              phase="training"), 20.0)


def forged_checkpoint(a: Attacker, forge: bool = True) -> dict:
    """A real checkpoint of layer 1 read off its topic, its weights replaced by random ones and its
    version raised, published back; then server_2 SIGKILLed (recovery resumes from the newest).
    ``forge`` False: the same kill, nothing published (the row to compare with)."""
    got: list = []
    topic = checkpoints_topic(a.ctx["model"])
    qos = params_qos(2 * a.ctx["depth"] * a.ctx["layers"])
    a.pubs[topic] = a.client.node.create_publisher(LayerParameters, topic, qos)   # matched while layer 1 trains
    a.client.node.create_subscription(LayerParameters, topic, lambda m: got.append(m) if m.part == 1 else None, qos)
    end = time.monotonic() + 120
    while not got and time.monotonic() < end:
        a.client.spin(0.05)
    if not got:
        return {"sent": 0, "note": "no checkpoint of layer 1 seen in 120 s"}
    if not forge:
        a.client.spin(0.2)
        a.servers[1].p.send_signal(signal.SIGKILL)
        return {"sent": 0}
    forged = got[0]
    forged.version, forged.chapter = forged.version + 10, forged.chapter + 10
    for name, t in zip(forged.names, forged.tensors):
        real = from_msg(t, name=name)
        to_msg(torch.rand_like(real) if real.is_floating_point() else real.clone(), t)
    a.publish(topic, forged, LayerParameters, qos)
    a.client.spin(0.2)
    a.servers[1].p.send_signal(signal.SIGKILL)
    return {"sent": 1}


def forged_inference(a: Attacker) -> dict:
    """During testing: for every test chunk the master sends, a result on the last layer's
    inference output with the chunk's own labels (read off layer 0's input) and goodness that
    names them (it once made the goodness accuracy 100 %)."""
    last, seen = a.ctx["layers"] - 1, []
    topic = a.topics(last)["infer_output"]
    a.pubs[topic] = a.client.node.create_publisher(InferenceBatch, topic, DATA_QOS)   # matched before testing
    a.client.node.create_subscription(InferenceBatch, a.topics(0)["infer_input"], seen.append, DATA_QOS)
    sent, done, count = 0, set(), None
    while a.master.p.poll() is None and (count is None or len(done) < count):
        a.client.spin(0.05)
        for m in [m for m in seen if m.seq not in done]:
            count = m.count
            labels = from_msg(m.labels, name="labels")
            forged = InferenceBatch(run_id=m.run_id, model=m.model, layer=last, seq=m.seq, count=m.count)
            to_msg(labels, forged.labels)
            to_msg(torch.nn.functional.one_hot(labels, 10).float() * 100, forged.goodness)
            to_msg(torch.rand(len(labels), a.ctx["head_features"]), forged.features)
            a.publish(topic, forged, InferenceBatch)
            done.add(m.seq)
            sent += 1
        seen.clear()
    return {"sent": sent}


def chunk_flood(a: Attacker) -> dict:
    """10,000 small chunks for layer 1 with the real run id, chapter 0 and distinct seqs, of a
    chapter that never completes (count 10^6): they once held 2 GB and ended the run."""
    shape = (4, a.ctx["width"])
    for seq in range(10_000):
        labels = torch.randint(0, 10, (4,))
        chunk = TrainChunk(0, 0, seq, 10 ** 6, labels, acts=Activities(torch.rand(shape), torch.rand(shape),
                                                                     torch.rand(shape), labels))
        a.publish(a.topics(1)["train_input"], train_to_msg(chunk, run_id=RUN_ID, model=a.ctx["model"], layer=0))
    return {"sent": 10_000}


def big_flood(a: Attacker) -> dict:
    """15 s of 12 MB messages of another run at layer 0's input, as fast as they go (once: 5 GB
    RSS, starved heartbeats, a live server declared lost)."""
    msg = TrainingBatch(model=a.ctx["model"], run_id="flood", layer=-1, count=1)
    to_msg(torch.zeros(15_000, dtype=torch.int64), msg.labels)
    to_msg(torch.zeros(15_000, 784, dtype=torch.uint8), msg.images)
    end, sent = time.monotonic() + 15.0, 0
    while time.monotonic() < end:
        a.publish(a.topics(0)["train_input"], msg)
        sent += 1
    return {"sent": sent}


def inference_flood(a: Attacker) -> dict:
    """15 s of unsealed 1000-image inference chunks with the run's id at layer 0's input, as
    fast as they go (inference may come unsealed: the classifier's does)."""
    msg = InferenceBatch(model=a.ctx["model"], run_id=RUN_ID, layer=-1, count=1)
    to_msg(torch.randint(0, 10, (1000,)), msg.labels)
    to_msg(torch.randint(0, 256, (1000, 784), dtype=torch.uint8), msg.images)
    end, sent = time.monotonic() + 15.0, 0
    while time.monotonic() < end:
        msg.seq = sent
        a.publish(a.topics(0)["infer_input"], msg, InferenceBatch)
        sent += 1
    return {"sent": sent}


def forged_claims(a: Attacker) -> dict:
    """ServerClaims for server_1 and server_2 (held, token 0), 10 a second for 15 s (they once
    renamed idle servers and crashed 3 of 4)."""
    end, sent = time.monotonic() + 15.0, 0
    while time.monotonic() < end:
        for name in ("server_1", "server_2"):
            a.publish(CLAIMS_TOPIC, ServerClaim(name=name, token=0, hostname="intruder", pid=1, held=True),
                      ServerClaim, CLAIMS_QOS)
            sent += 1
        time.sleep(0.1)
    return {"sent": sent}


def pff_requests(a: Attacker) -> dict:
    """PFF create_layers requests with 2^32-1 nodes, history or start chapter, or a layer on a
    node that does not exist, to a server busy with the run (they once hung or killed it)."""
    big = 2 ** 32 - 1
    cases = {"num_nodes 2^32-1": {"num_nodes": big}, "param_history 2^32-1": {"param_history": big},
             "layer_nodes [5, -7]": {"layer_nodes": [5, -7]}, "start_chapter 2^32-1": {"start_chapter": big}}
    said, slowest = {}, 0.0
    for what, fields in cases.items():
        base = {"pff_variant": "single_layer", "num_nodes": 2, "layer_nodes": [0, 1], "param_history": 4, **fields}
        req = create_request([spec_msg(model="probe", index=0, last=False),
                              spec_msg(model="probe", index=1, in_features=50)], model="probe",
                             transport="parameters", **base)
        t0 = time.monotonic()
        said[what] = a.call(CreateLayers, "/server_1/create_layers", req)
        slowest = max(slowest, time.monotonic() - t0)
    return {"sent": len(cases), "answers": said, "slowest_answer_s": slowest}


def own_run_heartbeats(a: Attacker) -> dict:
    """Statuses of the run's own model and id naming the killed server_2, for 70 s (past the
    run's stall timeout): only its seal tells them from server_2's."""
    return statuses_for_killed(a, LayerStatus(server="server_2", model=a.ctx["model"], run_id=RUN_ID, layer=1,
                                              phase="training"), 70.0)


def killed_testing(a: Attacker) -> dict:
    """server_2 (layer 1) SIGKILLed as the first test chunk reaches it (the bytes, unread: the
    kill comes while layer 1 works on it)."""
    hit = threading.Event()

    def kill(_raw):
        if not hit.is_set():
            hit.set()
            a.servers[1].p.send_signal(signal.SIGKILL)
    a.client.node.create_subscription(InferenceBatch, a.topics(1)["infer_input"], kill, DATA_QOS, raw=True)
    while not hit.is_set() and a.master.p.poll() is None:
        a.client.spin(0.02)
    return {"sent": int(hit.is_set())}


# ---------------------------------------------------------------- rows that change what the run starts from

def _saved_file(tmp_path: Path, part: int, data: bytes) -> dict:
    """Plant ``data`` where the run's servers look for part ``part``'s saved weights (the head:
    part = layer count) and have the run restore."""
    from dff_ros import weights
    config = load_model_config(MODEL, SMALL)
    path = weights.model_dir(tmp_path / "w", config.name) / weights.part_files(config)[part]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"restore_weights": "true"}


def _full_disk(tmp_path: Path) -> dict:
    """The weights folder on a 256 kB tmpfs filled to the last byte (unmounted by the run)."""
    where = tmp_path / "w"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], check=True)
    fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:   # full
        pass
    finally:
        os.close(fd)
    return {}


PREPARE = {
    "truncated_layer_file": lambda t: _saved_file(t, 0, b"PK\x03\x04" + b"\0" * 60),
    "garbage_head_file": lambda t: _saved_file(t, 2, b"not a torch file at all"),
    "full_disk": _full_disk,
}


# ---------------------------------------------------------------- bad configs (a master alone)

def _alias_bomb() -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
              for i in range(1, 9)]
    return "\n".join(lines) + "\nname: bomb\nmodel:\n  - [-1, FFDense, *a8]\n"


CONFIGS = {
    "yaml_alias_bomb": (_alias_bomb, "a model YAML with a 9-level alias bomb (about 700 bytes, 387 million "
                                     "strings expanded)"),
    "yaml_deep": (lambda: "name: deep\nmodel: " + "[" * 50_000 + "]" * 50_000 + "\n",
                  "a model YAML nested 50,000 levels deep"),
    "yaml_huge": (lambda: "name: huge\nmodel: []\nnote: " + "x" * 100_000_000 + "\n",
                  "a 100 MB model YAML (one long string)"),
}


def config_attack(name: str) -> dict:
    """The master started with a hostile model YAML: how long until it says what is wrong."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(CONFIGS[name][0]())
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "dff_ros.nodes.master",
                               *pipeline_args(tmp, {}, model=path)], env=bench_env(9), capture_output=True,
                              text=True, timeout=600, cwd=REPO)
        said = (proc.stderr.strip().splitlines() or [""])[-1]
        return {"sent": 1, "master_exit": proc.returncode, "seconds": round(time.monotonic() - t0, 2),
                "said": said.replace(tmp, "<tmp>")[:300], "tracebacks": proc.stderr.count("Traceback")}


ATTACKS = {
    "undisturbed": (None, "nothing (the run to compare with)"),
    "nan_rows": (nan_rows, f"1 TrainingBatch of {ROWS} NaN rows to layer 1's input (right run id, chapter 0)"),
    "random_activities": (random_activities, f"4 batches of {ROWS} random activities to layer 1, chapters 0..3, "
                                             "seq 0, the right chunk count (before layer 0's real ones)"),
    "forged_results": (forged_results, "8 forged results on the last layer's output (chapters 1000..1007)"),
    "shape_overflow": (shape_overflow, "a tensor declaring shape [0, 2^32-1, 2^32-1], no data, to layer 0's input "
                                       "and to the results topic"),
    "huge_attempt": (huge_attempt, "1 malformed chunk with attempt 2^32-1 to layer 0's input"),
    "control_calls": (control_calls, "delete_model, save_weights and create_layers (another run id) for the live "
                                     "model, from another node, without the run key"),
    "killed": (killed, "nothing, but server_2 SIGKILLed once layer 0 trains: the run to compare the next two "
                       "rows with"),
    "foreign_heartbeats": (foreign_heartbeats, "server_2 SIGKILLed, then 10 statuses a second of another model "
                                               "naming server_2, for 20 s or until the run ends"),
    "own_run_heartbeats": (own_run_heartbeats, "server_2 SIGKILLed, then 10 statuses a second of the run's own "
                                               "model and run id naming server_2, for 70 s or until the run ends"),
    "killed_after_checkpoint": (lambda a: forged_checkpoint(a, forge=False),
                                "nothing, but server_2 SIGKILLed right after layer 1's first checkpoint: the run "
                                "to compare the next row with"),
    "forged_checkpoint": (forged_checkpoint, "1 checkpoint of layer 1 copied off its topic with random weights and "
                                             "its version +10, then server_2 SIGKILLed (the run resumes layer 1 "
                                             "from the newest checkpoint)"),
    "forged_inference": (forged_inference, "during testing, a forged result for every test chunk on the last "
                                           "layer's inference output: the chunk's own labels, goodness naming them"),
    "chunk_flood": (chunk_flood, "10,000 chunks of 4 rows for layer 1, right run id, chapter 0, distinct seqs, "
                                 "a chapter that never completes (count 10^6)"),
    "big_flood": (big_flood, "15 s of 12 MB messages of another run at layer 0's input, as fast as they go"),
    "inference_flood": (inference_flood, "15 s of unsealed 1000-image inference chunks with the run's id at layer "
                                         "0's input, as fast as they go"),
    "forged_claims": (forged_claims, "ServerClaims for server_1 and server_2 (held, token 0), 10 a second for 15 s"),
    "pff_requests": (pff_requests, "PFF create_layers with num_nodes, param_history or start_chapter 2^32-1, or "
                                   "layer_nodes [5, -7], to server_1 during the run"),
    "hosts_undisturbed": (None, "nothing, on 3 emulated hosts (DDS over UDP; 12,000 images, 8 epochs): the run to "
                                "compare the next row with"),
    "network_cut": (None, f"server_2's host cut off the network for {CUT_SECONDS:.0f} s a few seconds into "
                          "training, then healed (3 emulated hosts, DDS over UDP; 12,000 images, 8 epochs)"),
    "truncated_layer_file": (None, "layer 0's saved weights file replaced by 64 bytes of a truncated zip, "
                                   "then a run that restores saved weights"),
    "garbage_head_file": (None, "the softmax head's saved file replaced by text, then a run that restores saved "
                                "weights"),
    "full_disk": (None, "the weights folder (layers and head) on a full disk during a run"),
    **{n: (None, text) for n, (_, text) in CONFIGS.items()},
    "killed_testing": (killed_testing, "server_2 (layer 1) SIGKILLed as the first test chunk reaches it"),
}


def network_cut(name: str) -> dict:
    """Master, server_1 and server_2 each on an emulated host (network namespaces on a bridge,
    DDS over UDP); server_2's link goes down for CUT_SECONDS a few seconds into training, then
    up again. Its layer should move to server_1, and server_2, heard again, drop it. Row
    "hosts_undisturbed": the same run, no cut."""
    cut = name == "network_cut"
    env = {**bench_env(10 + list(ATTACKS).index(name)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
           "RMW_FASTRTPS_PUBLICATION_MODE": "AUTO",
           "FASTDDS_DEFAULT_PROFILES_FILE": str(REPO / "config" / "fastdds_udp_profile.xml")}
    out: dict = {"sent": int(cut)}
    with tempfile.TemporaryDirectory() as tmp, \
            VirtualHosts(3, prefix=f"atk{os.getpid() % 10000}", subnet=f"10.{210 + os.getpid() % 40}.0") as hosts:
        tmp_path = Path(tmp)
        servers = [start_server(env, tmp_path, name=f"server_{i}", weights=tmp_path / "w", wrap=hosts.command(i, []))
                   for i in (1, 2)]
        master = None
        try:
            for s in servers:
                s.wait_for("ready:", 60)
            master = Proc(["-m", "dff_ros.nodes.master", *pipeline_args(tmp, CUT)], env, tmp_path / "master.log",
                          wrap=hosts.command(0, []))
            master.wait_for("training mnist_default", 120)
            time.sleep(3.0)   # a process outside the namespaces cannot watch DDS there: by time
            if cut:
                link = ["ip", "-n", hosts.name(2), "link", "set", "eth0"]
                subprocess.run([*link, "down"], check=True)
                time.sleep(CUT_SECONDS)
                subprocess.run([*link, "up"], check=True)
            healed = hosts.sent_bytes(2)
            rc = master.p.wait(600)
            if cut:
                out["server_2_sent_after_heal"] = hosts.sent_bytes(2) - healed
            finish_run(out, rc, master, servers)
        finally:
            for p in [*servers, *([master] if master else [])]:
                p.stop()
    return out


HOSTS = ("hosts_undisturbed", "network_cut")   # rows on emulated hosts
# rows compared with a run of the same fault and no attack (the rest: with "undisturbed")
COMPARED = {"foreign_heartbeats": "killed", "own_run_heartbeats": "killed",
            "forged_checkpoint": "killed_after_checkpoint", "network_cut": "hosts_undisturbed",
            "hosts_undisturbed": None}   # a recipe of its own
BULKY = ("timeline", "history", "pipeline", "weights")   # not read by the table: kept out of the JSON


def finish_run(out: dict, rc: int, master: Proc, servers: list[Proc]) -> None:
    """What every attacked run reports once its master exited with ``rc``."""
    log = master.output()
    out["master_exit"] = rc
    out["peak_rss_mb"] = [peak_rss_mb(s.p.pid) for s in servers]
    out["dropped_kinds"] = sorted(set(re.findall(r"dropped an? (\w+) chunk", "".join(s.output() for s in servers))))
    out["servers_up"] = [s.p.poll() is None for s in servers]
    out["tracebacks"] = sum(p.output().count("Traceback") for p in [*servers, master])
    written = re.search(r"\[dff_master\]: summary: (\S+)", log)   # also after a run that exits 1
    if written and Path(written.group(1)).exists():
        summary = json.loads(Path(written.group(1)).read_text())
        out["summary"] = {k: v for k, v in summary.items() if k not in BULKY}
    if rc != 0:
        said = (re.findall(r"\[ERROR\] \[[\d.]+\] ([^\n]*)", log) or [log[-300:]])[-1]
        out["error"] = re.sub(r"/tmp/tmp\w+", "<tmp>", said)


def attacked_run(name: str) -> dict:
    attack, _ = ATTACKS[name]
    config = load_model_config(MODEL, SMALL)
    env = bench_env(10 + list(ATTACKS).index(name))
    chunk_rows = 1000
    ctx = {"model": config.name, "layers": len(config.layers), "width": config.layers[0].out_features,
           "depth": checkpoint_depth(config), "head_features": sum(l.out_features for l in config.layers[1:]),
           "count": -(-config.train.train_subset * config.train.chapter_epochs // chunk_rows)}
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        try:
            sets = PREPARE[name](tmp_path) if name in PREPARE else {}
            out["sent"] = int(name in PREPARE)   # a planted file, a full disk
        except OSError:
            if name == "full_disk":
                subprocess.run(["umount", "-l", str(tmp_path / "w")], check=False)
            raise
        servers = [start_server(env, tmp_path, name=f"server_{i}", weights=tmp_path / "w") for i in (1, 2)]
        client = Client(env)
        master = None
        try:
            for s in servers:
                s.wait_for("ready:", 60)
            master = Proc(["-m", "dff_ros.nodes.master", *pipeline_args(tmp, SMALL, sets)], env,
                          tmp_path / "master.log")
            if attack is not None:
                wait_status(client, lambda m: m.run_id == RUN_ID and m.layer == 0 and m.phase == "training")
                a = Attacker(client, ctx)
                a.servers, a.master = servers, master
                out.update(attack(a))
            finish_run(out, master.p.wait(600), master, servers)
        finally:
            client.close()
            for p in [*servers, *([master] if master else [])]:
                p.stop()
            if name == "full_disk":
                subprocess.run(["umount", "-l", str(tmp_path / "w")], check=True)
    return out


def peak_rss_mb(pid: int) -> float | None:
    """A live process's peak resident memory (VmHWM), MB; None once it has gone."""
    try:
        line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


def outcome(name: str, r: dict, results: dict) -> str:
    """Row ``name``'s outcome ``r``, compared with the undisturbed run of its kind in ``results``."""
    compared = COMPARED.get(name, "undisturbed")
    base = results.get(compared, {}).get("summary") if compared and name != compared else None
    if name in CONFIGS:
        tb = f"; {r['tracebacks']} traceback(s)" if r["tracebacks"] else ""
        return f"master exit {r['master_exit']} after {r['seconds']:.1f} s: {r['said']}{tb}"
    alive = [f"server_{i}" for i, u in enumerate(r["servers_up"], 1) if u]
    up = "both servers up" if all(r["servers_up"]) else f"{', '.join(alive) or 'no server'} up"
    tb = f"; {r['tracebacks']} traceback(s)" if r["tracebacks"] else ""
    rss = ("; server peak RSS " + " / ".join("-" if m is None else f"{m:.0f}" for m in r["peak_rss_mb"]) + " MB"
           if r.get("peak_rss_mb") else "")
    if "summary" not in r and name in PREPARE:
        return f"refused before training (master exit {r['master_exit']}: {r.get('error', '')[:320]}); {up}{tb}{rss}"
    if "summary" not in r:
        return f"run FAILED (master exit {r['master_exit']}: {r.get('error', '')[:200]}); {up}{tb}{rss}"
    s = r["summary"]
    layers = {l["index"]: l.get("dropped") for l in s["layers"]}
    kinds = f" ({', '.join(r['dropped_kinds'])})" if r.get("dropped_kinds") else ""
    ended = "run finished" if r["master_exit"] == 0 else f"run finished, master exit {r['master_exit']}"
    parts = [f"{ended}; {up}{tb}", f"layers dropped {layers}{kinds}",
             f"master dropped {s['master']['dropped']}, rejected {s['master']['rejected']}"]
    forged = {k: v for k, v in s["master"].get("statuses_dropped", {}).items() if v}
    if forged:
        parts.append("statuses dropped " + ", ".join(f"{v} {k}" for k, v in forged.items()))
    if s.get("recoveries"):
        x = s["recoveries"][0]
        parts.append(f"{x['server']} noticed lost after {x['silent_seconds']:.1f} s, its layer moved")
    if "answers" in r:
        parts.append("; ".join(f"{k} {v.split(' (heard')[0]}" for k, v in r["answers"].items()))
    if s.get("save_errors"):
        parts.append(f"not saved (said): {', '.join(s['save_errors'])}")
    if s.get("restored_from"):
        parts.append(f"restored: {s['restored_from']}")
    if r.get("error"):
        parts.append(f"said: {r['error'][:200]}")
    if s.get("returned"):
        parts.append("; ".join(s["returned"].values()))
    if "server_2_sent_after_heal" in r:
        parts.append(f"server_2 sent {r['server_2_sent_after_heal'] / 1e6:.1f} MB after the heal")
    if base is not None:
        parts.append(_accuracy(s, base).replace(" undisturbed (", " undisturbed (" if compared == "undisturbed"
                                                else f" in row `{compared}` ("))
    parts.append(f"samples lost {_lost_samples(s)}")
    if "slowest_answer_s" in r:
        parts.append(f"slowest answer {r['slowest_answer_s']:.2f} s")
    return "; ".join(parts) + rss


def table(results: dict) -> str:
    rows = [[ATTACKS[n][1], r.get("sent", 0), outcome(n, r, results), machine_cell(r["machine"])]
            for n, r in ((n, results[n]) for n in ATTACKS if n in results)]
    return markdown_table(["attack", "sent", "outcome", "machine"], rows)


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--only", help="comma-separated attacks to run again (the rest keep their last results)")
    a.add_argument("--table-only", action="store_true", help="only rewrite the md/README tables from the JSON")
    args = a.parse_args()
    names = [] if args.table_only else args.only.split(",") if args.only else list(ATTACKS)
    unknown = set(names) - set(ATTACKS)
    if unknown:
        raise SystemExit(f"--only: unknown attack(s) {sorted(unknown)} (attacks: {', '.join(ATTACKS)})")
    path = RESULTS / "attacks.json"
    results = json.loads(path.read_text()) if (args.only or args.table_only) and path.exists() else {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names, 1):
        print(f"{i}/{len(names)} {name}", flush=True)
        run = network_cut if name in HOSTS else config_attack if name in CONFIGS else attacked_run
        results[name] = {**run(name), "machine": machine()}
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")   # kept attack by attack
    publish_table("attacks", table(results))


if __name__ == "__main__":
    main()
