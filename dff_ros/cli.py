"""``dff-ros`` command line: train / eval a model config in one process (no ROS needed), and
look after the servers of a ROS 2 domain: status, delete, export."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from dff_ros.config.files import parse_set as _parse_overrides


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
        config = load_model_config(args.config, overrides, data_root=args.data_root,
                                   allow_download=not args.no_download)
        data = load_dataset(config.dataset, args.data_root, allow_download=not args.no_download)
        config.check_data(data["info"], config.dataset.name)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
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
    try:
        from dff_ros.plots import curves_png
        title = f"{config.name}: reference trainer, {config.train.schedule} schedule, {result['train_seconds']:.0f} s"
        print(f"plot: {curves_png(result, out / 'curves.png', title=title)}")
    except ImportError as e:
        print(f"no plot ({e}); pip install matplotlib")
    print(f"weights: {out / 'weights.pt'}\nsummary: {out / 'summary.json'}")
    return 0


def cmd_eval(args) -> int:
    from dff_ros.config.schema import ConfigError
    from dff_ros.data import DatasetMissing, load_dataset
    from dff_ros.ff.classifiers import accuracy
    from dff_ros.ff.trainer import load_network

    net, config = load_network(args.weights)
    try:
        data = load_dataset(config.dataset, args.data_root, allow_download=not args.no_download)
        config.check_data(data["info"], config.dataset.name)
    except ConfigError as e:
        print(f"{args.weights}: {e}", file=sys.stderr)
        return 2
    except DatasetMissing as e:
        print(str(e), file=sys.stderr)
        return 3
    x, y = data["test_images"], data["test_labels"]
    n = args.test_subset if args.test_subset is not None else (config.train.test_subset or len(y))
    x, y = x[:n], y[:n]   # as the run tested (its train.test_subset) unless told otherwise
    for c in config.train.classifiers:
        acc = accuracy(net, x, y, c, config.train.goodness)
        print(f"test accuracy [{c:>8}]: {100 * acc:6.2f} %  ({len(y)} test samples)")
    return 0


def _admin(args):
    try:
        from dff_ros.nodes.admin import Admin
    except ImportError as e:
        raise SystemExit(f"dff-ros {args.command} talks to the servers over ROS 2 and needs rclpy and the "
                         f"built dff_ros interfaces ({e}); source the workspace (. scripts/env.sh)")
    return Admin(wait_seconds=args.wait, servers=args.servers)


def _pipeline(args):
    from dff_ros.config.pipeline import load_pipeline_config
    from dff_ros.config.files import default_pipeline

    return load_pipeline_config(args.pipeline or default_pipeline())


def cmd_status(args) -> int:
    from dff_ros.nodes.admin import interrupted_runs

    with _admin(args) as admin:
        servers = admin.status()
    runs = interrupted_runs(_pipeline(args).summary_dir)
    if args.json:
        print(json.dumps({"servers": servers, "interrupted_runs": runs}, indent=2))
        return 0
    print(f"{len(servers)} server(s) on ROS_DOMAIN_ID {os.environ.get('ROS_DOMAIN_ID', '0')}")
    for s in servers:
        if "error" in s:
            print(f"{s['server']}: {s['error']}")
            continue
        print(f"{s['server']}  host {s['hostname']}, pid {s['pid']}, {s['threads']} thread(s), "
              f"weights in {s['weights_dir']}")
        for l in s["layers"]:
            state = f"{l['phase'] or 'no status heard'}"
            if l["chapters_done"] is not None:
                state += f", {l['chapters_done']} chapter(s) done"
            if l["loss"] is not None:
                state += f", loss {l['loss']:.4g}"
            print(f"  hosts  {l['model']} run {l['run_id']} layer {l['index']} {l['module']} {l['in']}->{l['out']}: "
                  f"{state}, {l['samples']} samples" + (", weights restored" if l["weights_restored"] else "")
                  + (f", {l['dropped']} dropped" if l["dropped"] else ""))
        if not s["layers"]:
            print("  hosts  nothing")
        for f in s["saved"]:
            print(f"  saved  {f['file']}  {f['bytes'] / 1e6:.2f} MB  "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(f['saved_at']))}")
    for r in runs:
        print(f"interrupted run: {r['path']}: " + (r["error"] if "error" in r else
              f"{r['model']} run {r['run_id']} after {r['chapters_done']} chapter(s); starting the master "
              "again with the same config takes it over"))
    return 0


def cmd_delete(args) -> int:
    with _admin(args) as admin:
        results = admin.delete(args.model, weights=args.weights, run_id=args.run)
    for r in results:
        print(f"{r['server']}: {r['message']}")
    if not results:
        print("no server found (same ROS_DOMAIN_ID? raise --wait)", file=sys.stderr)
        return 1
    return 0 if all(r["success"] for r in results) else 1


def cmd_export(args) -> int:
    from dff_ros.config.schema import ConfigError, load_model_config
    from dff_ros.data import DatasetMissing
    from dff_ros.nodes.admin import AdminError

    pipeline = _pipeline(args)
    try:   # the network file records the data's shape and classes, read from the data here
        config = load_model_config(args.model_config or pipeline.model, data_root=pipeline.data_root)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except DatasetMissing as e:
        print(str(e), file=sys.stderr)
        return 3
    if config.name != args.model:
        print(f"{args.model_config or pipeline.model} describes model {config.name!r}, not {args.model!r}: "
              "pass its model YAML with --model-config", file=sys.stderr)
        return 2
    from dff_ros.weights import default_weights_dir

    local = [Path(pipeline.weights_dir) if pipeline.weights_dir else default_weights_dir()]
    out = Path(args.out or f"{args.model}.pt")
    with _admin(args) as admin:
        try:
            source = admin.export(config, out, local)
        except AdminError as e:
            print(f"export failed: {e}", file=sys.stderr)
            return 1
    for part, where in sorted(source.items()):
        print(f"  part {part}: {where}")
    print(f"exported {args.model!r} to {out}; evaluate it with: dff-ros eval {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dff-ros", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model config in one process (reference trainer)")
    t.add_argument("config", help="model YAML, e.g. config/models/mnist_default.yaml")
    t.add_argument("--data-root", help="folder the dataset's path is below, e.g. holding MNIST/raw/ (default: the "
                                       "config's dataset.root, $DFF_DATA_ROOT, ~/.cache/dff_ros/data)")
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
    e.add_argument("--data-root", help="folder the dataset's path is below (default as for train)")
    e.add_argument("--no-download", action="store_true")
    e.add_argument("--test-subset", type=int, metavar="N",
                   help="first N test samples (default: the model's train.test_subset, else all)")
    e.set_defaults(func=cmd_eval)

    def ros_options(c):
        c.add_argument("--wait", type=float, default=5.0, help="seconds to look for servers (default 5)")
        c.add_argument("--servers", type=int, default=0, help="stop looking once this many servers are found")
        c.add_argument("--pipeline", help="pipeline YAML (default: the package's config/mnist_pipeline.yaml): "
                                          "its summary_dir, weights_dir and model")

    st = sub.add_parser("status", help="servers on this ROS domain: hosted layers, saved weights, interrupted runs")
    st.add_argument("--json", action="store_true", help="print JSON instead of text")
    ros_options(st)
    st.set_defaults(func=cmd_status)
    d = sub.add_parser("delete", help="free a model's layers on every server")
    d.add_argument("model")
    d.add_argument("--weights", action="store_true", help="also remove the model's saved weights on every server")
    d.add_argument("--run", default="", metavar="RUN_ID",
                   help="stop this live run of the model (a server refuses to delete a model in a live run "
                        "otherwise; `dff-ros status` shows the run ids)")
    ros_options(d)
    d.set_defaults(func=cmd_delete)
    x = sub.add_parser("export", help="gather a model's per-node weights into one file (dff-ros eval loads it)")
    x.add_argument("model")
    x.add_argument("--model-config", help="the model YAML it was trained with (default: the pipeline's model)")
    x.add_argument("-o", "--out", help="output file (default <model>.pt)")
    ros_options(x)
    x.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
