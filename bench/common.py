"""Shared benchmark plumbing: machine description, result files, README table refresh."""
from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def data_root() -> Path:
    return Path(os.environ.get("DFF_DATA_ROOT") or REPO.parent / "shared" / "data")


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
    """Replace the README block between <!-- bench:NAME --> and <!-- /bench:NAME -->."""
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
