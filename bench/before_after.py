"""The same runs on this checkout and on another one (the code before a restructuring), taken in
turn round by round on the same machine, with the ratio of each round: did the change cost speed
or accuracy?

    source scripts/env.sh && python bench/before_after.py --base-tree DIR [--base-label REV]
        [--rounds 3] [--train-set key=value ...] [--transport-mb 1500]

DIR is a checkout that has been set up (its install/ built), e.g. for revision REV:
    git worktree add /tmp/base REV && ln -s "$PWD/.venv" /tmp/base/.venv && (cd /tmp/base && bash scripts/setup.sh)
Each tree runs its own code with its own scripts/env.sh. Measured per round and tree:
  dff        the launcher, transport: activations, 2 servers x 1 thread: train seconds, accuracy
  pff        the launcher, transport: parameters, All-Layers, 2 servers: train seconds, accuracy
  transport  bench/transport_throughput.py's 1000x2000 float32 stream between two processes: MB/s
Writes bench/results/before_after.{json,md} and the README table.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, data_root, machine, machine_cell, markdown_table, publish_table  # noqa: E402

from dff_ros.config.files import parse_set  # noqa: E402

DEFAULT_TRAIN = {"epochs": 6, "splits": 6, "train_subset": 30000}


def in_tree(tree: Path, command: str, domain: int) -> subprocess.CompletedProcess:
    """``command`` in ``tree`` with that tree's environment (its code, its build)."""
    script = f". scripts/env.sh && export ROS_DOMAIN_ID={domain} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST && {command}"
    return subprocess.run(["bash", "-c", script], cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def launched(tree: Path, transport: str, train: dict, domain: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        sets = [f"model={tree}/config/models/mnist_default.yaml", f"data_root={data_root()}", f"weights_dir={tmp}/w",
                f"summary_dir={tmp}/runs", "restore_weights=false", f"transport={transport}", "server_threads=1",
                "pff_variant=all_layers"]
        cmd = ("python -m dff_ros.launcher --pipeline config/mnist_pipeline.yaml --servers 2 --no-progress "
               + " ".join(f"--set {s}" for s in sets) + " "
               + " ".join(f"--train-set {k}={json.dumps(v)}" for k, v in train.items()))
        proc = in_tree(tree, cmd, domain)
        found = re.search(r"\[dff_master\]: summary: (\S+)", proc.stdout)
        if proc.returncode or not found:
            raise SystemExit(f"{tree}: {transport} run failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        summary = json.loads(Path(found.group(1)).read_text())
        return {"train_seconds": summary["train_seconds"], "accuracy": summary["accuracy"]}


def transport_rate(tree: Path, mb: float, domain: int) -> dict:
    """One 1000x2000 float32 stream between two processes, as bench/transport_throughput.py runs it."""
    messages = max(50, int(mb * 1e6 / (1000 * 2000 * 4)))
    common = f"python bench/transport_throughput.py --rows 1000 --width 2000 --messages {messages} --window 8"
    cmd = f"({common} --role sub > sub.out &) ; sleep 0.5; {common} --role pub > /dev/null; sleep 1; cat sub.out; rm -f sub.out"
    with tempfile.TemporaryDirectory() as tmp:
        proc = in_tree(tree, cmd.replace("sub.out", f"{tmp}/sub.out"), domain)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"{tree}: transport stream failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    s = json.loads(lines[-1])
    return {"MB_per_s": round(s["bytes"] / 1e6 / s["seconds"], 1)}


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--base-tree", required=True, type=Path)
    a.add_argument("--base-label", default="", help="what the base tree is (default: its git revision)")
    a.add_argument("--head-label", default="", help="what this tree is (default: its git revision)")
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--train-set", action="append", default=[])
    a.add_argument("--transport-mb", type=float, default=1500)
    a.add_argument("--only", default="dff,pff,transport")
    a.add_argument("--no-readme", action="store_true")
    args = a.parse_args()
    base = args.base_tree.resolve()
    if not (base / "install").is_dir() or not (base / "scripts" / "env.sh").is_file():
        raise SystemExit(f"{base}: not a set-up checkout (no install/); see the usage above")
    rev = lambda tree: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, text=True,  # noqa: E731
                                      stdout=subprocess.PIPE).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, text=True,
                           stdout=subprocess.PIPE).stdout.strip()
    labels = {"base": args.base_label or rev(base), "head": args.head_label or rev(REPO) + (" + changes" if dirty else "")}
    train = {**DEFAULT_TRAIN, **parse_set(args.train_set)}
    trees = {"base": base, "head": REPO}
    kinds = [k for k in args.only.split(",") if k]
    got: dict = {k: {"base": [], "head": []} for k in kinds}
    for r in range(args.rounds):
        order = ["base", "head"] if r % 2 == 0 else ["head", "base"]   # neither always goes first
        for kind in kinds:
            for side in order:
                domain = 93 if side == "base" else 94
                res = (transport_rate(trees[side], args.transport_mb, domain) if kind == "transport"
                       else launched(trees[side], "activations" if kind == "dff" else "parameters", train, domain))
                got[kind][side].append(res)
                print(f"round {r + 1} {kind} {side} ({labels[side]}): {res}", flush=True)
    rows = []
    for kind in kinds:
        figure = "MB_per_s" if kind == "transport" else "train_seconds"
        b, h = [x[figure] for x in got[kind]["base"]], [x[figure] for x in got[kind]["head"]]
        ratios = [round(y / x, 3) for x, y in zip(b, h)]
        row = {"kind": kind, "figure": figure, "base": b, "head": h, "round_ratios": ratios,
               "median_ratio": round(median(ratios), 3), "base_median": median(b), "head_median": median(h)}
        if kind != "transport":
            row["accuracy"] = {"base": got[kind]["base"][0]["accuracy"], "head": got[kind]["head"][0]["accuracy"],
                               "same_in_every_round": all(x["accuracy"] == got[kind]["base"][0]["accuracy"]
                                                          for x in got[kind]["base"] + got[kind]["head"])}
        rows.append(row)
    out = {"benchmark": "before_after", "labels": labels, "train": train, "rounds": args.rounds,
           "transport_mb": args.transport_mb, "rows": rows, "machine": machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "before_after.json").write_text(json.dumps(out, indent=2) + "\n")
    pct = lambda acc: " / ".join(f"{100 * acc[k]:.2f}" for k in ("goodness", "softmax") if k in acc)  # noqa: E731
    what = {"dff": "DFF pipeline, 2 servers: train s", "pff": "PFF All-Layers, 2 servers: train s",
            "transport": "activation stream 1000x2000: MB/s"}
    table = markdown_table(
        ["measure", f"before ({labels['base']}), median", f"after ({labels['head']}), median", "after / before, per round",
         "median ratio", "accuracy % before → after (goodness / softmax)", "machine"],
        [[what[r["kind"]], r["base_median"], r["head_median"], ", ".join(f"{x:.3f}" for x in r["round_ratios"]),
          f"{r['median_ratio']:.3f}",
          (f"{pct(r['accuracy']['base'])} → {pct(r['accuracy']['head'])}"
           + (" (every round)" if r["accuracy"]["same_in_every_round"] else " (differs between rounds)"))
          if "accuracy" in r else "", machine_cell(out["machine"])] for r in rows])
    table += (f"\nmnist_default with {', '.join(f'{k}={v}' for k, v in train.items())}; {args.rounds} rounds, "
              "the two trees in turn (alternating which goes first).\n")
    publish_table("before_after", table, readme=not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
