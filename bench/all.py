"""Every benchmark, one after another: each writes its JSON, markdown table, plots and README block.

    source scripts/env.sh && python bench/all.py            # the recorded settings: many hours
    python bench/all.py --quick                             # a smoke run: every bench on a small
                                                            #   subset, in about half an hour
    python bench/all.py --only transport_throughput,scaling [--quick] [--dry-run]

--quick runs each bench with tiny settings and writes its results to bench/results-quick/ (or
--results DIR), so the recorded results and the README stay as they are. A bench that fails is
reported and the others still run; the exit status is 1 if any failed. before_after compares two
source trees and runs only with --base-tree DIR. The capped-link bench needs root (network
namespaces).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SMALL = ["train_subset=2000", "test_subset=1000", "epochs=2", "splits=2"]


def _sets(flag: str, items: list[str]) -> list[str]:
    return [x for kv in items for x in (flag, kv)]


# name ("script" or "script:variant"), full arguments, quick arguments (in run order: scaling reads
# pff_mnist's and capped_link's results)
BENCHES: list[tuple[str, list[str], list[str]]] = [
    ("transport_throughput", [], ["--messages-mb", "40", "--repeats", "1"]),
    ("reference_mnist", ["config/models/mnist_default.yaml", "config/models/mnist_random.yaml",
                         "config/models/mnist_adaptive.yaml",
                         "config/models/mnist_wide.yaml"], _sets("--set", SMALL)),
    ("threads_under_load", [], ["--rounds", "1"]),
    ("pipeline_mnist", [], _sets("--train-set", SMALL)),
    ("pff_mnist", [], ["--repeats", "1", *_sets("--train-set", SMALL)]),
    ("capped_link", [], _sets("--train-set", SMALL)),
    # 4 server hosts time-sharing the 2 cores, All-Layers in 4 chapters (one per node)
    ("capped_link:4hosts", ["--servers", "4", "--runs", "all_layers", *_sets("--train-set", ["epochs=4", "splits=4"])],
     ["--servers", "4", "--runs", "all_layers",
      *_sets("--train-set", ["train_subset=2000", "test_subset=1000", "epochs=4", "splits=4"])]),
    ("scaling", [], []),
    ("conv_images", [], _sets("--set", SMALL)),
    ("conv_distributed", [], _sets("--train-set", SMALL)),
    ("classifier_latency", ["--hosted", "config/models/mnist_default.yaml", "--rates", "50"],
     ["--hosted", "config/models/mnist_default.yaml", "--rates", "50", "--count", "100", *_sets("--train-set", SMALL)]),
    ("robot_inference", [], ["--rates", "50", "--count", "100", *_sets("--train-set", SMALL)]),
    ("faults", [], ["--kill-after", "1", *_sets("--train-set", ["train_subset=2000", "test_subset=1000", "epochs=4",
                                                              "splits=4"])]),
    ("attacks", [], ["--only", "undisturbed,shape_overflow"]),
]


def commands(quick: bool, base_tree: str | None) -> list[tuple[str, list[str]]]:
    out = [(name, [sys.executable, str(BENCH / f"{name.split(':')[0]}.py"), *(q if quick else full)])
           for name, full, q in BENCHES]
    if base_tree:
        extra = ["--rounds", "1", "--transport-mb", "40", *_sets("--train-set", SMALL)] if quick else []
        out.append(("before_after", [sys.executable, str(BENCH / "before_after.py"), "--base-tree", base_tree, *extra]))
    return out


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--quick", action="store_true", help="tiny settings; results to --results, README untouched")
    a.add_argument("--results", type=Path, default=BENCH / "results-quick", help="where --quick writes")
    a.add_argument("--only", default="", help="comma-separated bench names (default: all)")
    a.add_argument("--base-tree", help="also run before_after against this source tree")
    a.add_argument("--dry-run", action="store_true", help="print the commands")
    args = a.parse_args()
    todo = commands(args.quick, args.base_tree)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {name for name, _ in todo}
        if unknown:
            a.error(f"no bench named {', '.join(sorted(unknown))} (known: {', '.join(n for n, _ in todo)})")
        todo = [(n, c) for n, c in todo if n in wanted]
    env = dict(os.environ)
    if args.quick:
        args.results.mkdir(parents=True, exist_ok=True)
        env["DFF_BENCH_RESULTS"] = str(args.results.resolve())
        if not args.only or "scaling" in args.only:   # scaling reads the runs it replays from there
            for name in ("pff_mnist.json", "capped_link.json"):
                src, dst = BENCH / "results" / name, args.results / name
                if src.exists() and not dst.exists():
                    dst.write_bytes(src.read_bytes())
    failed = []
    for i, (name, cmd) in enumerate(todo, 1):
        print(f"[bench/all] {i}/{len(todo)} {name}: {' '.join(cmd[1:])}", flush=True)
        if args.dry_run:
            continue
        t0 = time.monotonic()
        rc = subprocess.run(cmd, env=env, cwd=BENCH.parent).returncode
        print(f"[bench/all] {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.monotonic() - t0:.0f} s",
              flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"[bench/all] failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
