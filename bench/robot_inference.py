"""The operator's path end to end, measured: train the MNIST pipeline (DFF) on two servers that
each keep their own weights (two robots), `dff-ros export` the model from them, check
`dff-ros eval` against the run, then classify MNIST test images published as sensor_msgs/Image
by image_demo at several rates, reading live accuracy and latency.

    source scripts/env.sh && python bench/robot_inference.py [--model config/models/mnist_default.yaml]
        [--rates 50 200 1000] [--count 2000] [--train-set key=value ...]

Writes bench/results/robot_inference.{json,md,png} and the README block.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from common import RESULTS, data_root, machine, machine_cell, markdown_table, publish_table  # noqa: E402
from faults import bench_env, pipeline_args  # noqa: E402
from rosutil import Proc, start_server  # noqa: E402

from dff_ros.config.files import parse_set  # noqa: E402


def run_cli(env, *args, timeout=600) -> str:
    proc = subprocess.run([sys.executable, "-m", "dff_ros.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode:
        raise SystemExit(f"dff-ros {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--model", default="config/models/mnist_default.yaml")
    a.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0, 500.0, 1000.0])
    a.add_argument("--count", type=int, default=2000, help="test images per rate")
    a.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE")
    args = a.parse_args()
    overrides = parse_set(args.train_set)
    env = bench_env(7)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        servers = [start_server(env, tmp, f"server_{i}", tmp / f"robot{i}") for i in (1, 2)]
        try:
            pipe = pipeline_args(str(Path(args.model).resolve()), str(tmp), overrides)
            pipe[pipe.index("servers=3")] = "servers=2"
            start = time.monotonic()
            master = Proc(["-m", "dff_ros.nodes.master", *pipe], env, tmp / "master.log")
            if master.p.wait(3600) != 0:
                raise SystemExit(f"training failed:\n{master.output()[-3000:]}")
            out = master.output()
            summary = json.loads(Path(re.search(r"\[dff_master\]: summary: (\S+)", out).group(1)).read_text())
            print(f"trained in {time.monotonic() - start:.0f} s: {summary['accuracy']}", flush=True)

            t0 = time.monotonic()
            exported = export(env, tmp, args.model, summary["model"])
            export_seconds = time.monotonic() - t0
            evaluated = run_cli(env, "eval", str(tmp / "model.pt"), "--data-root", str(data_root()), "--no-download")
            eval_acc = {k: float(v) / 100 for k, v in re.findall(r"test accuracy \[\s*(\w+)\]:\s+([\d.]+) %", evaluated)}
            same_images = in_process_accuracy(tmp / "model.pt", args.count)
        finally:
            for s in servers:
                s.stop()

        rows = []
        for rate in args.rates:
            node = Proc(["-m", "dff_ros.nodes.classifier", "--weights", str(tmp / "model.pt")], env,
                        tmp / f"classifier-{rate:g}.log")
            try:
                demo = Proc(["-m", "dff_ros.nodes.image_demo", "--count", str(args.count), "--rate", str(rate),
                             "--data-root", str(data_root()), "--out", str(tmp / f"demo-{rate:g}.json"),
                             "--no-progress"], env, tmp / f"demo-{rate:g}.log")
                if demo.p.wait(args.count / rate + 120) != 0:
                    raise SystemExit(f"demo at {rate:g} Hz failed:\n{demo.output()[-2000:]}")
            finally:
                node.stop()
            result = json.loads((tmp / f"demo-{rate:g}.json").read_text())
            print(f"{rate:g} Hz: {result}", flush=True)
            rows.append({"rate_hz": rate, **result})

    record = {"machine": machine(), "model": args.model, "train_overrides": overrides,
              "run_accuracy": summary["accuracy"], "train_seconds": summary["train_seconds"],
              "exported_from": exported, "export_seconds": round(export_seconds, 2), "eval_accuracy": eval_acc,
              "demo": rows, "count": args.count, "in_process_accuracy": same_images}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "robot_inference.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(record, RESULTS / "robot_inference.png")
    m = record["machine"]
    table = markdown_table(
        ["images/s sent", "classified", "accuracy %", "latency p50 ms", "p90 ms", "p99 ms", "max ms"],
        [[f"{r['rate_hz']:g}", f"{r['answered']}/{r['sent']}",
          f"{100 * r['accuracy']:.2f}" if r["accuracy"] is not None else "n/a",
          r["latency_ms"]["p50"], r["latency_ms"]["p90"], r["latency_ms"]["p99"], r["latency_ms"]["max"]]
         for r in rows])
    acc = ", ".join(f"{k} {100 * v:.2f} %" for k, v in summary["accuracy"].items())
    ev = ", ".join(f"{k} {100 * v:.2f} %" for k, v in eval_acc.items())
    table = (f"Trained: `{args.model}`{' ' + json.dumps(overrides) if overrides else ''} on 2 servers (DFF, chapters), {summary['train_seconds']:.0f} s, "
             f"test accuracy {acc}. `dff-ros export` from the two servers' weight dirs: "
             f"{export_seconds:.1f} s; `dff-ros eval` of the exported file: {ev}. Classifier (softmax head, "
             f"1 torch thread) fed the first {args.count} MNIST test images as `sensor_msgs/Image` mono8 by "
             f"`image_demo`; the same images in-process: {100 * same_images:.2f} % (latency: image stamp to "
             f"prediction received, both on this machine; best-effort input drops what the node cannot take; "
             f"{machine_cell(m)}):\n\n" + table)
    publish_table("robot_inference", table)
    return 0


def in_process_accuracy(weights: Path, count: int) -> float:
    """The exported network's softmax accuracy on the images the demo sends, without ROS."""
    from dff_ros.data import load_dataset
    from dff_ros.ff.classifiers import accuracy
    from dff_ros.ff.trainer import load_network

    net, _ = load_network(weights)
    data = load_dataset("MNIST", data_root(), allow_download=False)
    return round(accuracy(net, data["test_images"][:count], data["test_labels"][:count], "softmax"), 5)


def export(env, tmp: Path, model_yaml: str, model: str) -> list[str]:
    pipeline = tmp / "export_pipeline.yaml"   # the master's weights dir holds the head
    pipeline.write_text(json.dumps({"model": str(Path(model_yaml).resolve()), "layer_types": str(
        Path(__file__).resolve().parents[1] / "config" / "layer_types.yaml"), "weights_dir": str(tmp / "w"),
        "summary_dir": str(tmp / "runs")}))
    out = run_cli(env, "export", model, "--model-config", model_yaml, "--servers", "2", "--pipeline", str(pipeline),
                  "-o", str(tmp / "model.pt"))
    print(out, flush=True)
    return re.findall(r"part \d+: (\S+)", out)


def plot(record: dict, path: Path) -> None:
    from dff_ros.plots import _pyplot, _save

    plt = _pyplot()
    rows = record["demo"]
    rates = [r["rate_hz"] for r in rows]
    fig, (ax_lat, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for q, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
        ax_lat.plot(rates, [r["latency_ms"][q] for r in rows], style, label=q)
    ax_lat.set(xscale="log", xlabel="images per second sent", ylabel="latency [ms]",
               title="image published -> prediction received")
    ax_lat.grid(alpha=0.3)
    ax_lat.legend()
    bars = ax_acc.bar([f"{r:g}/s" for r in rates], [100 * (r["accuracy"] or 0) for r in rows], color="tab:green")
    for bar, r in zip(bars, rows):   # how many were classified at all (best effort drops the rest)
        ax_acc.text(bar.get_x() + bar.get_width() / 2, bar.get_height() - 0.6, f"{r['answered']}/{r['sent']}\nclassified",
                    ha="center", va="top", fontsize=8, color="white")
    ax_acc.axhline(100 * record["in_process_accuracy"], linestyle="--", color="black",
                   label=f"the same {record['count']} images in-process")
    ax_acc.set(ylabel="accuracy [%]", xlabel="images per second sent",
               title="live accuracy of the classifier (softmax head)",
               ylim=(min(90.0, 100 * min((r["accuracy"] or 0) for r in rows)) - 1, 100))
    ax_acc.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{record['model']}: exported from 2 servers, classified from sensor_msgs/Image")
    fig.tight_layout()
    _save(fig, plt, path)


if __name__ == "__main__":
    sys.exit(main())
