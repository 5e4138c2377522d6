"""Activation-stream throughput between two processes on one host over real DDS.

A publisher process sends TrainingBatch messages whose `pos` is a [rows x width] float32
tensor (64x2000, the issue's reference batch, and 1000x2000, the pipeline's chunk); a
subscriber process turns each one back into a tensor and counts bytes. Lossless (reliable,
KEEP_ALL) with a bounded window, as the pipeline runs, and both spin the executor the nodes spin
(`dff_ros.nodes.common.make_executor`). Each case changes one setting against the nodes' own
(EventsExecutor, the project's Fast DDS profile, fast large copies, messages serialized by
`dff_ros.wire.cdr` and published as bytes): the executor, the profile, the copy tunable, rosidl's
own message conversion. Each row also times a plain memcpy of the same bytes right after it and
gives the ratio (this VM's speed drifts, so only that side-by-side ratio compares). Every case is measured in each run, 3 times (the table gives the median and
the range); writes bench/results/transport_throughput.{json,md} and the README table.

    source scripts/env.sh && python bench/transport_throughput.py [--messages-mb 2000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, RESULTS, machine, machine_cell, markdown_table, publish_table, write_results  # noqa: E402

from dff_ros.memcopy import glibc_tunables  # noqa: E402


def role_sub(args) -> None:
    import rclpy
    from dff_ros.msg import TrainingBatch
    from dff_ros.nodes.common import DATA_QOS, make_executor, subscribe_serialized
    from dff_ros.wire.codec import train_from_msg
    from std_msgs.msg import UInt64

    rclpy.init()
    node = rclpy.create_node("bench_sub")
    ack = node.create_publisher(UInt64, "/bench/ack", DATA_QOS)
    state = {"n": 0, "bytes": 0, "t0": None, "done": False}

    def on_msg(m):
        t = train_from_msg(m).acts.pos   # what a server does with a chunk before training on it
        state["n"] += 1
        state["bytes"] += t.numel() * t.element_size()
        if state["t0"] is None:
            state["t0"] = time.perf_counter()
        ack.publish(UInt64(data=state["n"]))
        if m.seq == m.count - 1:
            dt = time.perf_counter() - state["t0"]
            print(json.dumps({"received": state["n"], "bytes": state["bytes"], "seconds": dt,
                              "executor": type(executor).__name__}), flush=True)
            state["done"] = True

    if args.path == "cdr":
        subscribe_serialized(node, TrainingBatch, "/bench/data", on_msg, DATA_QOS, lambda why: print(why))
    else:
        node.create_subscription(TrainingBatch, "/bench/data", on_msg, DATA_QOS)
    executor = make_executor()
    executor.add_node(node)
    while not state["done"]:
        executor.spin_once(timeout_sec=0.1)
    end = time.monotonic() + 0.5   # let the last ack go out
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    executor.shutdown(timeout_sec=1.0)
    rclpy.shutdown()


def role_pub(args) -> None:
    import rclpy
    import torch
    from dff_ros.ff.learners import Activities
    from dff_ros.msg import TrainingBatch
    from dff_ros.nodes.common import DATA_QOS, make_executor, publish_serialized
    from dff_ros.pipeline.chunks import TrainChunk
    from dff_ros.wire.cdr import blank
    from dff_ros.wire.codec import train_to_msg
    from std_msgs.msg import UInt64

    rclpy.init()
    node = rclpy.create_node("bench_pub")
    pub = node.create_publisher(TrainingBatch, "/bench/data", DATA_QOS)
    acked = {"n": 0}
    node.create_subscription(UInt64, "/bench/ack", lambda m: acked.__setitem__("n", m.data), DATA_QOS)
    executor = make_executor()
    executor.add_node(node)
    while pub.get_subscription_count() < 1 or node.count_publishers("/bench/ack") < 1:
        executor.spin_once(timeout_sec=0.1)
    time.sleep(1.0)
    x = torch.randn(args.rows, args.width)
    labels = torch.zeros(args.rows, dtype=torch.int64)
    count = args.messages
    t0 = time.perf_counter()
    fill = 0.0
    for seq in range(count):
        while seq - acked["n"] >= args.window:
            executor.spin_once(timeout_sec=0.01)
        f0 = time.perf_counter()
        # the activities a layer sends on (pos only: the payload measured is one tensor)
        chunk = TrainChunk(0, 1, seq, count, labels, acts=Activities(x, None, None, labels))
        if args.path == "cdr":   # the nodes' path: serialized here, published as bytes
            m = train_to_msg(chunk, run_id="r", model="m", layer=0, msg=blank(TrainingBatch))
            fill += time.perf_counter() - f0
            publish_serialized(pub, m)
        else:
            m = train_to_msg(chunk, run_id="r", model="m", layer=0)
            fill += time.perf_counter() - f0
            pub.publish(m)
    while acked["n"] < count:
        executor.spin_once(timeout_sec=0.01)
    print(json.dumps({"sent": count, "seconds": time.perf_counter() - t0, "fill_seconds": fill}), flush=True)
    executor.shutdown(timeout_sec=1.0)
    rclpy.shutdown()


def memcpy_MB_per_s(message_bytes: int, seconds: float = 2.0) -> float:
    """One core copying a message's bytes, as often as fits in ``seconds``, from each of 8 buffers
    in turn to each of 8 others: like a stream of messages, the bytes (128 MB) are not in cache."""
    import numpy as np
    bufs = [np.frombuffer(np.random.bytes(message_bytes), dtype=np.uint8).copy() for _ in range(16)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        np.copyto(bufs[8 + n % 8], bufs[n % 8])
        n += 1
    return round(n * message_bytes / 1e6 / (time.perf_counter() - t0), 1)


def cases(repo: str) -> list[dict]:
    """The nodes' settings first, then one change each. `env` is laid over scripts/env.sh's."""
    profile = os.path.join(repo, "config", "fastdds_profile.xml")
    nodes = {"DFF_EXECUTOR": "events", "FASTDDS_DEFAULT_PROFILES_FILE": profile,
             "GLIBC_TUNABLES": glibc_tunables("")}
    return [
        {"name": "nodes' settings", "rows": 64, "env": nodes},
        {"name": "nodes' settings", "rows": 1000, "env": nodes},
        {"name": "rosidl messages", "rows": 64, "env": nodes, "path": "rosidl"},
        {"name": "rosidl messages", "rows": 1000, "env": nodes, "path": "rosidl"},
        {"name": "SingleThreadedExecutor", "rows": 64, "env": {**nodes, "DFF_EXECUTOR": "single"}},
        {"name": "MultiThreadedExecutor(2)", "rows": 64, "env": {**nodes, "DFF_EXECUTOR": "multi"}, "mb": 150},
        {"name": "glibc's defaults (no tunables)", "rows": 1000, "env": {**nodes, "GLIBC_TUNABLES": ""}},
        {"name": "Fast DDS default profile", "rows": 64, "env": {**nodes, "FASTDDS_DEFAULT_PROFILES_FILE": ""}},
    ]


def measure(case: dict, args) -> dict:
    """``args.repeats`` runs of one case: the median, and the range (this VM varies ~20 % from run to run)."""
    runs = [measure_once(case, args) for _ in range(args.repeats)]
    runs.sort(key=lambda r: r["MB_per_s"])
    row = dict(runs[len(runs) // 2])
    row["MB_per_s_range"] = [runs[0]["MB_per_s"], runs[-1]["MB_per_s"]]
    row["repeats"] = len(runs)
    print(f"{row['case']}: {row['MB_per_s']} MB/s (median of {len(runs)}; {row['MB_per_s_range']})", flush=True)
    return row


def measure_once(case: dict, args) -> dict:
    env = {**os.environ, "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID", "77"),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", **case["env"]}
    if not env["FASTDDS_DEFAULT_PROFILES_FILE"]:
        del env["FASTDDS_DEFAULT_PROFILES_FILE"]
    message_bytes = case["rows"] * args.width * 4
    messages = max(50, int(case.get("mb", args.messages_mb) * 1e6 / message_bytes))
    common = [sys.executable, __file__, "--rows", str(case["rows"]), "--width", str(args.width),
              "--messages", str(messages), "--window", str(args.window), "--path", case.get("path", "cdr")]
    sub = subprocess.Popen(common + ["--role", "sub"], stdout=subprocess.PIPE, text=True, env=env)
    pub = subprocess.Popen(common + ["--role", "pub"], stdout=subprocess.PIPE, text=True, env=env)
    p_out, _ = pub.communicate(timeout=600)
    s_out, _ = sub.communicate(timeout=60)
    if pub.returncode or sub.returncode:
        raise SystemExit(f"{case['name']}: publisher exited {pub.returncode}, subscriber {sub.returncode}")
    p, s = json.loads(p_out.strip().splitlines()[-1]), json.loads(s_out.strip().splitlines()[-1])
    row = {"case": f"{case['rows']}x{args.width} float32, {case['name']}", "executor": s["executor"],
           "path": "rosidl messages" if case.get("path") == "rosidl" else "serialized by dff_ros.wire.cdr",
           "profile": os.path.basename(env.get("FASTDDS_DEFAULT_PROFILES_FILE", "")) or "Fast DDS defaults",
           "glibc_tunables": env["GLIBC_TUNABLES"] or "(none)", "window": args.window,
           "rmw": os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
           "messages": s["received"], "message_MB": round(message_bytes / 1e6, 3),
           "MB_per_s": round(s["bytes"] / 1e6 / s["seconds"], 1), "msgs_per_s": round(s["received"] / s["seconds"], 1),
           "fill_ms_per_msg": round(1000 * p["fill_seconds"] / p["sent"], 3), "machine": machine()}
    return row


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--role", choices=("pub", "sub"))
    a.add_argument("--rows", type=int, default=64)
    a.add_argument("--width", type=int, default=2000)
    a.add_argument("--messages", type=int, default=2000, help="(pub/sub roles)")
    a.add_argument("--messages-mb", type=float, default=2000, help="MB sent per run of a case")
    a.add_argument("--repeats", type=int, default=3, help="runs per case (the table gives the median)")
    a.add_argument("--window", type=int, default=8)
    a.add_argument("--path", choices=("cdr", "rosidl"), default="cdr", help="(pub/sub roles)")
    a.add_argument("--no-readme", action="store_true")
    args = a.parse_args()
    if args.role == "sub":
        return role_sub(args)
    if args.role == "pub":
        return role_pub(args)
    runs = []
    for c in cases(str(REPO)):
        row = measure(c, args)
        # a plain memcpy of the same bytes, here and now: what one core moves with nothing else
        row["memcpy_MB_per_s"] = memcpy_MB_per_s(int(row["message_MB"] * 1e6))
        row["of_memcpy"] = round(row["MB_per_s"] / row["memcpy_MB_per_s"], 3)
        runs.append(row)
    (RESULTS / "transport_throughput.json").unlink(missing_ok=True)   # every case is measured each run
    write_results("transport_throughput", runs, key="case")
    table = markdown_table(["case", "executor", "Fast DDS profile", "MB/s (median)", "range of runs", "msgs/s",
                            "fill ms/msg", "memcpy MB/s", "of memcpy", "machine"],
                           [[r["case"], r["executor"], r["profile"], r["MB_per_s"],
                             "–".join(f"{v:.0f}" for v in r["MB_per_s_range"]) + f" ({r['repeats']} runs)",
                             r["msgs_per_s"], r["fill_ms_per_msg"], r["memcpy_MB_per_s"], r["of_memcpy"],
                             machine_cell(r["machine"])] for r in runs])
    publish_table("transport_throughput", table, readme=not args.no_readme)


if __name__ == "__main__":
    main()
