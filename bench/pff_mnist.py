"""PFF parameter passing vs sequential vs DFF activations on full MNIST: time, accuracy,
bytes per epoch and node utilisation, same model config and seed.

    source scripts/env.sh && python bench/pff_mnist.py [--runs sequential-1t,all_layers,...]
        [--model config/models/mnist_default.yaml] [--train-set key=value ...]

Runs (each a row; rows already recorded for other runs are kept):
  sequential-1t, sequential-2t  the single-process reference trainer (N=1) with 1 and 2 torch threads
  sequential-1t-pair            two sequential-1t trainers at once, as separate processes: no
                                communication and no waiting, so its speed-up is the most 2 processes
                                can get on this machine (the ceiling for the distributed rows)
  single_layer, all_layers, federated   the launcher, transport: parameters, 2 servers x 1 thread
  dff                                   the launcher, transport: activations, 2 servers x 1 thread
The rows that decide the speed target (``--repeated``, default sequential-1t and all_layers) run
``--repeats`` times, alternating round by round, and their row holds the median time: this VM's
speed drifts by up to a third from hour to hour, so the two are timed under the same conditions and
each round's ratio is recorded too.
Writes bench/results/pff_mnist.{json,md,png}, a timeline PNG per PFF run, and the README table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, SYSTEM_RECIPE, data_root, launched, machine, machine_cell, markdown_table, publish_table, write_results  # noqa: E402

from dff_ros.config.schema import load_model_config  # noqa: E402
from dff_ros.data import load_dataset  # noqa: E402
from dff_ros.ff.trainer import ReferenceTrainer  # noqa: E402
from dff_ros.config.files import parse_set  # noqa: E402

RUNS = ("sequential-1t", "sequential-2t", "sequential-1t-pair", "single_layer", "all_layers", "federated", "dff")


def sequential(cfg, threads: int) -> dict:
    cfg = load_model_config(cfg.source, {**_overrides, "threads": threads})
    r = ReferenceTrainer(cfg, load_dataset("MNIST", data_root(), allow_download=False)).fit()
    return {"accuracy": r["accuracy"], "train_seconds": r["train_seconds"], "bytes_per_epoch": 0,
            "nodes": 1, "threads": threads, "utilisation": None}


def sequential_pair(model_path: str) -> dict:
    """Two 1-thread reference trainers at once; the row's time is the slower one's, counted as
    if the pair had shared one run's work (the same total work as a 2-node run)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "dff_ros", "train", model_path, "--threads", "1", "--no-progress",
               "--data-root", str(data_root()), "--no-download"]
        for k, v in _overrides.items():
            cmd += ["--set", f"{k}={json.dumps(v)}"]
        procs = [subprocess.Popen(cmd + ["--out", f"{tmp}/{i}"], cwd=REPO, stdout=subprocess.DEVNULL)
                 for i in range(2)]
        if any(p.wait() for p in procs):
            raise SystemExit("sequential-1t-pair: a trainer failed")
        results = [json.loads(Path(f"{tmp}/{i}/summary.json").read_text()) for i in range(2)]
    slower = max(r["train_seconds"] for r in results)
    # Each process did a whole run's work, so the pair did two runs' work in `slower` seconds:
    # one run's work at that rate takes slower / 2.
    return {"accuracy": results[0]["accuracy"], "train_seconds": slower / 2, "bytes_per_epoch": 0,
            "nodes": 2, "threads": 1, "utilisation": None,
            "each_train_seconds": [r["train_seconds"] for r in results]}


def merge_repeats(results: list[dict]) -> dict:
    """One row from repeated runs of the same thing: the run with the median time (its details:
    accuracy, bytes, machine; the timeline PNG is the last run's), its time replaced by the
    median, and every run's time kept."""
    times = [r["train_seconds"] for r in results]
    row = dict(sorted(results, key=lambda r: r["train_seconds"])[(len(results) - 1) // 2])
    row.update(train_seconds=round(median(times), 2), round_seconds=times)
    return row


def seconds_cell(r: dict) -> str:
    times = r.get("round_seconds") or []
    if len(times) < 2:
        return f"{r['train_seconds']:.0f}"
    return f"{r['train_seconds']:.0f} ({min(times):.0f}–{max(times):.0f}, median of {len(times)})"


def speed_up(base: dict, r: dict) -> float:
    """``base``'s time over ``r``'s. Rows timed in the same rounds: the median of the rounds'
    ratios (each round's two runs ran back to back, under the same machine conditions)."""
    a, b = base.get("round_seconds") or [], r.get("round_seconds") or []
    if base is not r and len(a) > 1 and len(a) == len(b):
        return median([x / y for x, y in zip(a, b)])
    return base["train_seconds"] / r["train_seconds"]


def table(runs: list[dict]) -> str:
    by = {r["run"]: r for r in runs}
    base1, base2 = by.get("sequential-1t"), by.get("sequential-2t")
    seq = base2 or base1
    dff = by.get("dff")
    headers = ["run", "nodes × threads", "accuracy % (goodness / softmax)", "Δ vs sequential", "train s",
               "speed-up vs N=1 (1 thread / 2 threads)", "MB per epoch", "× fewer bytes than DFF", "utilisation",
               "machine"]
    rows = []
    for r in sorted(runs, key=lambda r: RUNS.index(r["run"])):
        acc = r["accuracy"]
        d = max(abs(acc[k] - seq["accuracy"][k]) for k in acc) * 100 if seq else float("nan")
        sp = " / ".join(f"{speed_up(b, r):.2f}×" if b else "–" for b in (base1, base2))
        fewer = (f"{dff['bytes_per_epoch'] / r['bytes_per_epoch']:.0f}×" if dff and r["bytes_per_epoch"]
                 and r["run"] != "dff" else "–")
        rows.append([r["run"], f"{r['nodes']} × {r['threads']}",
                     " / ".join(f"{100 * acc[k]:.2f}" for k in ("goodness", "softmax") if k in acc), f"{d:.2f}",
                     seconds_cell(r), sp, f"{r['bytes_per_epoch'] / 1e6:.1f}", fewer,
                     f"{r['utilisation']:.0%}" if r.get("utilisation") is not None else "–", machine_cell(r["machine"])])
    return markdown_table(headers, rows)


def plot(runs: list[dict], path: Path) -> None:
    from dff_ros.plots import _pyplot

    plt = _pyplot()
    runs = sorted(runs, key=lambda r: RUNS.index(r["run"]))
    names = [r["run"] for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.bar(names, [r["train_seconds"] for r in runs], color="tab:blue")
    a.set_ylabel("training time [s]")
    a.set_title("time (same config, 2 cores)")
    moved = [r for r in runs if r["bytes_per_epoch"]]   # sequential runs send nothing
    b.bar([r["run"] for r in moved], [r["bytes_per_epoch"] / 1e6 for r in moved], color="tab:orange")
    b.set_yscale("log")
    b.set_ylabel("MB published per epoch (log)")
    b.set_title("network traffic (distributed runs)")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"{runs[0]['model']}: sequential vs PFF vs DFF")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_overrides: dict = {}


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--runs", default=",".join(r for r in RUNS if r != "federated"))
    a.add_argument("--model", default=str(REPO / "config" / "models" / "mnist_default.yaml"))
    a.add_argument("--servers", type=int, default=2)
    a.add_argument("--train-set", action="append", default=[])
    a.add_argument("--repeats", type=int, default=3, help="rounds of the --repeated runs (rows: the median)")
    a.add_argument("--repeated", default="sequential-1t,all_layers")
    a.add_argument("--no-readme", action="store_true")
    a.add_argument("--report-only", action="store_true", help="rewrite the table and plot from the recorded JSON")
    args = a.parse_args()
    _overrides.update({**SYSTEM_RECIPE, **parse_set(args.train_set)})
    cfg = load_model_config(args.model, _overrides)
    names = [] if args.report_only else args.runs.split(",")
    for run in names:
        if run not in RUNS:
            raise SystemExit(f"unknown run {run!r} (known: {', '.join(RUNS)})")
    repeated = [r for r in args.repeated.split(",") if r in names] if args.repeats > 1 else []
    once = [r for r in names if r not in repeated]
    results: dict[str, list[dict]] = {}
    for round_ in range(max(args.repeats, 1)):
        for run in (once if round_ == 0 else []) + repeated:
            res = (sequential_pair(args.model) if run == "sequential-1t-pair"
                   else sequential(cfg, int(run[-2])) if run.startswith("sequential")
                   else launched(run, args.model, args.servers, _overrides, timeline=f"pff_mnist_{run}_timeline.png"))
            results.setdefault(run, []).append({**res, "machine": machine()})
            print(f"{run} (round {round_ + 1}): {res['accuracy']} in {res['train_seconds']} s", flush=True)
            rows = [{"key": f"{cfg.name}/{r}", "run": r, "model": cfg.name, "epochs": cfg.train.epochs,
                     "splits": cfg.train.splits, "overrides": dict(_overrides), **merge_repeats(rs)}
                    for r, rs in results.items()]
            write_results("pff_mnist", rows, key="key")   # keep what finished if a later run fails
    if len(repeated) == 2:
        first, second = (merge_repeats(results[r]) for r in repeated)
        print(f"{repeated[0]} / {repeated[1]}: rounds {first['round_seconds']} s / {second['round_seconds']} s, "
              f"speed-up {speed_up(first, second):.2f}x (median of the rounds' ratios)", flush=True)
    runs = [r for r in json.loads((RESULTS / "pff_mnist.json").read_text())["runs"] if r["model"] == cfg.name]
    text = table(runs)
    plot(runs, RESULTS / "pff_mnist.png")
    publish_table("pff_mnist", text, readme=not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
