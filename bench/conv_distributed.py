"""One image config three ways: the single-process reference trainer, the DFF activation pipeline
and PFF All-Layers on 2 servers (processes over DDS on this host): accuracy, training time and
bytes moved per epoch, side by side in one run.

    source scripts/env.sh && python bench/conv_distributed.py [config/models/cifar10_light.yaml]
        [--runs reference,dff,all_layers] [--train-set key=value ...]

The reference gets 2 torch threads, each server 1 (the same two cores). Writes
bench/results/conv_distributed.{json,md} and the README table; rows are keyed by config and run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, data_root, launched, machine, machine_cell, markdown_table, publish_table,  # noqa: E402
                    write_results)

from dff_ros.config.files import parse_set  # noqa: E402
from dff_ros.config.schema import load_model_config  # noqa: E402
from dff_ros.data import load_dataset  # noqa: E402
from dff_ros.ff.trainer import ReferenceTrainer  # noqa: E402

RUNS = ("reference", "dff", "all_layers")
WHAT = {"reference": "reference trainer, 1 process x 2 threads", "dff": "DFF pipeline (activations), 2 servers x 1 thread",
        "all_layers": "PFF All-Layers (parameters), 2 servers x 1 thread"}


def table(runs: list[dict]) -> str:
    headers = ["config", "run", "epochs (splits)", "test accuracy %", "train s", "× reference time", "MB per epoch",
               "utilisation", "machine"]
    ref = {r["config_file"]: r for r in runs if r["run"] == "reference"}
    rows = []
    for r in runs:
        base = ref.get(r["config_file"])
        ratio = f"{r['train_seconds'] / base['train_seconds']:.2f}" if base and base is not r else "–"
        rows.append([f"`{r['config_file']}`", WHAT[r["run"]], f"{r['epochs']} ({r['splits']})",
                     ", ".join(f"{k} {100 * v:.2f}" for k, v in sorted(r["accuracy"].items())),
                     f"{r['train_seconds']:.0f}", ratio, f"{r['bytes_per_epoch'] / 1e6:,.1f}" if r["bytes_per_epoch"] else "–",
                     "–" if r.get("utilisation") is None else f"{100 * r['utilisation']:.0f} %", machine_cell(r["machine"])])
    return markdown_table(headers, rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default="config/models/cifar10_light.yaml")
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-readme", action="store_true")
    args = p.parse_args()
    overrides = parse_set(args.train_set)
    runs = args.runs.split(",")
    if unknown := set(runs) - set(RUNS):
        p.error(f"unknown runs {sorted(unknown)} (known: {', '.join(RUNS)})")
    cfg = load_model_config(REPO / args.config, {**overrides, "threads": 2}, data_root=str(data_root()))
    rows = []
    for run in runs:
        print(f"--- {run}: {WHAT[run]}", flush=True)
        if run == "reference":
            data = load_dataset(cfg.dataset, data_root(), allow_download=False)
            t0 = time.perf_counter()
            r = ReferenceTrainer(cfg, data).fit()
            got = {"accuracy": r["accuracy"], "train_seconds": r["train_seconds"], "bytes_per_epoch": 0,
                   "utilisation": None, "wall_seconds": round(time.perf_counter() - t0, 1)}
        else:
            got = launched(run, str(REPO / args.config), 2, overrides)
        rows.append({"key": f"{args.config}/{run}", "config_file": args.config, "run": run, "model": cfg.name,
                     "epochs": cfg.train.epochs, "splits": cfg.train.splits, "overrides": overrides,
                     **got, "machine": machine()})
        print(f"{run}: {got['accuracy']} in {got['train_seconds']:.0f} s, {got['bytes_per_epoch'] / 1e6:.1f} MB/epoch",
              flush=True)
        all_runs = write_results("conv_distributed", rows, "key")
    publish_table("conv_distributed", table(all_runs), readme=not args.no_readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
