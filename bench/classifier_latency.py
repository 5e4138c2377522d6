"""A trained network's classifier node on camera-like input: image_demo publishes the test set
the network was trained on as sensor_msgs/Image (mono8 or rgb8, the model's size) at fixed rates
to `dff_ros classifier`; live accuracy and latency (image stamp to prediction received).

    source scripts/env.sh && python bench/classifier_latency.py NETWORK.pt [NETWORK.pt ...]
        [--rates 50 200] [--count 1000] [--classifier cwc_last]
    python bench/classifier_latency.py --hosted config/models/mnist_default.yaml [--rates 50]

NETWORK.pt: `dff-ros train --out`, `dff-ros export` or `bench/conv_images.py --save DIR`.
--hosted MODEL.yaml: trains the model through the DFF pipeline on 2 servers with keep_layers:
true, then times the classifier on those layers (`--model`: each image goes through the servers)
beside the network gathered from them (`dff-ros export`, run in the classifier's process), on the
same images at the same rates.
Writes bench/results/classifier_latency.{json,md} and the README table; rows keyed by model, where
it runs and rate.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from common import REPO, data_root, machine, machine_cell, markdown_table, publish_table, write_results  # noqa: E402
from faults import bench_env  # noqa: E402
from rosutil import Proc, start_server  # noqa: E402

from dff_ros.ff.trainer import load_network  # noqa: E402


def table(runs: list[dict]) -> str:
    headers = ["model", "parameters", "runs", "input", "classifier", "images/s sent", "classified", "accuracy %",
               "same images in-process %", "latency p50 ms", "p90 ms", "p99 ms", "machine"]
    rows = [[r["model"], f"{r['parameters']:,}", r.get("runs", "network file"), r["input"], r["classifier"],
             f"{r['rate_hz']:g}",
             f"{r['answered']}/{r['sent']}", "n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}",
             f"{100 * r['in_process_accuracy']:.2f}", r["latency_ms"]["p50"], r["latency_ms"]["p90"],
             r["latency_ms"]["p99"], machine_cell(r["machine"])] for r in runs]
    return markdown_table(headers, rows)


def in_process(weights: Path, count: int, classifier: str) -> tuple[float, int, object]:
    from dff_ros.data import load_dataset
    from dff_ros.ff.classifiers import accuracy

    net, config = load_network(weights)
    data = load_dataset(config.dataset, data_root(), allow_download=False)
    acc = accuracy(net, data["test_images"][:count], data["test_labels"][:count], classifier)
    return round(acc, 5), sum(p.numel() for p in net.parameters()), config


def measure(env, node_args: list[str], weights: Path, rate: float, count: int, log: Path) -> dict:
    """Start the classifier with ``node_args``, have image_demo send ``count`` test images of
    ``weights``' dataset at ``rate``; what image_demo measured."""
    node = Proc(["-m", "dff_ros.nodes.classifier", *node_args], env, log.with_suffix(".classifier.log"))
    try:
        demo = Proc(["-m", "dff_ros.nodes.image_demo", "--weights", str(weights), "--count", str(count), "--rate",
                     str(rate), "--data-root", str(data_root()), "--out", str(log.with_suffix(".json")),
                     "--no-progress"], env, log.with_suffix(".log"))
        if demo.p.wait(count / rate + 120) != 0:
            raise SystemExit(f"image_demo at {rate:g} Hz failed:\n{demo.output()[-2000:]}\n"
                             f"{node.output()[-2000:]}")
    finally:
        node.stop()
    return json.loads(log.with_suffix(".json").read_text())


def hosted(env, model_yaml: Path, tmp: Path, train_sets: list[str] = ()) -> tuple[Path, dict, list[Proc]]:
    """Train ``model_yaml`` through the DFF pipeline on 2 servers, layers kept hosted; the
    network gathered from them, the run's summary and the servers (still running)."""
    import yaml

    pipeline = tmp / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "model": str(model_yaml.resolve()), "layer_types": str(REPO / "config" / "layer_types.yaml"), "servers": 2,
        "data_root": str(data_root()), "weights_dir": str(tmp / "weights"), "summary_dir": str(tmp / "runs"),
        "keep_layers": True, "restore_weights": False, "server_threads": 1}))
    servers = [start_server(env, tmp, f"server_{i}", tmp / "weights") for i in (1, 2)]
    sets = [x for kv in train_sets for x in ("--train-set", kv)]
    master = Proc(["-m", "dff_ros.nodes.master", "--pipeline", str(pipeline), "--no-progress", *sets], env,
                  tmp / "master.log")
    if master.p.wait(3600) != 0:
        raise SystemExit(f"the pipeline run failed:\n{master.output()[-3000:]}")
    summary = json.loads(Path(re.search(r"\[dff_master\]: summary: (\S+)", master.output()).group(1)).read_text())
    print(f"trained {summary['model']} on 2 servers: {summary['accuracy']} in {summary['train_seconds']} s", flush=True)
    out = subprocess.run([sys.executable, "-m", "dff_ros.cli", "export", summary["model"], "--model-config",
                          str(model_yaml), "--servers", "2", "--pipeline", str(pipeline), "-o", str(tmp / "net.pt")],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"export failed:\n{out.stdout}{out.stderr}")
    return tmp / "net.pt", summary, servers


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("weights", nargs="*", type=Path)
    a.add_argument("--hosted", type=Path, metavar="MODEL.yaml", help="see above")
    a.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0])
    a.add_argument("--count", type=int, default=1000, help="test images per rate")
    a.add_argument("--classifier", default="", help="default: the node's (softmax, else the first trained)")
    a.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="--hosted: override a model train key for its training run")
    a.add_argument("--no-readme", action="store_true")
    args = a.parse_args()
    if not args.weights and not args.hosted:
        a.error("give NETWORK.pt files, or --hosted MODEL.yaml")
    env = bench_env(11)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = [(w, "network file", []) for w in args.weights]
        servers: list[Proc] = []
        try:
            if args.hosted:
                net, summary, servers = hosted(env, args.hosted, tmp, args.train_set)
                runs += [(net, "network file (gathered)", []),
                         (net, "layers on 2 servers", ["--model", summary["model"], "--head",
                                                       summary["head_weights"] or ""])]
            for weights, where, source in runs:
                _, config = load_network(weights)
                known = config.train.classifiers
                classifier = args.classifier or ("softmax" if "softmax" in known else known[0])
                same, parameters, config = in_process(weights, args.count, classifier)
                c, h, w = config.data.image_shape
                for rate in args.rates:
                    log = tmp / f"{config.name}-{len(rows)}"
                    result = measure(env, [*(source or ["--weights", str(weights)]), "--classifier", classifier],
                                     weights, rate, args.count, log)
                    print(f"{config.name} ({where}) {rate:g} Hz: {result}", flush=True)
                    rows.append({"key": f"{config.name}/{where}/{rate:g}", "model": config.name, "runs": where,
                                 "weights": str(weights), "parameters": parameters,
                                 "input": f"{w}x{h} {'rgb8' if c == 3 else 'mono8'}", "classifier": classifier,
                                 "in_process_accuracy": same, "rate_hz": rate, **result, "machine": machine()})
        finally:
            for s in servers:
                s.stop()
    runs = write_results("classifier_latency", rows, "key")
    publish_table("classifier_latency", table(runs), readme=not args.no_readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
