"""The reference trainer's speed with 1 and 2 torch threads, alone and beside busy processes.

A robot's cores are shared (its other nodes, the other FF servers). torch's OpenMP workers spin
between parallel regions by default, and a spinning worker waiting for a descheduled one
stalls the whole product. dff_ros starts its processes with OMP_WAIT_POLICY=PASSIVE
(dff_ros/numerics.py). This bench times the same short training with:
  - 1 thread;
  - 2 threads, libgomp's own default (spin ~300k rounds, then sleep);
  - 2 threads, a short spin (GOMP_SPINCOUNT=10000);
  - 2 threads, OMP_WAIT_POLICY=PASSIVE (sleep at once);
beside 0, 1 and 2 processes that keep a core busy, in alternating rounds (the table keeps the
median and the range). Every run trains the same updates: the accuracy column shows it.
Writes bench/results/threads_under_load.{json,md,png} and the README table.

    source scripts/env.sh && python bench/threads_under_load.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CASES = {  # label: (threads, OpenMP variables; none: libgomp's default)
    "1 thread": (1, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "2 threads, libgomp default (spin 300k)": (2, {}),
    "2 threads, GOMP_SPINCOUNT=10000": (2, {"GOMP_SPINCOUNT": "10000"}),
    "2 threads, OMP_WAIT_POLICY=PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
}
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
MODEL = "config/models/mnist_default.yaml"
TRAIN = {"train_subset": 10000, "epochs": 2, "splits": 2, "test_subset": 2000}


def role_train(threads: int) -> None:
    """One training run; torch loads before dff_ros so the environment given is what libgomp reads."""
    omp = {k: os.environ[k] for k in OMP_VARS if k in os.environ}
    import torch  # noqa: F401

    from common import REPO, SYSTEM_RECIPE, data_root
    from dff_ros.config import load_model_config
    from dff_ros.data import load_dataset
    from dff_ros.ff.trainer import ReferenceTrainer
    from dff_ros.numerics import gemm_is_thread_count_independent

    cfg = load_model_config(os.path.join(REPO, MODEL), {**SYSTEM_RECIPE, **TRAIN, "threads": threads})
    data = load_dataset("MNIST", data_root(), allow_download=False)
    result = ReferenceTrainer(cfg, data, progress=False).fit()
    print(json.dumps({"train_seconds": result["train_seconds"], "accuracy": result["accuracy"],
                      "strict_gemm": gemm_is_thread_count_independent(),
                      "openmp": omp}), flush=True)


def one_run(threads: int, omp: dict, load: int) -> dict:
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    try:
        env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
        env.update(MKL_CBWR="AUTO,STRICT", **omp)
        out = subprocess.run([sys.executable, __file__, "--role", "train", "--threads", str(threads)],
                             env=env, capture_output=True, text=True, timeout=1800)
        if out.returncode:
            raise SystemExit(f"training run failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for p in busy:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--role", default="bench")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="rebuild the table from the JSON")
    args = ap.parse_args()
    if args.role == "train":
        return role_train(args.threads)
    from common import RESULTS, machine, machine_cell, markdown_table, publish_table, write_results
    if not args.report_only:
        m = machine()
        times: dict[tuple[str, int], list[dict]] = {}
        for r in range(args.rounds):
            for load in (0, 1, 2):
                for label, (threads, omp) in CASES.items():
                    res = one_run(threads, omp, load)
                    times.setdefault((label, load), []).append(res)
                    print(f"round {r + 1}, {load} busy, {label}: {res['train_seconds']:.1f} s "
                          f"{res['accuracy']}", flush=True)
        rows = []
        for (label, load), runs in times.items():
            secs = [x["train_seconds"] for x in runs]
            rows.append({"case": f"{label} | {load} busy", "label": label, "busy_processes": load,
                         "threads": CASES[label][0], "openmp": runs[0]["openmp"],
                         "train_seconds": statistics.median(secs), "runs": secs, "accuracy": runs[0]["accuracy"],
                         "same_accuracy_every_run": all(x["accuracy"] == runs[0]["accuracy"] for x in runs),
                         "strict_gemm": runs[0]["strict_gemm"], "machine": m, "settings": {"model": MODEL, **TRAIN}})
        write_results("threads_under_load", rows, key="case")
    runs = json.loads((RESULTS / "threads_under_load.json").read_text())["runs"]
    base = {r["busy_processes"]: r["train_seconds"] for r in runs if r["label"] == "1 thread"}
    table = markdown_table(
        ["case", "busy processes beside it", "training s (median)", "range", "vs 1 thread", "accuracy % (goodness / softmax)",
         "machine"],
        [[r["label"], r["busy_processes"], f"{r['train_seconds']:.1f}", f"{min(r['runs']):.1f}–{max(r['runs']):.1f} "
          f"({len(r['runs'])} runs)", f"{base[r['busy_processes']] / r['train_seconds']:.2f}×",
          " / ".join(f"{100 * v:.2f}" for v in r["accuracy"].values()), machine_cell(r["machine"])]
         for r in sorted(runs, key=lambda r: (r["busy_processes"], list(CASES).index(r["label"])))])
    s = runs[0]["settings"]
    table += (f"\n`{s['model']}`, {s['train_subset']} MNIST training images × {s['epochs']} epochs, "
              f"{s['test_subset']} test images; MKL strict CNR on in every run.\n")
    publish_table("threads_under_load", table)
    plot(runs, RESULTS)


def plot(runs: list[dict], results) -> None:
    """Median training time per case, grouped by the busy processes beside it (range as error bars)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels, width = list(CASES), 0.8 / len(CASES)
    for i, label in enumerate(labels):
        rows = sorted((r for r in runs if r["label"] == label), key=lambda r: r["busy_processes"])
        xs = [r["busy_processes"] + (i - (len(labels) - 1) / 2) * width for r in rows]
        med = [r["train_seconds"] for r in rows]
        err = [[m - min(r["runs"]) for m, r in zip(med, rows)], [max(r["runs"]) - m for m, r in zip(med, rows)]]
        ax.bar(xs, med, width, yerr=err, capsize=3, label=label)
    ax.set_xticks([0, 1, 2], ["alone", "1 busy process beside it", "2 busy processes beside it"])
    ax.set_ylabel("training time, s (median, range)")
    m = runs[0]["machine"]
    ax.set_title(f"reference trainer on a shared CPU ({m['cores']}-core {m['cpu']}, {m['date'][:10]})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results / "threads_under_load.png", dpi=120)
    print(f"plot: {results / 'threads_under_load.png'}")


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # common.py imports dff_ros: import it late

if __name__ == "__main__":
    main()
