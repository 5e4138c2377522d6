"""Faults and bad input against real nodes; writes the README "Faults and bad input" report.

    source scripts/env.sh && python bench/faults.py [--model config/models/mnist_default.yaml]
        [--kill-after 5] [--train-set key=value ...]

1. Server killed: the MNIST pipeline (DFF, chapters) on 3 servers, once undisturbed and once
   with server_2 (layer 1) SIGKILLed after it has trained --kill-after chapters, while
   malformed and foreign chunks are published onto layer 0's input. The master notices the
   missing heartbeat, moves layer 1 to the spare server_3, which resumes from the last
   checkpoint. Reported: detection and takeover time, train time lost, accuracy against the
   undisturbed run, chunks dropped by kind, samples lost.
2. Master killed at the same point and started again: it takes the run over.
3. Bad service requests and path-traversal names against a live server.
4. Config errors: the master exits 2 with a message naming the file and the key.
5. A checkpoint writer killed mid-write (test/test_checkpoint.py).
6. PFF All-Layers on 2 nodes and a spare: node 1's server killed mid-chapter; the spare takes
   its share over from the parameter topics' history. Again with adaptive negatives (against
   an undisturbed adaptive run): the spare scores the labels node 1 had scored again.
7. The PFF master killed mid-run and started again: it follows the nodes' run to the end.
8. Step 1's server kill in the stream schedule (against an undisturbed stream run).
9. Server frozen: server_2 SIGSTOPped past the heartbeat timeout, then SIGCONTed: its layer
   moves to the spare; when it is heard again the master has it drop that layer.
`--only pff_killed` (etc.) runs some steps again and keeps the others' last results.
Writes bench/results/faults.{json,md} and the README block.
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from common import (REPO, RESULTS, SYSTEM_RECIPE, data_root, launched, machine, machine_cell, markdown_table,  # noqa: E402
                    publish_table)
from bad_inputs import TRAVERSAL_NAMES, chunk_cases, create_request, request_cases, spec_msg  # noqa: E402
from rosutil import Client, Proc, kill_when, start_server, wait_status  # noqa: E402

from dff_ros.config.schema import load_model_config  # noqa: E402
from dff_ros.msg import TrainingBatch  # noqa: E402
from dff_ros.nodes.common import DATA_QOS  # noqa: E402
from dff_ros.topics import layer_topics  # noqa: E402
from dff_ros.config.files import parse_set  # noqa: E402
from dff_ros.srv import CreateLayers, ListLayers, SaveWeights  # noqa: E402

PIPELINE = REPO / "config" / "mnist_pipeline.yaml"


def bench_env(offset: int) -> dict:
    domain = int(os.environ.get("DFF_BENCH_DOMAIN", "92")) + offset
    if not 0 <= domain <= 232:   # Fast DDS cannot compute ports past 232: the nodes would never meet
        raise SystemExit(f"DFF_BENCH_DOMAIN + {offset} = {domain}: ROS domain ids go up to 232")
    return {**os.environ, "ROS_DOMAIN_ID": str(domain),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "PYTHONUNBUFFERED": "1"}


def pipeline_args(model: str, tmp: str, overrides: dict) -> list[str]:
    args = ["--pipeline", str(PIPELINE), "--set", f"model={model}", "--set", f"data_root={data_root()}",
            "--set", f"weights_dir={tmp}/w", "--set", f"summary_dir={tmp}/runs", "--set", "restore_weights=false",
            "--set", "transport=activations", "--set", "server_threads=1", "--set", "servers=3", "--no-progress"]
    for k, v in overrides.items():
        args += ["--train-set", f"{k}={json.dumps(v)}"]
    return args


FROZEN_SECONDS = 15.0   # past the pipeline's heartbeat timeout (10 s): server_2 is declared lost


def disturb(client: Client, servers: list[Proc], runs: list[Proc], master, victim: str, ready):
    """SIGKILL server_2, or SIGSTOP it for FROZEN_SECONDS then SIGCONT (victim "frozen"), or
    SIGKILL the master (then started again, appended to ``runs``), 3 s after a status satisfies
    ``ready``; returns that status."""
    if victim == "server_2":
        return kill_when(client, servers[1], "server_2", ready, close=False, delay=3.0)
    if victim == "frozen":
        hit = wait_status(client, ready)
        time.sleep(3.0)
        servers[1].p.send_signal(signal.SIGSTOP)
        time.sleep(FROZEN_SECONDS)
        servers[1].p.send_signal(signal.SIGCONT)
        return hit
    hit = wait_status(client, ready)
    time.sleep(3.0)
    runs[0].p.kill()
    runs[0].p.wait()
    runs.append(master("master-restarted"))
    return hit


def summary_of(run: Proc, what: str) -> dict:
    rc = run.p.wait(3600)
    out = run.output()
    if rc:
        raise SystemExit(f"{what} failed ({rc}):\n{out[-3000:]}")
    return json.loads(Path(re.search(r"\[dff_master\]: summary: (\S+)", out).group(1)).read_text())


def disturbed_run(model: str, overrides: dict, kill_after: int, victim: str, inject: bool = True) -> dict:
    """Servers and master as separate processes. victim server_2: bad chunks on layer 0's
    input (``inject``), then server_2 is killed. victim master: the master is killed and
    started again."""
    config = load_model_config(model, overrides)
    env = bench_env({"server_2": 1, "master": 4, "frozen": 6}[victim])
    cases = chunk_cases(config.name, "faults") if inject and victim == "server_2" else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        servers = [start_server(env, tmp_path, name=f"server_{i}", weights=tmp_path / "w") for i in (1, 2, 3)]
        runs: list[Proc] = []
        client = Client(env)

        def master(name: str) -> Proc:
            return Proc(["-m", "dff_ros.nodes.master", *pipeline_args(model, tmp, overrides), "--run-id", "faults"],
                        env, tmp_path / f"{name}.log")

        try:
            for s in servers:
                s.wait_for("ready:", 60)
            runs.append(master("master"))
            # a few seconds into chapter kill_after + 1: layer 1's checkpoint is out, the chapter half done
            after = lambda m: m.layer == 1 and m.chapters_done >= kill_after  # noqa: E731
            if cases:
                pub = client.node.create_publisher(TrainingBatch, layer_topics(config.name, 0, 1)["train_input"],
                                                   DATA_QOS)
                wait_status(client, lambda m: m.server == "server_1" and m.phase == "training")
                for _, msg, _ in cases:
                    pub.publish(msg)
            killed = disturb(client, servers, runs, master, victim, after)
            print(f"{'froze' if victim == 'frozen' else 'killed'} {victim} after layer 1 reported "
                  f"{killed.chapters_done} chapter(s)", flush=True)
            summary = summary_of(runs[-1], "the disturbed run")
            if victim == "frozen":   # what the server that came back still hosts, and what it sent
                listing = client.call(ListLayers, "/server_2/list_layers", ListLayers.Request())
                after_run = {"server_2_hosts_after": [f"{i.model} layer {i.index}" for i in listing.layers],
                             "master_said": re.findall(r"server_2 was lost and came back[^\n]*", runs[-1].output())}
        finally:
            client.close()
            for p in [*servers, *runs]:
                p.stop()
    out = {"summary": summary, "killed_after_chapters": killed.chapters_done}
    if victim == "frozen":
        out.update(after_run, frozen_seconds=FROZEN_SECONDS)
    if cases:
        kinds: dict[str, int] = {}
        for _, _, kind in cases:
            kinds[kind] = kinds.get(kind, 0) + 1
        out.update(chunk_cases=[[what, kind] for what, _, kind in cases], injected=kinds)
    return out


def pff_disturbed_run(model: str, overrides: dict, kill_in_chapter: int, victim: str = "server_2") -> dict:
    """PFF All-Layers on server_1 and server_2, server_3 spare. victim server_2 (node 1): killed
    a few seconds into a chapter of its own; server_3 takes its share over. victim master:
    killed a few seconds into that chapter and started again."""
    env = bench_env(5 if victim == "server_2" else 6)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        servers = [start_server(env, tmp_path, name=f"server_{i}", weights=tmp_path / "w") for i in (1, 2, 3)]
        args = pipeline_args(model, tmp, overrides)
        args[args.index("transport=activations")] = "transport=parameters"
        args[args.index("servers=3")] = "servers=2"
        args += ["--set", "pff_variant=all_layers"]
        runs: list[Proc] = []
        client = Client(env)

        def master(name: str) -> Proc:
            return Proc(["-m", "dff_ros.nodes.master", *args, "--run-id", "faults-pff"], env, tmp_path / f"{name}.log")

        try:
            for s in servers:
                s.wait_for("ready:", 60)
            runs.append(master("master"))
            killed = disturb(client, servers, runs, master, victim,
                             lambda m: m.phase == "training" and m.chapter >= kill_in_chapter)
            print(f"killed {victim} in chapter {killed.chapter}", flush=True)
            summary = summary_of(runs[-1], "the disturbed PFF run")
        finally:
            client.close()
            for p in [*servers, *runs]:
                p.stop()
    return {"summary": summary, "killed_in_chapter": killed.chapter}


def service_checks() -> dict:
    """Bad create_layers requests and path-traversal model names against a live server."""
    env = bench_env(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        server = start_server(env, tmp_path, name="server_1")
        client = Client(env)
        try:
            server.wait_for("ready:", 60)
            refused = []
            for what, request, reason in request_cases():
                res = client.call(CreateLayers, "/server_1/create_layers", request)
                refused.append({"case": what, "refused": not res.success and reason in res.message,
                                "message": res.message})
            contained = []
            weights = (tmp_path / "weights").resolve()
            for name in TRAVERSAL_NAMES:
                client.call(CreateLayers, "/server_1/create_layers", create_request([spec_msg(model=name)], model=name))
                saved = client.call(SaveWeights, "/server_1/save_weights", SaveWeights.Request(model=name))
                path = Path(saved.paths[0]).resolve() if saved.success and saved.paths else None
                contained.append({"name": name, "path": str(path.relative_to(weights)) if path else None,
                                  "inside": path is not None and path.parent.parent == weights})
            alive = server.p.poll() is None
        finally:
            client.close()
            server.stop()
    return {"requests": refused, "names": contained, "server_alive": alive}


CONFIG_CASES = [  # (what, model YAML text or None, pipeline overrides, key the message must name)
    ("unknown train key", "name: m\nmodel: [[-1, FFDense, [10]]]\ntrain: {epochz: 3}\n", {}, "epochz"),
    ("negative layer width", "name: m\nmodel: [[-1, FFDense, [-5]]]\n", {}, "model[0]"),
    ("YAML syntax error", "name: m\nmodel: [[-1, FFDense, [10]]\n", {}, "line"),
    ("unknown pipeline key", None, {"servrs": 2}, "servrs"),
    ("unknown transport", None, {"transport": "pigeon"}, "transport"),
]


def config_checks() -> list[dict]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (what, model_text, pipe, key) in enumerate(CONFIG_CASES):
            model = Path(tmp) / f"model{i}.yaml"
            model.write_text(model_text or (REPO / "config" / "models" / "mnist_default.yaml").read_text())
            cmd = [sys.executable, "-m", "dff_ros.nodes.master", "--pipeline", str(PIPELINE), "--set",
                   f"model={model}", "--no-progress"] + [a for k, v in pipe.items() for a in ("--set", f"{k}={v}")]
            proc = subprocess.run(cmd, env=bench_env(3), cwd=REPO, capture_output=True, text=True, timeout=120)
            message = (proc.stderr.strip().splitlines() or [""])[-1]
            source = str(model) if model_text else str(PIPELINE)
            out.append({"case": what, "exit": proc.returncode, "message": message,
                        "named": proc.returncode == 2 and source in message and key in message})
    return out


def checkpoint_check() -> dict:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test/test_checkpoint.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    return {"passed": proc.returncode == 0, "output": proc.stdout.strip().splitlines()[-1]}


def _accuracy(run: dict, base: dict) -> str:
    acc = " / ".join(f"{100 * v:.2f}" for v in run["accuracy"].values())
    ref = " / ".join(f"{100 * v:.2f}" for v in base["accuracy"].values())
    delta = max(abs(run["accuracy"][c] - base["accuracy"][c]) for c in run["accuracy"]) * 100
    return f"accuracy {acc} vs {ref} undisturbed (Δ {delta:.2f} points)"


def _lost_samples(s: dict) -> int:
    return s["train_samples"] * s["config"]["train"]["epochs"] * len(s["layers"]) - sum(l["samples"] for l in s["layers"])


def _hosting(x: dict) -> str:
    """A DFF recovery's lost server and its layers."""
    return f"{x['server']} (layer {', '.join(map(str, x['layers']))})"


def _moved(x: dict) -> str:
    return (f"noticed after {x['silent_seconds']:.1f} s; moved to {', '.join(sorted(set(x['to'].values())))} "
            f"in {x['takeover_seconds']:.1f} s")


def table(r: dict) -> str:
    k, u, mk = r["killed"], r["undisturbed"], r["master_killed"]
    s, rec = k["summary"], k["summary"]["recoveries"]
    epochs, n, splits = s["config"]["train"]["epochs"], s["train_samples"], s["config"]["train"]["splits"]
    setting = f"MNIST {'full' if n == 60000 else f'{n} samples'} × {epochs} epochs, DFF, 3 servers"
    dropped = {l["index"]: l["dropped"] for l in s["layers"]}
    kinds = ", ".join(f"{kind} {c}" for kind, c in sorted(k["injected"].items()))
    rows = []
    for x in rec:
        rows.append([f"{x['server']} (layer {', '.join(map(str, x['layers']))}) SIGKILLed after "
                     f"{k['killed_after_chapters']} of {splits} chapters ({setting})", 1,
                     f"survived: noticed after {x['silent_seconds']:.1f} s of silence; moved to "
                     f"{', '.join(sorted(set(x['to'].values())))} in {x['takeover_seconds']:.1f} s, resumed from "
                     f"its checkpoint after {max(x['chapters_done'][str(i)] for i in x['layers'])} chapter(s), "
                     f"chapters resent from {x['resumed_from_chapter']}; training "
                     f"{s['train_seconds'] - u['train_seconds']:+.0f} s ({s['train_seconds']:.0f} vs "
                     f"{u['train_seconds']:.0f} s); {_accuracy(s, u)}; samples lost {_lost_samples(s)}"])
    ms = mk["summary"]
    res = ms["resumed"] or {}
    master_row = ([f"master SIGKILLed after layer 1 trained {mk['killed_after_chapters']} of {splits} chapters, "
                 f"then started again ({setting})", 1,
                 (f"survived: the new master took run `{res['run_id']}` over (head after {res['head_done']} "
                  f"chapters, resent from chapter {res['from_chapter']}); {_accuracy(ms, u)}; samples lost "
                  f"{_lost_samples(ms)}") if res else "NOT taken over: a new run started"])
    mnist = f"MNIST {'full' if n == 60000 else n} × {epochs} epochs"
    if "stream_killed" in r and "stream_undisturbed" in r:
        ss, su = r["stream_killed"]["summary"], r["stream_undisturbed"]
        for x in ss["recoveries"]:
            rows.append([f"{_hosting(x)} SIGKILLed after "
                         f"{r['stream_killed']['killed_after_chapters']} of {splits} chapters, stream schedule "
                         f"(one minibatch per message; {mnist}, DFF, 3 servers)", 1,
                         f"survived: {_moved(x)}, minibatches resent from chapter {x['resumed_from_chapter']}, each trained once per layer; training "
                         f"{ss['train_seconds']:.0f} vs {su['train_seconds']:.0f} s; {_accuracy(ss, su)} (stream); "
                         f"samples lost {_lost_samples(ss)}"])
    for key, base, what in (("pff_killed", u, "random negatives"),
                            ("pff_adaptive_killed", r.get("pff_adaptive_undisturbed"), "adaptive negatives")):
        if key not in r or base is None:
            continue
        ps, pk = r[key]["summary"], r[key]
        for x in ps["recoveries"]:
            rows.append([f"{x['server']} (PFF All-Layers node {x['node']}) SIGKILLed in chapter "
                         f"{pk['killed_in_chapter'] + 1} of {splits} ({mnist}, {what}, 2 nodes + 1 spare server)", 1,
                         f"survived: noticed after {x['silent_seconds']:.1f} s of silence; {x['to']} took node "
                         f"{x['node']}'s share in {x['takeover_seconds']:.1f} s, from chapter "
                         f"{x['resumed_from_chapter'] + 1} on the versions the parameter topics kept"
                         + ("; it scored the negatives node 1 had scored again" if "adaptive" in what else "")
                         + f"; trained in {ps['train_seconds']:.0f} s; {_accuracy(ps, base)}"
                         + (" (adaptive)" if "adaptive" in what else "")])
    if "pff_master_killed" in r:
        ps, pk = r["pff_master_killed"]["summary"], r["pff_master_killed"]
        res = ps.get("resumed") or {}
        rows.append([f"PFF master SIGKILLed in chapter {pk['killed_in_chapter'] + 1} of {splits}, then started again "
                     f"({mnist}, All-Layers, 2 nodes)", 1,
                     (f"survived: the new master took run `{res['run_id']}` over (the nodes had reported "
                      f"{res.get('chapters_done', res.get('head_done'))} whole chapter(s)) and followed it to the end; trained in "
                      f"{ps['train_seconds']:.0f} s counting the gap; {_accuracy(ps, u)}") if res
                     else "NOT taken over: a new run started"])
    if "frozen" in r:
        fs, fr = r["frozen"]["summary"], r["frozen"]
        for x in fs["recoveries"]:
            rows.append([f"{_hosting(x)} SIGSTOPped {fr['frozen_seconds']:.0f} s after "
                         f"{fr['killed_after_chapters']} of {splits} chapters, then SIGCONTed ({setting})", 1,
                         f"survived: {_moved(x)}; when it came back the master had it drop its layers ("
                         + ("said" if fr["master_said"] else "NOT said") + "; it hosts "
                         + (", ".join(fr["server_2_hosts_after"]) or "nothing") + " after the run); "
                         f"{_accuracy(fs, u)}; samples lost {_lost_samples(fs)}"])
    rows.append([f"malformed / foreign chunks on layer 0's input during that run: "
                 f"{'; '.join(c for c, _ in k['chunk_cases'])}", len(k["chunk_cases"]),
                 f"all dropped and counted (injected: {kinds}; layer 0 counted {dropped[0]}), "
                 f"master dropped {s['master']['dropped']}, training samples lost {_lost_samples(s)}"])
    rows.append(master_row)
    req = r["services"]["requests"]
    rows.append([f"bad create_layers requests: {'; '.join(c['case'] for c in req)}", len(req),
                 f"{sum(c['refused'] for c in req)} refused with a reason, server "
                 f"{'still running' if r['services']['server_alive'] else 'DIED'}"])
    names = r["services"]["names"]
    tried = ", ".join("`%s`" % c["name"] for c in names)
    became = ", ".join("`%s`" % c["path"] for c in names[:2])
    rows.append([f"model names that try to leave the weights folder: {tried}", len(names),
                 f"{sum(c['inside'] for c in names)} stayed inside it ({became}, …)"])
    cfg = r["config_errors"]
    rows.append([f"config errors: {'; '.join(c['case'] for c in cfg)}", len(cfg),
                 f"{sum(c['named'] for c in cfg)} exited 2 naming the file and the key"])
    rows.append(["checkpoint writer SIGKILLed mid-write (test/test_checkpoint.py)", 5,
                 "previous checkpoint intact, loads weights-only" if r["checkpoint"]["passed"] else "FAILED"])
    partial = "".join(f"; {machine_cell(x['machine'])}: `python bench/faults.py {' '.join(x['args'])}`"
                      for x in r.get("partial_runs", []))
    return (markdown_table(["what was tried", "times", "outcome"], rows)
            + f"\n{machine_cell(r['machine'])}; `python bench/faults.py"
            + (f" {' '.join(r['args'])}" if r["args"] else "") + "`" + partial + "\n")


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--model", default=str(REPO / "config" / "models" / "mnist_default.yaml"))
    a.add_argument("--kill-after", type=int, default=5, help="chapters layer 1 has trained when its server is killed")
    a.add_argument("--train-set", action="append", metavar="KEY=VALUE")
    a.add_argument("--only", help="comma-separated steps to run again (the rest keep their last results)")
    args = a.parse_args()
    overrides = {**SYSTEM_RECIPE, **parse_set(args.train_set)}
    result = {"machine": machine(), "model": args.model, "overrides": overrides,
              "args": sys.argv[1:], "kill_after": args.kill_after}
    pff_kill = 2 * (args.kill_after // 2) + 1   # a chapter of node 1 (0-based odd)
    steps = {
        "undisturbed": lambda: launched("dff", args.model, 3, overrides),
        "killed": lambda: disturbed_run(args.model, overrides, args.kill_after, "server_2"),
        "master_killed": lambda: disturbed_run(args.model, overrides, args.kill_after, "master"),
        "frozen": lambda: disturbed_run(args.model, overrides, args.kill_after, "frozen", inject=False),
        "pff_killed": lambda: pff_disturbed_run(args.model, overrides, pff_kill),
        "pff_adaptive_undisturbed": lambda: launched("all_layers", args.model, 2, {**overrides, "negatives": "adaptive"}),
        "pff_adaptive_killed": lambda: pff_disturbed_run(args.model, {**overrides, "negatives": "adaptive"}, pff_kill),
        "pff_master_killed": lambda: pff_disturbed_run(args.model, overrides, pff_kill, victim="master"),
        "stream_undisturbed": lambda: launched("dff", args.model, 3, {**overrides, "schedule": "stream"}),
        "stream_killed": lambda: disturbed_run(args.model, {**overrides, "schedule": "stream"}, args.kill_after,
                                               "server_2", inject=False),
        "services": service_checks,
        "config_errors": config_checks,
        "checkpoint": checkpoint_check,
    }
    only = args.only.split(",") if args.only else list(steps)
    if set(only) - set(steps):
        raise SystemExit(f"--only: unknown step(s) {sorted(set(only) - set(steps))} (steps: {', '.join(steps)})")
    if args.only:   # the other steps' results stay as last measured
        old = json.loads((RESULTS / "faults.json").read_text())
        result = {**old, "partial_runs": [*old.get("partial_runs", []),
                                          {"args": sys.argv[1:], "machine": result["machine"]}]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(only, 1):
        print(f"{i}/{len(only)} {name}", flush=True)
        result[name] = steps[name]()
        # kept step by step: a later step that fails does not take the finished ones with it
        (RESULTS / "faults.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    publish_table("faults", table(result))


if __name__ == "__main__":
    main()
