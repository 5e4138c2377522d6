"""Attacks from another node on the domain against a live DFF run (issue 24's table); writes the
README "Attacks" report.

    source scripts/env.sh && python bench/attacks.py [--only nan_rows,forged_results,...]

Each attack gets a run of its own: `mnist_default` with the system benches' recipe on a
3,000-image subset (4 epochs, 4 chapters), master and 2 servers as separate processes, and an
rclpy node in this process that reads what anyone can read (the run id from /dff/status) and
then sends what the attack sends, once layer 0 is training. Reported per attack: what was sent,
how often, the outcome (dropped or refused and counted, run finished, servers up), accuracy
against the undisturbed run, and training samples lost. Attacks that only DDS security or
writer pinning could stop are run too and say so.
Writes bench/results/attacks.{json,md} and the README block.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from common import REPO, RESULTS, SYSTEM_RECIPE, data_root, machine, machine_cell, markdown_table, publish_table  # noqa: E402
from faults import _accuracy, _lost_samples, bench_env, summary_of  # noqa: E402
from rosutil import Client, Proc, start_server, wait_status  # noqa: E402

import torch  # noqa: E402

from dff_ros.config.schema import load_model_config  # noqa: E402
from dff_ros.ff.learners import Activities  # noqa: E402
from dff_ros.msg import LayerParameters, LayerStatus, TrainingBatch  # noqa: E402
from dff_ros.nodes.common import DATA_QOS, STATUS_QOS, params_qos  # noqa: E402
from dff_ros.pipeline.chunks import TrainChunk  # noqa: E402
from dff_ros.pipeline.scoring import checkpoint_depth  # noqa: E402
from dff_ros.srv import CreateLayers, DeleteModel, SaveWeights  # noqa: E402
from dff_ros.topics import STATUS_TOPIC, checkpoints_topic, layer_topics  # noqa: E402
from dff_ros.wire.codec import train_to_msg  # noqa: E402
from dff_ros.wire.tensors import from_msg, to_msg  # noqa: E402

MODEL = REPO / "config" / "models" / "mnist_default.yaml"
SMALL = {**SYSTEM_RECIPE, "train_subset": 3000, "test_subset": 1000, "epochs": 4, "splits": 4}
RUN_ID = "attacked"
ROWS = 64


def pipeline_args(tmp: str, overrides: dict) -> list[str]:
    args = ["--pipeline", str(REPO / "config" / "mnist_pipeline.yaml"), "--set", f"model={MODEL}",
            "--set", f"data_root={data_root()}", "--set", f"weights_dir={tmp}/w", "--set", f"summary_dir={tmp}/runs",
            "--set", "restore_weights=false", "--set", "servers=2", "--set", "stall_seconds=60", "--no-progress",
            "--run-id", RUN_ID]
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


def foreign_heartbeats(a: Attacker) -> dict:
    """server_2 killed; statuses of another model naming server_2 keep coming (they once hid the loss)."""
    a.servers[1].p.send_signal(signal.SIGKILL)
    msg = LayerStatus(server="server_2", model="other_model", run_id="other", phase="training")
    end, sent = time.monotonic() + 20.0, 0
    while time.monotonic() < end:
        a.publish(STATUS_TOPIC, msg, LayerStatus, STATUS_QOS)
        sent += 1
        time.sleep(0.1)
    return {"sent": sent}


def forged_checkpoint(a: Attacker) -> dict:
    """A real checkpoint of layer 1 read off its topic, its weights replaced by random ones and its
    version raised, published back; then server_2 SIGKILLed (recovery resumes from the newest)."""
    got: list = []
    topic = checkpoints_topic(a.ctx["model"])
    qos = params_qos(2 * a.ctx["depth"] * a.ctx["layers"])
    a.client.node.create_subscription(LayerParameters, topic, lambda m: got.append(m) if m.part == 1 else None, qos)
    end = time.monotonic() + 120
    while not got and time.monotonic() < end:
        a.client.spin(0.2)
    if not got:
        return {"sent": 0, "note": "no checkpoint of layer 1 seen in 120 s"}
    forged = got[-1]
    forged.version, forged.chapter = forged.version + 10, forged.chapter + 10
    for name, t in zip(forged.names, forged.tensors):
        real = from_msg(t, name=name)
        to_msg(torch.rand_like(real) if real.is_floating_point() else real.clone(), t)
    a.publish(topic, forged, LayerParameters, qos)
    a.client.spin(1.0)
    a.servers[1].p.send_signal(signal.SIGKILL)
    return {"sent": 1}


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
    "foreign_heartbeats": (foreign_heartbeats, "server_2 SIGKILLed, then 10 statuses a second of another model "
                                               "naming server_2, for 20 s"),
    "forged_checkpoint": (forged_checkpoint, "1 checkpoint of layer 1 copied off its topic with random weights and "
                                             "its version +10, then server_2 SIGKILLed (the run resumes layer 1 "
                                             "from the newest checkpoint)"),
}


def attacked_run(name: str) -> dict:
    attack, _ = ATTACKS[name]
    config = load_model_config(MODEL, SMALL)
    env = bench_env(10 + list(ATTACKS).index(name))
    chunk_rows = 1000
    ctx = {"model": config.name, "layers": len(config.layers), "width": config.layers[0].out_features,
           "depth": checkpoint_depth(config),
           "count": -(-config.train.train_subset * config.train.chapter_epochs // chunk_rows)}
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        servers = [start_server(env, tmp_path, name=f"server_{i}", weights=tmp_path / "w") for i in (1, 2)]
        client = Client(env)
        master = None
        try:
            for s in servers:
                s.wait_for("ready:", 60)
            master = Proc(["-m", "dff_ros.nodes.master", *pipeline_args(tmp, SMALL)], env, tmp_path / "master.log")
            wait_status(client, lambda m: m.run_id == RUN_ID and m.layer == 0 and m.phase == "training")
            if attack is not None:
                a = Attacker(client, ctx)
                a.servers = servers
                out.update(attack(a))
            rc = master.p.wait(600)
            log = master.output()
            out["master_exit"] = rc
            out["servers_up"] = [s.p.poll() is None for s in servers]
            out["tracebacks"] = sum(p.output().count("Traceback") for p in [*servers, master])
            if rc == 0:
                out["summary"] = summary_of(master, name)
            else:
                out["error"] = (re.findall(r"\[ERROR\][^\n]*", log) or [log[-300:]])[-1]
        finally:
            client.close()
            for p in [*servers, *([master] if master else [])]:
                p.stop()
    return out


def outcome(name: str, r: dict, base: dict) -> str:
    up = "both servers up" if all(r["servers_up"]) else f"servers up: {r['servers_up']}"
    if name in ("foreign_heartbeats", "forged_checkpoint"):
        up = "server_1 up" if r["servers_up"][0] else "server_1 DOWN"
    tb = f"; {r['tracebacks']} traceback(s)" if r["tracebacks"] else ""
    if "summary" not in r:
        return f"run FAILED (master exit {r['master_exit']}: {r.get('error', '')[:160]}); {up}{tb}"
    s = r["summary"]
    layers = {l["index"]: l.get("dropped") for l in s["layers"]}
    parts = [f"run finished; {up}{tb}", f"layers dropped {layers}", f"master rejected {s['master']['rejected']}"]
    if s.get("recoveries"):
        x = s["recoveries"][0]
        parts.append(f"{x['server']} noticed lost after {x['silent_seconds']:.1f} s, its layer moved")
    if "answers" in r:
        parts.append("; ".join(f"{k} {v.split(' (heard')[0]}" for k, v in r["answers"].items()))
    if base is not None and name != "undisturbed":
        parts.append(_accuracy(s, base))
    parts.append(f"samples lost {_lost_samples(s)}")
    return "; ".join(parts)


def table(results: dict) -> str:
    base = results.get("undisturbed", {}).get("summary")
    rows = [[ATTACKS[n][1], r.get("sent", 0), outcome(n, r, base), machine_cell(r["machine"])]
            for n, r in results.items() if n in ATTACKS]
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
        results[name] = {**attacked_run(name), "machine": machine()}
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")   # kept attack by attack
    publish_table("attacks", table(results))


if __name__ == "__main__":
    main()
