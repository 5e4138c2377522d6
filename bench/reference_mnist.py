"""Benchmark the single-process reference trainer on full MNIST (60k train / 10k test).

    python bench/reference_mnist.py [config/models/mnist_default.yaml ...] [--threads 2]

Writes bench/results/reference_mnist.{json,md,png} (rows keyed by config file, so running
one config keeps the others; the PNG plots test accuracy against training time) and refreshes
the README table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, RESULTS, data_root, machine_cell, markdown_table, trainer_row, update_readme,  # noqa: E402
                    write_results)

from dff_ros.config.files import parse_set  # noqa: E402
from dff_ros.config.schema import load_model_config  # noqa: E402
from dff_ros.data import load_dataset  # noqa: E402
from dff_ros.ff.trainer import ReferenceTrainer  # noqa: E402

DEFAULT_CONFIGS = ["config/models/mnist_default.yaml"]


def table(runs: list[dict]) -> str:
    headers = ["config", "layers", "epochs (splits)", "batch", "negatives", "schedule", "threads", "train s",
               "eval s", "samples/s", "goodness %", "softmax %", "machine"]
    rows = []
    for r in runs:
        acc = r["accuracy"]
        cell = lambda c: f"{100 * acc[c]:.2f}" if c in acc else "–"  # noqa: E731
        rows.append([f"`{r['config_file']}`", r["layers"], f"{r['epochs']} ({r['splits']})", r["batch_size"],
                     r["negatives"], r["schedule"], r["threads"], f"{r['train_seconds']:.0f}",
                     f"{r['eval_seconds']:.0f}", f"{r['samples_per_second']:.0f}", cell("goodness"),
                     cell("softmax"), machine_cell(r["machine"])])
    return markdown_table(headers, rows)


def plot(runs: list[dict], path: Path) -> None:
    """Test accuracy (goodness classifier) against training seconds, one line per config."""
    from dff_ros.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        pts = [(c["train_seconds"], 100 * c["accuracy"]["goodness"]) for c in r.get("curve", [])
               if "goodness" in c["accuracy"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{r['model']} ({r['layers']}, {r['epochs']} ep, {r['negatives']})")
    ax.axhline(98.5, color="grey", linestyle="--", linewidth=1, label="98.5 % (PFF 98.51, Hinton 98.53)")
    ax.set_xlabel("training time [s] (2-core CPU)")
    ax.set_ylabel("test accuracy, goodness [%]")
    ax.set_ylim(93, 99)
    ax.set_title("Reference trainer on full MNIST")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, plt, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", default=DEFAULT_CONFIGS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=0, metavar="K", help="test after every K chapters too")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a train key")
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--table-only", action="store_true", help="only rewrite the md/README tables from the JSON")
    args = p.parse_args()
    rows = []
    data = None if args.table_only else load_dataset("MNIST", data_root(), allow_download=False)
    for cfg_path in [] if args.table_only else args.configs:
        cfg = load_model_config(REPO / cfg_path, {"threads": args.threads, **parse_set(args.set)})
        t0 = time.perf_counter()
        result = ReferenceTrainer(cfg, data, eval_every=args.eval_every).fit()
        rows.append({**trainer_row(cfg_path, cfg, result, t0), "negatives": cfg.train.negatives + (" (bf16 scoring)" if cfg.train.negatives_dtype == "bfloat16" else ""),
                     "layers": "-".join([str(cfg.input_features)] + [str(l.out_features) for l in cfg.layers])})
        print(json.dumps({k: rows[-1][k] for k in ("config_file", "train_seconds", "accuracy")}), flush=True)
    runs = write_results("reference_mnist", rows, "config_file")
    md = table(runs)
    (RESULTS / "reference_mnist.md").write_text("# Reference trainer, full MNIST\n\n" + md)
    plot(runs, RESULTS / "reference_mnist.png")
    if not args.no_readme:
        update_readme("reference_mnist", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
