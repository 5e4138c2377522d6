"""Activation-stream throughput between two processes on one host over real DDS.

A publisher process sends TrainingBatch messages whose `pos` is a [rows x width] float32
tensor (default 64x2000, the issue's reference batch); a subscriber process turns each one
back into a tensor and counts bytes. Lossless (reliable, KEEP_ALL) with a bounded window,
as the pipeline runs. Writes bench/results/transport_throughput.{json,md}.

    source scripts/env.sh && python bench/transport_throughput.py [--rows 64 --width 2000 --seconds 10]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, machine_cell, markdown_table, update_readme, write_results  # noqa: E402


def role_sub(args) -> None:
    import rclpy
    from dff_ros.msg import TrainingBatch
    from dff_ros.nodes.common import DATA_QOS
    from dff_ros.transport.tensors import from_msg
    from std_msgs.msg import UInt64

    rclpy.init()
    node = rclpy.create_node("bench_sub")
    ack = node.create_publisher(UInt64, "/bench/ack", DATA_QOS)
    state = {"n": 0, "bytes": 0, "t0": None, "done": False}

    def on_msg(m):
        t = from_msg(m.pos)
        state["n"] += 1
        state["bytes"] += t.numel() * t.element_size()
        if state["t0"] is None:
            state["t0"] = time.perf_counter()
        ack.publish(UInt64(data=state["n"]))
        if m.seq == m.count - 1:
            dt = time.perf_counter() - state["t0"]
            print(json.dumps({"received": state["n"], "bytes": state["bytes"], "seconds": dt}), flush=True)
            state["done"] = True

    node.create_subscription(TrainingBatch, "/bench/data", on_msg, DATA_QOS)
    while not state["done"]:
        rclpy.spin_once(node, timeout_sec=0.1)
    time.sleep(0.5)  # let the last ack go out
    rclpy.shutdown()


def role_pub(args) -> None:
    import rclpy
    import torch
    from dff_ros.msg import TrainingBatch
    from dff_ros.nodes.common import DATA_QOS
    from dff_ros.transport.tensors import to_msg
    from std_msgs.msg import UInt64

    rclpy.init()
    node = rclpy.create_node("bench_pub")
    pub = node.create_publisher(TrainingBatch, "/bench/data", DATA_QOS)
    acked = {"n": 0}
    node.create_subscription(UInt64, "/bench/ack", lambda m: acked.__setitem__("n", m.data), DATA_QOS)
    while pub.get_subscription_count() < 1 or node.count_publishers("/bench/ack") < 1:
        rclpy.spin_once(node, timeout_sec=0.1)
    time.sleep(1.0)
    x = torch.randn(args.rows, args.width)
    count = args.messages
    t0 = time.perf_counter()
    fill = 0.0
    for seq in range(count):
        while seq - acked["n"] >= args.window:
            rclpy.spin_once(node, timeout_sec=0.01)
        f0 = time.perf_counter()
        m = TrainingBatch(seq=seq, count=count)
        to_msg(x, m.pos)
        fill += time.perf_counter() - f0
        pub.publish(m)
    while acked["n"] < count:
        rclpy.spin_once(node, timeout_sec=0.01)
    print(json.dumps({"sent": count, "seconds": time.perf_counter() - t0, "fill_seconds": fill}), flush=True)
    rclpy.shutdown()


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--role", choices=("pub", "sub"))
    a.add_argument("--rows", type=int, default=64)
    a.add_argument("--width", type=int, default=2000)
    a.add_argument("--messages", type=int, default=2000)
    a.add_argument("--window", type=int, default=8)
    a.add_argument("--no-readme", action="store_true")
    args = a.parse_args()
    if args.role == "sub":
        return role_sub(args)
    if args.role == "pub":
        return role_pub(args)
    env = {**os.environ, "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID", "77"),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    common = [sys.executable, __file__, "--rows", str(args.rows), "--width", str(args.width),
              "--messages", str(args.messages), "--window", str(args.window)]
    sub = subprocess.Popen(common + ["--role", "sub"], stdout=subprocess.PIPE, text=True, env=env)
    pub = subprocess.Popen(common + ["--role", "pub"], stdout=subprocess.PIPE, text=True, env=env)
    p_out, _ = pub.communicate(timeout=600)
    s_out, _ = sub.communicate(timeout=60)
    p, s = json.loads(p_out.strip().splitlines()[-1]), json.loads(s_out.strip().splitlines()[-1])
    mb = s["bytes"] / 1e6
    profile = os.path.basename(os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")) or "Fast DDS defaults"
    row = {"case": f"{args.rows}x{args.width} float32, window {args.window}, {profile}",
           "rmw": os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
           "messages": s["received"], "message_MB": round(args.rows * args.width * 4 / 1e6, 3),
           "MB_per_s": round(mb / s["seconds"], 1), "msgs_per_s": round(s["received"] / s["seconds"], 1),
           "fill_ms_per_msg": round(1000 * p["fill_seconds"] / p["sent"], 3), "machine": machine()}
    runs = write_results("transport_throughput", [row], key="case")
    table = markdown_table(["case", "RMW", "MB/s", "msgs/s", "fill ms/msg", "machine"],
                           [[r["case"], r["rmw"], r["MB_per_s"], r["msgs_per_s"], r["fill_ms_per_msg"],
                             machine_cell(r["machine"])] for r in runs])
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "transport_throughput.md"), "w") as f:
        f.write(table)
    print(table)
    if not args.no_readme:
        update_readme("transport_throughput", table)


if __name__ == "__main__":
    main()
