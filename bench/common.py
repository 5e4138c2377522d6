"""Shared benchmark plumbing: machine description, result files, README table refresh."""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dff_ros  # noqa: F401  (before torch: dff_ros/numerics.py)
import torch

REPO = Path(__file__).resolve().parents[1]
# bench/all.py --quick points this elsewhere: a smoke run must not replace the recorded results
# (nor, then, the README tables)
RESULTS = Path(os.environ.get("DFF_BENCH_RESULTS") or REPO / "bench" / "results")
# The recipe the system benches (PFF, faults, capped links, threads) were measured with: the
# default model's until 2026-12-02 (random negatives, 10 epochs in 10 chapters). The default now
# trains with adaptive negatives in 4 chapters; these benches stay comparable with their rows.
SYSTEM_RECIPE = {"negatives": "random", "epochs": 10, "splits": 10}


def data_root() -> Path:
    return Path(os.environ.get("DFF_DATA_ROOT") or REPO.parent / "shared" / "data")


os.environ["DFF_DATA_ROOT"] = str(data_root())   # model configs read their data's shape from here


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def trainer_row(cfg_path: str, cfg, result: dict, started: float) -> dict:
    """The fields every reference-trainer benchmark row has (``started``: its perf_counter)."""
    t = cfg.train
    return {"config_file": cfg_path, "model": cfg.name, "epochs": t.epochs, "splits": t.splits,
            "batch_size": t.batch_size, "schedule": t.schedule, "threads": result["threads"],
            "train_seconds": result["train_seconds"], "eval_seconds": result["eval_seconds"],
            "wall_seconds": round(time.perf_counter() - started, 1), "samples_per_second": result["samples_per_second"],
            "accuracy": result["accuracy"], "config": result["config"], "history": result["history"],
            "curve": result["curve"], "machine": machine()}


def write_results(name: str, rows: list[dict], key: str) -> list[dict]:
    """Merge ``rows`` into bench/results/<name>.json (rows with the same ``key`` are replaced);
    return all runs now recorded."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    keep = [r for r in old if r[key] not in {n[key] for n in rows}]
    runs = keep + rows
    path.write_text(json.dumps({"benchmark": name, "runs": runs}, indent=2) + "\n")
    return runs


def update_readme(name: str, table: str) -> None:
    """Replace the README block between <!-- bench:NAME --> and <!-- /bench:NAME --> (not when
    the results go elsewhere than bench/results: a smoke run's tables are not the README's)."""
    if RESULTS != REPO / "bench" / "results":
        print(f"(README left as it is: results go to {RESULTS})")
        return
    readme = REPO / "README.md"
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- bench:{name} --> block")
    readme.write_text(pattern.sub(lambda m: m.group(1) + table + m.group(2), text))


def publish_table(name: str, table: str, readme: bool = True) -> None:
    """bench/results/<name>.md, stdout, and the README block."""
    (RESULTS / f"{name}.md").write_text(table)
    print(table)
    if readme:
        update_readme(name, table)


def machine_cell(m: dict) -> str:
    return f"{m['cores']}-core {m['cpu']}, {m['date']}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def launched(run: str, model_path: str, servers: int, overrides: dict, *, extra: tuple = (),
             timeline: str | None = None) -> dict:
    """One pipeline run through the launcher: ``run`` is dff (activations) or a PFF variant.
    ``extra``: more launcher arguments (e.g. --emulate-hosts); ``timeline``: where under
    bench/results/ to copy a PFF run's timeline PNG."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ROS_DOMAIN_ID": os.environ.get("DFF_BENCH_DOMAIN", "92"),
               "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
        transport = "activations" if run == "dff" else "parameters"
        cmd = [sys.executable, "-m", "dff_ros.launcher", "--pipeline", str(REPO / "config" / "mnist_pipeline.yaml"),
               "--servers", str(servers), "--set", f"model={model_path}", "--set", f"data_root={data_root()}",
               "--set", f"weights_dir={tmp}/w", "--set", f"summary_dir={tmp}/runs", "--set", "restore_weights=false",
               "--set", f"transport={transport}", "--set", "server_threads=1", "--no-progress", *extra]
        if transport == "parameters":
            cmd += ["--set", f"pff_variant={run}"]
        for k, v in overrides.items():
            cmd += ["--train-set", f"{k}={json.dumps(v)}"]
        print(run + ":", " ".join(cmd[2:]), flush=True)
        proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sys.stdout.write(proc.stdout[-2500:])
        if proc.returncode:
            raise SystemExit(f"{run} failed ({proc.returncode})")
        summary = json.loads(Path(re.search(r"\[dff_master\]: summary: (\S+)", proc.stdout).group(1)).read_text())
        epochs = summary["config"]["train"]["epochs"]
        out = {"accuracy": summary["accuracy"], "train_seconds": summary["train_seconds"],
               "eval_seconds": summary["eval_seconds"], "nodes": servers, "threads": 1,
               "host_traffic": {who: {"sent": int(s), "received": int(r)} for who, s, r in re.findall(
                   r"\[launcher\] host \S+ \((\S+)\) sent (\d+) bytes, received (\d+) bytes", proc.stdout)}}
        if transport == "activations":
            moved = summary["master"]["bytes_sent"] + sum(l["bytes_out"] or 0 for l in summary["layers"])
            busy = sum(l["busy_seconds"] or 0 for l in summary["layers"])
            # training only: bytes_out and bytes_sent also hold the test set's passes
            per_chapter = summary["history"]["bytes_per_chapter"]
            trained = sum(sum(v) for v in per_chapter.values())
            out.update(bytes_per_epoch=round(trained / epochs), bytes_moved=moved, bytes_per_chapter=per_chapter,
                       layer_busy_seconds=[l["busy_seconds"] for l in summary["layers"]],
                       utilisation=round(busy / (servers * summary["train_seconds"]), 3))
        else:
            out.update(bytes_per_epoch=summary["bytes_per_epoch"], utilisation=summary["utilisation"],
                       setup_seconds=summary["setup_seconds"], fetch_seconds=summary["fetch_seconds"],
                       per_node=summary["per_node"], bytes_per_topic=summary["bytes_per_topic"])
            if timeline:
                png = Path(re.search(r"\[dff_master\]: plot: (\S+-timeline\.png)", proc.stdout).group(1))
                shutil.copy(png, RESULTS / timeline)
                out["timeline_png"] = f"bench/results/{timeline}"
        return out
