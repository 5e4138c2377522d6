"""A trained network's classifier node on camera-like input: image_demo publishes the test set
the network was trained on as sensor_msgs/Image (mono8 or rgb8, the model's size) at fixed rates
to `dff_ros classifier`; live accuracy and latency (image stamp to prediction received).

    source scripts/env.sh && python bench/classifier_latency.py NETWORK.pt [NETWORK.pt ...]
        [--rates 50 200] [--count 1000] [--classifier cwc_last]

NETWORK.pt: `dff-ros train --out`, `dff-ros export` or `bench/conv_images.py --save DIR`.
Writes bench/results/classifier_latency.{json,md} and the README table; rows keyed by model and rate.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from common import data_root, machine, machine_cell, markdown_table, publish_table, write_results  # noqa: E402
from faults import bench_env  # noqa: E402
from rosutil import Proc  # noqa: E402

from dff_ros.ff.trainer import load_network  # noqa: E402


def table(runs: list[dict]) -> str:
    headers = ["model", "parameters", "input", "classifier", "images/s sent", "classified", "accuracy %",
               "same images in-process %", "latency p50 ms", "p90 ms", "p99 ms", "machine"]
    rows = [[r["model"], f"{r['parameters']:,}", r["input"], r["classifier"], f"{r['rate_hz']:g}",
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


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("weights", nargs="+", type=Path)
    a.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0])
    a.add_argument("--count", type=int, default=1000, help="test images per rate")
    a.add_argument("--classifier", default="", help="default: the node's (softmax, else the first trained)")
    a.add_argument("--no-readme", action="store_true")
    args = a.parse_args()
    env = bench_env(11)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for weights in args.weights:
            _, config = load_network(weights)
            known = config.train.classifiers
            classifier = args.classifier or ("softmax" if "softmax" in known else known[0])
            same, parameters, config = in_process(weights, args.count, classifier)
            c, h, w = config.data.image_shape
            for rate in args.rates:
                log = tmp / f"{config.name}-{rate:g}"
                node = Proc(["-m", "dff_ros.nodes.classifier", "--weights", str(weights), "--classifier", classifier],
                            env, log.with_suffix(".classifier.log"))
                try:
                    demo = Proc(["-m", "dff_ros.nodes.image_demo", "--weights", str(weights), "--count",
                                 str(args.count), "--rate", str(rate), "--data-root", str(data_root()),
                                 "--out", str(log.with_suffix(".json")), "--no-progress"], env, log.with_suffix(".log"))
                    if demo.p.wait(args.count / rate + 120) != 0:
                        raise SystemExit(f"image_demo at {rate:g} Hz failed:\n{demo.output()[-2000:]}")
                finally:
                    node.stop()
                result = json.loads(log.with_suffix(".json").read_text())
                print(f"{config.name} {rate:g} Hz: {result}", flush=True)
                rows.append({"key": f"{config.name}/{rate:g}", "model": config.name, "weights": str(weights),
                             "parameters": parameters, "input": f"{w}x{h} {'rgb8' if c == 3 else 'mono8'}",
                             "classifier": classifier, "in_process_accuracy": same, "rate_hz": rate, **result,
                             "machine": machine()})
    runs = write_results("classifier_latency", rows, "key")
    publish_table("classifier_latency", table(runs), readme=not args.no_readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
