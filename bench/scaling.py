"""Speed-up on N = 1..16 nodes, by simulation (dff_ros/simulator.py) fed with measured numbers.

This machine has 2 cores, so only 2-node runs (and capped-link emulated hosts) are measured.
The simulator plays the PFF plans and the DFF chapters schedule with:
  * task seconds per part and version bytes per part, from bench/results/pff_mnist.json's
    Single-Layer run (each node's busy seconds over its chapters; the head, ~2 % of layer 1's
    work by weight count, is taken out of layer 1's node by that ratio);
  * DFF activity bytes per chapter: rows x width x 4 bytes x 3 passes (pos, neg, neutral);
  * a link per node (20 Mbit/s, 100 Mbit/s, 1 Gbit/s; 1 ms latency).
First it predicts every measured run and gives the error; then mnist_default (2 layers + head,
10 chapters) and the PFF paper's 784-[2000]x4 net (task times scaled by weight count, 20
chapters) on N nodes. Writes bench/results/scaling.{json,md,png} and the README table.

    source scripts/env.sh && python bench/scaling.py
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, machine, markdown_table, publish_table, write_results  # noqa: E402

from dff_ros.pff.plan import PFFPlan  # noqa: E402
from dff_ros.simulator import Link, Workload, simulate_dff, simulate_pff  # noqa: E402

LINKS = [Link("20 Mbit/s", 20e6, 1e-3), Link("100 Mbit/s", 100e6, 1e-3), Link("1 Gbit/s", 1e9, 1e-3)]
NODES = [1, 2, 3, 4, 6, 8, 12, 16]
PFF_PAPER = (4, 3.75)   # nodes, speed-up (ANCHORS.md: 4-layer MNIST net, All-Layers)


def _runs(name: str) -> dict:
    runs = json.loads((RESULTS / f"{name}.json").read_text())["runs"]
    return {r["run"] + ("/" + r["rate"] if "rate" in r else "")
            + (f"/{r['servers']} servers" if r.get("servers", 2) != 2 else ""): r for r in runs}


def measured_workload(pff: dict) -> tuple[Workload, Workload, dict]:
    """mnist_default's per-chapter task seconds and version bytes (Single-Layer: weights only;
    All-Layers: with the optimizer state), from the measured 2-node Single-Layer run."""
    sl, al = pff["single_layer"], pff["all_layers"]
    splits = sl["splits"]
    node0, node1 = (n["busy_seconds"] / splits for n in sl["per_node"])
    head_share = 2000 * 10 / (1000 * 1000 + 2000 * 10)   # the head's weights against layer 1's
    tasks = (node0, node1 * (1 - head_share), node1 * head_share)
    topics = ("layer_0", "layer_1", "head")

    def versions(run):
        return tuple(run["bytes_per_topic"][f"/dff/mnist_default/params/{t}"] / splits for t in topics)

    rows, width = 60000, 1000
    acts = (rows * width * 4 * 3,) * 2
    images = rows * (784 + 8 + 8)   # uint8 images, labels, negative labels
    w_sl = Workload(tasks, versions(sl), splits, acts, images)
    w_al = Workload(tasks, versions(al), splits, acts, images)
    return w_sl, w_al, {"task_seconds": [round(t, 3) for t in tasks], "version_bytes_single_layer": list(versions(sl)),
                        "version_bytes_all_layers": list(versions(al)),
                        "from": "pff_mnist.json single_layer, all_layers"}


def machine_cores(run: dict) -> int:
    return int(run["machine"].get("cores", 2))


def paced(run: dict) -> Link:
    """The capped link as the run's data writers saw it: their flow controller's rate, which
    counts a sample once for all the readers it is sent to one after another."""
    return Link(run["rate"], 8 * run["paced_bytes_per_second"] * run.get("readers_per_sample", 1), 1e-3)


def validate(pff: dict, capped: dict, w_sl: Workload, w_al: Workload) -> list[dict]:
    """Every measured run that the simulator can replay, and its prediction."""
    one_host = Link("one host", 8 * 2.0e9)   # shared memory between processes (transport bench)
    L = 2
    rows = []
    seq = sum(w_sl.task_seconds) * w_sl.splits
    rows.append({"run": "sequential, 1 thread (pff_mnist)", "measured": pff["sequential-1t"]["train_seconds"],
                 "predicted": seq, "why": "tasks were timed two processes side by side"})
    for variant, w in (("single_layer", w_sl), ("all_layers", w_al)):
        plan = PFFPlan(variant, 2, L, True, (0, 1) if variant == "single_layer" else ())
        r = simulate_pff(plan, w, one_host, hosts=[0, 0], cores=2)
        rows.append({"run": f"{variant}, 2 nodes on one host (pff_mnist)", "measured": pff[variant]["train_seconds"],
                     "predicted": r.wall_seconds, "why": ""})
    # capped links: 10000 rows, 2 epochs in 2 chapters, each node in its own network namespace.
    # Their nodes' own busy seconds give the task times; what is compared is the nodes' span
    # (busy + idle of the node that finished last), as train_seconds there also holds ~3 s of
    # the master hearing over the capped link that the nodes are done.
    for variant in ("single_layer", "all_layers"):
        run = capped.get(f"{variant}/20mbit")
        if run is None or "paced_bytes_per_second" not in run:   # not measured since pacing was recorded
            continue
        splits = run["overrides"]["splits"]
        plan = PFFPlan(variant, 2, L, True, (0, 1) if variant == "single_layer" else ())
        # a node's busy seconds over the chapters it trained (All-Layers: 1 of the 2 each)
        busy = [n["busy_seconds"] / sum(bool(plan.parts_for(n["node"], j)) for j in range(splits))
                for n in run["per_node"]]
        if variant == "single_layer":
            tasks = (busy[0], busy[1] * 0.98, busy[1] * 0.02)
        else:   # each node trained every part in its chapters: mnist_default's split of the work
            share = [t / sum(w_sl.task_seconds) for t in w_sl.task_seconds]
            tasks = tuple(sum(busy) / 2 * s for s in share)
        versions = tuple(run["bytes_per_topic"][f"/dff/mnist_default/params/{t}"] / splits
                         for t in ("layer_0", "layer_1", "head"))
        r = simulate_pff(plan, Workload(tasks, versions, splits), paced(run))
        span = max(n["busy_seconds"] + n["idle_seconds"] for n in run["per_node"])
        rows.append({"run": f"{variant}, 2 hosts at 20 Mbit/s, nodes' span (capped_link)", "measured": round(span, 2),
                     "predicted": r.wall_seconds, "why": f"train_seconds {run['train_seconds']} s"})
        four = capped.get(f"{variant}/20mbit/4 servers")
        if variant == "all_layers" and four is not None and "paced_bytes_per_second" in four:
            # 4 hosts, their nodes time-sharing this machine's 2 cores; the tasks as timed on 2
            # hosts (a node to each core), the versions as the 4-host run published them
            n4, splits4 = four["nodes"], four["overrides"]["splits"]
            versions4 = tuple(four["bytes_per_topic"][f"/dff/mnist_default/params/{t}"] / splits4
                              for t in ("layer_0", "layer_1", "head"))
            r4 = simulate_pff(PFFPlan(variant, n4, L, True), Workload(tasks, versions4, splits4), paced(four),
                              cpus=[0] * n4, cores=machine_cores(four))
            span4 = max(n["busy_seconds"] + n["idle_seconds"] for n in four["per_node"])
            rows.append({"run": f"{variant}, {n4} hosts on {machine_cores(four)} cores at 20 Mbit/s, nodes' span "
                                "(capped_link)", "measured": round(span4, 2), "predicted": r4.wall_seconds,
                         "why": f"task times from the 2-host run; train_seconds {four['train_seconds']} s"})
    run = capped.get("dff/20mbit")
    if run is not None and "layer_busy_seconds" in run and "paced_bytes_per_second" in run:
        # each hop's training bytes per chapter as the layers reported them (the test set's passes
        # come after train_seconds)
        links = run["bytes_per_chapter"]
        splits = run["overrides"]["splits"]
        per = {k: sum(v) / splits for k, v in links.items()}
        # the layers' own busy seconds: training, the forward passes they send on, (de)coding
        tasks = tuple(b / splits for b in run["layer_busy_seconds"])
        w = Workload(tasks, (), splits, (per["layer_0 -> layer_1"], per["layer_1 -> master"]), per["master -> layer_0"])
        r = simulate_dff(w, paced(run))
        rows.append({"run": "dff, 2 hosts at 20 Mbit/s (capped_link)", "measured": run["train_seconds"],
                     "predicted": r.wall_seconds, "why": "task times: the layers' busy seconds"})
    for r in rows:
        r["predicted"] = round(r["predicted"], 1)
        r["error"] = round(r["predicted"] / r["measured"] - 1, 3)
    return rows


def paper_net(w: Workload) -> Workload:
    """784-[2000]x4 and a head, task seconds scaled by weight count from mnist_default's layer 1."""
    per_weight = w.task_seconds[1] / (1000 * 1000)
    sizes = [784 * 2000] + [2000 * 2000] * 3
    head = 2000 * 4 * 10
    tasks = tuple(per_weight * s for s in sizes) + (per_weight * head,)
    versions = tuple(4.0 * s for s in sizes) + (4.0 * head,)
    return Workload(tasks, versions, 20, (60000 * 2000 * 4 * 3,) * 4, 60000 * 800)


def predictions(name: str, w: Workload, layers: int, with_optimizer: float) -> list[dict]:
    out = []
    base = sum(w.task_seconds) * w.splits
    for link in LINKS:
        for n in NODES:
            cases = {}
            if n <= layers:
                nodes = tuple(min(i * n // layers, n - 1) for i in range(layers))
                cases["single_layer"] = simulate_pff(PFFPlan("single_layer", n, layers, True, nodes), w, link)
                cases["dff"] = simulate_dff(w, link, layer_nodes=[min(i * n // layers, n - 1) for i in range(layers)])
            heavy = Workload(w.task_seconds, tuple(b * with_optimizer for b in w.version_bytes), w.splits)
            cases["all_layers"] = simulate_pff(PFFPlan("all_layers", n, layers, True), heavy, link)
            for variant, r in cases.items():
                out.append({"model": name, "link": link.name, "nodes": n, "variant": variant,
                            "wall_seconds": round(r.wall_seconds, 1), "speedup": round(base / r.wall_seconds, 2),
                            "utilisation": round(r.utilisation, 3)})
    return out


def plot(rows: list[dict], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(len(models), len(LINKS), figsize=(4.2 * len(LINKS), 3.6 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        for j, link in enumerate(LINKS):
            ax = axes[i][j]
            for variant, style in (("all_layers", "o-"), ("single_layer", "s-"), ("dff", "^--")):
                pts = [(r["nodes"], r["speedup"]) for r in rows
                       if r["model"] == model and r["link"] == link.name and r["variant"] == variant]
                if pts:
                    ax.plot(*zip(*pts), style, label=variant.replace("_", "-") if variant != "dff" else "DFF chapters")
            ax.plot(NODES, NODES, ":", color="grey", label="linear")
            if "paper" in model:
                ax.plot(*PFF_PAPER, "r*", markersize=12, label="PFF paper, 4 nodes")
            ax.set_title(f"{model}, {link.name}", fontsize=9)
            ax.set_xlabel("nodes")
            ax.set_ylabel("speed-up vs 1 node")
            ax.set_ylim(0, 8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def tables(checks: list[dict], rows: list[dict]) -> str:
    """The validation table, then the predictions at N = 2, 4, 8, 16."""
    out = markdown_table(["measured run", "measured s", "predicted s", "error", "note"],
                         [[c["run"], c["measured"], c["predicted"], f"{100 * c['error']:+.0f} %", c["why"]]
                          for c in checks])
    cell = {(r["model"], r["link"], r["variant"], r["nodes"]): f"{r['speedup']}x ({100 * r['utilisation']:.0f} %)"
            for r in rows}
    cases = dict.fromkeys((r["model"], r["link"], r["variant"]) for r in rows)
    return out + "\n\n" + markdown_table(["model", "link", "variant", "N=2", "N=4", "N=8", "N=16"],
                                          [[*case] + [cell.get((*case, n), "–") for n in (2, 4, 8, 16)]
                                           for case in cases])


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--no-readme", action="store_true")
    args = a.parse_args()
    pff, capped = _runs("pff_mnist"), _runs("capped_link")
    w_sl, w_al, inputs = measured_workload(pff)
    checks = validate(pff, capped, w_sl, w_al)
    optimizer = w_al.version_bytes[1] / w_sl.version_bytes[1]   # All-Layers passes Adam's state too
    rows = (predictions("mnist_default", w_sl, 2, optimizer)
            + predictions("784-[2000]x4 (PFF paper)", paper_net(w_sl), 4, optimizer))
    png = RESULTS / "scaling.png"
    plot(rows, png)
    m = machine()
    write_results("scaling", [{"key": "validation", "rows": checks, "inputs": inputs, "machine": m},
                              {"key": "predictions", "rows": rows, "png": str(png.relative_to(RESULTS.parent.parent)),
                               "machine": m}], key="key")
    table = tables(checks, rows) + (
        f"\n\nSimulated on {m['cores']}-core {m['cpu']}, {m['date']}, from the measured rows named above "
        "(speed-up against the same workload's 1-node time; utilisation in brackets). Plot: bench/results/scaling.png")
    publish_table("scaling", table, readme=not args.no_readme)


if __name__ == "__main__":
    main()
