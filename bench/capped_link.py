"""DFF activations vs PFF parameters between emulated hosts on capped links (WiFi between SBCs):
time to the same accuracy, bytes on the wire. Needs root (network namespaces, tc tbf).

    source scripts/env.sh && python bench/capped_link.py [--rate 20mbit] [--runs dff,all_layers,single_layer]
        [--servers 2] [--model config/models/mnist_default.yaml] [--train-set key=value ...]

Every node runs on its own host (launcher --emulate-hosts: master + 2 servers, one IP each, DDS
over UDP), each host's egress capped at --rate. With --servers 4 the four server hosts share
this machine's 2 cores (the simulator's time-shared check, bench/scaling.py). The default is a
10k-sample subset for 2 epochs: at 20 Mbit/s the full set would keep DFF on the wire for about
7 minutes per epoch.
All runs train the same tasks, so they reach the same accuracy; the time to it is the training
time (for PFF plus fetching the final weights). Writes bench/results/capped_link.{json,md,png}
and the README table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, RESULTS, SYSTEM_RECIPE, launched, machine, machine_cell, markdown_table, publish_table,  # noqa: E402
                    write_results)

from dff_ros.config.schema import load_model_config  # noqa: E402
from dff_ros.netns import NetnsUnavailable, VirtualHosts, paced_bytes_per_second, readers_per_sample  # noqa: E402
from dff_ros.config.files import parse_set  # noqa: E402

RUNS = ("dff", "single_layer", "all_layers")
DEFAULTS = {**SYSTEM_RECIPE, "train_subset": 10000, "epochs": 2, "splits": 2}


def table(runs: list[dict]) -> str:
    headers = ["run", "servers", "link cap per host", "accuracy % (goodness / softmax)", "time to accuracy s",
               "MB on the wire", "× less than DFF", "train samples × epochs", "machine"]
    dff = {(r["rate"], r.get("servers", 2)): r for r in runs if r["run"] == "dff"}
    rows = []
    for r in sorted(runs, key=lambda r: (r["rate"], r.get("servers", 2), RUNS.index(r["run"]))):
        base = dff.get((r["rate"], r.get("servers", 2)))
        less = (f"{base['wire_bytes'] / r['wire_bytes']:.1f}×" if base and r["run"] != "dff" else "–")
        rows.append([r["run"], str(r.get("servers", 2)), r["rate"],
                     " / ".join(f"{100 * v:.2f}" for v in r["accuracy"].values()),
                     f"{r['time_to_accuracy']:.0f}", f"{r['wire_bytes'] / 1e6:.1f}", less,
                     f"{r['train_subset']} × {r['epochs']}", machine_cell(r["machine"])])
    return markdown_table(headers, rows)


def plot(runs: list[dict], path: Path) -> None:
    from dff_ros.plots import _pyplot

    plt = _pyplot()
    runs = sorted(runs, key=lambda r: (r.get("servers", 2), RUNS.index(r["run"])))
    names = [f"{r['run']}\n{r['rate']}\n{r.get('servers', 2)} servers\n{r['epochs']} epochs" for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.bar(names, [r["time_to_accuracy"] for r in runs], color="tab:blue")
    a.set_ylabel("time to accuracy [s]")
    a.set_title("training time over capped links")
    b.bar(names, [r["wire_bytes"] / 1e6 for r in runs], color="tab:orange")
    b.set_ylabel("MB sent by all hosts")
    b.set_title("bytes on the wire")
    fig.suptitle(f"{runs[0]['model']}: DFF activations vs PFF parameters, every node on its own host")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--rate", default="20mbit")
    a.add_argument("--servers", type=int, default=2, help="emulated server hosts (all share this machine's cores)")
    a.add_argument("--runs", default=",".join(RUNS))
    a.add_argument("--model", default=str(REPO / "config" / "models" / "mnist_default.yaml"))
    a.add_argument("--train-set", action="append", default=[])
    a.add_argument("--no-readme", action="store_true")
    args = a.parse_args()
    try:
        VirtualHosts.check_available()
    except NetnsUnavailable as e:
        raise SystemExit(f"capped_link needs network namespaces: {e}")
    overrides = {**DEFAULTS, **parse_set(args.train_set)}
    cfg = load_model_config(args.model, overrides)
    rows = []
    for run in args.runs.split(","):
        if run not in RUNS:
            raise SystemExit(f"unknown run {run!r} (known: {', '.join(RUNS)})")
        res = launched(run, args.model, args.servers, overrides, extra=("--emulate-hosts", "--rate", args.rate))
        res["wire_bytes"] = sum(h["sent"] for h in res["host_traffic"].values())
        res["time_to_accuracy"] = res["train_seconds"] + res.get("fetch_seconds", 0.0)
        # the launcher's flow controller: per sample, which goes to this many other hosts
        res["readers_per_sample"] = readers_per_sample("activations" if run == "dff" else "parameters", args.servers)
        res["paced_bytes_per_second"] = round(paced_bytes_per_second(args.rate, res["readers_per_sample"]))
        key = f"{cfg.name}/{run}/{args.rate}" + (f"/{args.servers} servers" if args.servers != 2 else "")
        rows.append({"key": key, "run": run, "rate": args.rate, "servers": args.servers, "model": cfg.name,
                     "train_subset": cfg.train.train_subset, "epochs": cfg.train.epochs, "overrides": overrides,
                     **res, "machine": machine()})
        print(f"{run} @ {args.rate}: {res['accuracy']} in {res['time_to_accuracy']:.1f} s, "
              f"{res['wire_bytes'] / 1e6:.1f} MB on the wire", flush=True)
        write_results("capped_link", rows, key="key")
    runs = [r for r in json.loads((RESULTS / "capped_link.json").read_text())["runs"] if r["model"] == cfg.name]
    plot(runs, RESULTS / "capped_link.png")
    publish_table("capped_link", table(runs), readme=not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
