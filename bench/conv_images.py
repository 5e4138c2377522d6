"""Benchmark convolutional FF models on image sets with the single-process reference trainer.

    python bench/conv_images.py [config/models/mnist_conv_cwc.yaml ...] [--eval-every K]

Writes bench/results/conv_images.{json,md}, a learning-curve PNG per config
(bench/results/conv_images-<model>.png: loss and training accuracy per layer and epoch, test
accuracy after every K chapters) and refreshes the README table. Rows are keyed by config file.
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

from dff_ros.config.schema import load_model_config  # noqa: E402
from dff_ros.data import load_dataset  # noqa: E402
from dff_ros.ff.trainer import ReferenceTrainer  # noqa: E402

DEFAULT_CONFIGS = ["config/models/mnist_conv_cwc.yaml", "config/models/cifar10_conv_cwc.yaml"]
CIFAR = "CwC 78.11, DeeperForward 79.5-86.2, PFF 53.5, DFF 42.5"
ANCHORS = {"mnist_conv_cwc": "CwC 99.42, DeeperForward 99.50-99.65 (target 99.5)",
           "mnist_blocks": "CwC 99.42, DeeperForward 99.50-99.65 (target 99.5)",
           "cifar10_conv_cwc": f"{CIFAR} (target 80)",
           "cifar10_conv_cwc_aug": f"{CIFAR} (target 80)",
           "cifar10_blocks": f"{CIFAR} (target 80)",
           "cifar10_light": f"{CIFAR}; DeeperForward TinyCNN-4 79.49 (target 75 with ≤ 200k parameters)",
           "cifar10_dff_recipe": "DFF (this recipe, 1000 full-batch epochs) 42.49 (target 42.5)"}


def table(runs: list[dict]) -> str:
    headers = ["config", "data", "layers (out shapes)", "parameters", "epochs (splits)", "train s", "samples/s",
               "test accuracy %", "published", "machine"]
    rows = []
    for r in runs:
        acc = ", ".join(f"{k} {100 * v:.2f}" for k, v in r["accuracy"].items())
        rows.append([f"`{r['config_file']}`", r["data"], r["layers"], f"{r['parameters']:,}",
                     f"{r['epochs']} ({r['splits']})", f"{r['train_seconds']:.0f}", f"{r['samples_per_second']:.0f}",
                     acc, ANCHORS.get(r["model"], "–"), machine_cell(r["machine"])])
    return markdown_table(headers, rows)


def plot_title(r: dict) -> str:
    return (f"{r['model']} on {r['dataset']}: reference trainer, {r['epochs']} epochs, {r['train_seconds']:.0f} s "
            f"({r['machine']['cores']}-core {r['machine']['cpu']})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", default=DEFAULT_CONFIGS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=1, metavar="K", help="test after every K chapters too")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train key for every config")
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--save", metavar="DIR", help="also write each trained network to DIR/<model>.pt "
                   "(for bench/classifier_latency.py)")
    p.add_argument("--plots-only", action="store_true", help="redraw the PNGs and tables from the JSON")
    args = p.parse_args()
    import yaml
    from dff_ros.plots import curves_png

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows, runs = [], []
    if args.plots_only:
        runs = write_results("conv_images", [], "config_file")
        for r in runs:
            curves_png(r, REPO / r["plot"], title=plot_title(r))
    for cfg_path in [] if args.plots_only else args.configs:
        cfg = load_model_config(REPO / cfg_path, {**overrides, "threads": args.threads}, data_root=str(data_root()))
        data = load_dataset(cfg.dataset, data_root(), allow_download=False)
        cfg.check_data(data["info"], cfg.dataset.name)
        t0 = time.perf_counter()
        trainer = ReferenceTrainer(cfg, data, eval_every=args.eval_every)
        result = trainer.fit()
        name = f"conv_images-{cfg.name}.png"
        rows.append({
            **trainer_row(cfg_path, cfg, result, t0), "dataset": cfg.dataset.name,
            "data": f"{cfg.dataset.name} {'x'.join(map(str, cfg.data.image_shape))}, {len(data['train_labels'])}/"
                    f"{len(data['test_labels'])}",
            "layers": " → ".join("x".join(map(str, s.out_shape)) for s in cfg.layers),
            "parameters": sum(p.numel() for p in trainer.net.parameters()), "plot": f"bench/results/{name}",
        })
        curves_png(rows[-1], RESULTS / name, title=plot_title(rows[-1]))
        if args.save:
            trainer.save(Path(args.save) / f"{cfg.name}.pt")
        print(json.dumps({k: rows[-1][k] for k in ("config_file", "train_seconds", "accuracy")}), flush=True)
        runs = write_results("conv_images", rows, "config_file")   # each config's row as soon as it is done
    md = table(runs)
    (RESULTS / "conv_images.md").write_text("# Convolutional FF, reference trainer\n\n" + md)
    if not args.no_readme:
        update_readme("conv_images", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
