"""``dff-ros`` command line: train / eval a model config in one process (no ROS needed)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml


def _parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _print_result(result: dict) -> None:
    print(f"model {result['model']}: {result['train_samples']} train samples x "
          f"{result['config']['train']['epochs']} epochs in {result['train_seconds']:.1f} s "
          f"({result['samples_per_second']:.0f} samples/s, {result['threads']} threads)")
    for name, acc in result["accuracy"].items():
        print(f"  test accuracy [{name:>8}]: {100 * acc:6.2f} %  ({result['test_samples']} test samples)")


def cmd_train(args) -> int:
    from dff_ros.config.schema import ConfigError, load_model_config
    from dff_ros.data import DatasetMissing, load_dataset
    from dff_ros.ff.trainer import ReferenceTrainer

    overrides = _parse_overrides(args.set)
    if args.threads:
        overrides["threads"] = args.threads
    try:
        config = load_model_config(args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    root = args.data_root or config.dataset.root
    try:
        data = load_dataset(config.dataset.name, root, allow_download=not args.no_download)
    except DatasetMissing as e:
        print(str(e), file=sys.stderr)
        return 3
    out = Path(args.out or Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    trainer = ReferenceTrainer(config, data, progress=not args.no_progress, eval_every=args.eval_every)
    result = trainer.fit()
    out.mkdir(parents=True, exist_ok=True)
    trainer.save(out / "weights.pt")
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    _print_result(result)
    print(f"weights: {out / 'weights.pt'}\nsummary: {out / 'summary.json'}")
    return 0


def cmd_eval(args) -> int:
    from dff_ros.data import load_dataset
    from dff_ros.ff.classifiers import accuracy
    from dff_ros.ff.trainer import load_network

    net, config = load_network(args.weights)
    data = load_dataset(config.dataset.name, args.data_root or config.dataset.root,
                        allow_download=not args.no_download)
    for c in config.train.classifiers:
        acc = accuracy(net, data["test_images"], data["test_labels"], c, config.train.goodness)
        print(f"test accuracy [{c:>8}]: {100 * acc:6.2f} %")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dff-ros", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model config in one process (reference trainer)")
    t.add_argument("config", help="model YAML, e.g. config/models/mnist_default.yaml")
    t.add_argument("--data-root", help="folder holding <DATASET>/raw/ (default: config, $DFF_DATA_ROOT, "
                                       "~/.cache/dff_ros/data)")
    t.add_argument("--out", help="run folder for weights.pt and summary.json (default runs/<name>-<time>)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train key, e.g. --set epochs=5 (repeatable)")
    t.add_argument("--threads", type=int, help="torch threads (overrides train.threads)")
    t.add_argument("--eval-every", type=int, default=0, metavar="K",
                   help="also report test accuracy after every K chapters")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate saved weights on the test set")
    e.add_argument("weights")
    e.add_argument("--data-root")
    e.add_argument("--no-download", action="store_true")
    e.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
