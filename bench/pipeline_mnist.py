"""DFF pipeline vs single-process reference on full MNIST: accuracy parity, wall time and
bytes moved, for the same model config and seed.

    source scripts/env.sh && python bench/pipeline_mnist.py [--pipeline config/mnist_pipeline.yaml]
        [--model config/models/mnist_adaptive.yaml] [--servers 2] [--train-set key=value ...]
        [--skip-reference]

Runs the reference trainer (threads = servers x server_threads, the same cores), then the
launcher (master + N servers as processes, own ROS domain), and writes
bench/results/pipeline_mnist.{json,md} and the README table.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, data_root, machine, machine_cell, markdown_table, publish_table, write_results  # noqa: E402

from dff_ros.config.pipeline import load_pipeline_config  # noqa: E402
from dff_ros.config.schema import load_model_config  # noqa: E402
from dff_ros.data import load_dataset  # noqa: E402
from dff_ros.ff.trainer import ReferenceTrainer  # noqa: E402
from dff_ros.config.files import parse_set  # noqa: E402


def table(runs):
    headers = ["model", "negatives", "schedule", "servers", "epochs", "reference % (goodness / softmax)",
               "pipeline %", "Δ points", "reference s", "pipeline s", "ratio", "master scoring s", "MB moved", "machine"]
    pct = lambda a: " / ".join(f"{100 * a[k]:.2f}" for k in ("goodness", "softmax") if k in a)  # noqa: E731
    rows = []
    for r in runs:
        ref, got = r["reference"]["accuracy"], r["pipeline"]["accuracy"]
        negatives = r.get("negatives", "random")
        how = ([f"lag {r['negatives_lag']}"] if r.get("negatives_lag") else []) + \
            (["bf16 scoring"] if r.get("negatives_dtype") == "bfloat16" else [])
        if how:
            negatives += f" ({', '.join(how)})"
        rows.append([r["model"], negatives, r["schedule"], r["servers"], r["epochs"], pct(ref), pct(got),
                     f"{max(abs(ref[k] - got[k]) for k in got) * 100:.2f}", f"{r['reference']['train_seconds']:.0f}",
                     f"{r['pipeline']['train_seconds']:.0f}", f"{r['time_ratio']:.2f}",
                     f"{r['pipeline'].get('scoring_seconds', 0):.0f}", f"{r['mb_moved']:.0f}",
                     machine_cell(r["machine"])])
    return markdown_table(headers, rows)


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--pipeline", default=str(REPO / "config" / "mnist_pipeline.yaml"))
    a.add_argument("--model", default="", help="model YAML (default: the pipeline's)")
    a.add_argument("--servers", type=int, default=2)
    a.add_argument("--train-set", action="append", default=[])
    a.add_argument("--skip-reference", action="store_true", help="reuse the reference numbers already recorded")
    a.add_argument("--no-readme", action="store_true")
    args = a.parse_args()
    model = {"model": str(Path(args.model).resolve())} if args.model else {}
    pipe = load_pipeline_config(args.pipeline, {"servers": args.servers, **model})
    cores = args.servers * pipe.server_threads
    cfg = load_model_config(pipe.model, {**parse_set(args.train_set), "threads": cores})
    key = f"{cfg.name}/{cfg.train.negatives}/{cfg.train.schedule}/{args.servers}"
    old = {r["key"]: r for r in json.loads((RESULTS / "pipeline_mnist.json").read_text())["runs"]} \
        if (RESULTS / "pipeline_mnist.json").exists() else {}
    if args.skip_reference and key in old:
        ref = old[key]["reference"]
    else:
        print(f"reference: {cfg.name}, {cores} thread(s)", flush=True)
        r = ReferenceTrainer(cfg, load_dataset("MNIST", data_root(), allow_download=False)).fit()
        ref = {"accuracy": r["accuracy"], "train_seconds": r["train_seconds"], "threads": r["threads"]}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ROS_DOMAIN_ID": os.environ.get("DFF_BENCH_DOMAIN", "91"),
               "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
        cmd = [sys.executable, "-m", "dff_ros.launcher", "--pipeline", args.pipeline, "--servers",
               str(args.servers), "--set", f"data_root={data_root()}", "--set", f"weights_dir={tmp}/w",
               "--set", f"summary_dir={tmp}/runs", "--set", "restore_weights=false",
               *(["--set", f"model={Path(args.model).resolve()}"] if args.model else [])]
        for item in args.train_set:
            cmd += ["--train-set", item]
        print("pipeline:", " ".join(cmd[2:]), flush=True)
        proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sys.stdout.write(proc.stdout[-3000:])
        if proc.returncode:
            return proc.returncode
        summary = json.loads(Path(re.search(r"\[dff_master\]: summary: (\S+)", proc.stdout).group(1)).read_text())
    moved = summary["master"]["bytes_sent"] + sum(l["bytes_out"] or 0 for l in summary["layers"])
    row = {"key": key, "model": cfg.name, "schedule": cfg.train.schedule, "servers": args.servers,
           "epochs": cfg.train.epochs, "server_threads": pipe.server_threads, "reference": ref,
           "negatives": cfg.train.negatives, "negatives_lag": cfg.train.negatives_lag,
           "negatives_dtype": cfg.train.negatives_dtype,
           "pipeline": {k: summary.get(k) for k in ("accuracy", "train_seconds", "eval_seconds", "scoring_seconds",
                                                    "layers", "master")},
           "time_ratio": round(summary["train_seconds"] / ref["train_seconds"], 3), "mb_moved": moved / 1e6,
           "machine": machine()}
    runs = write_results("pipeline_mnist", [row], key="key")
    text = table(runs)
    publish_table("pipeline_mnist", text, readme=not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
