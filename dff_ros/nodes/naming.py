"""Server names without a coordinator: the next free ``server_<n>``, even when several
servers start at once.

A starting server looks at the ROS graph and at the claims others published (transient
local, so late joiners see them), claims the lowest free name with a random token and waits a
settling time; if a claim with a lower token for the same name shows up, it steps to the next
free name and tries again. Discovery can be slower than the settling time on a busy
machine, so a running server keeps listening: if another running server holds its name with a
lower token while it hosts nothing yet, it gives the name up and claims again
(ServerNode.conflict).
"""
from __future__ import annotations

import os
import random
import socket
import time

from dff_ros import stopping
from dff_ros.nodes.common import CLAIMS_QOS, SERVER_NAME
from dff_ros.topics import CLAIMS_TOPIC


def lowest_free(taken: set[int]) -> int:
    n = 1
    while n in taken:
        n += 1
    return n


def winner(claims: dict[int, set[int]], index: int, my_token: int) -> bool:
    """Whether ``my_token`` keeps ``index`` against the other claims for it (lowest wins)."""
    return all(my_token < other for other in claims.get(index, set()) if other != my_token)


def claim_server_name(context, discovery_seconds: float = 2.0, settle_seconds: float = 1.5,
                      log=print, exclude: set[int] | None = None) -> tuple[str, int]:
    """Pick this server's name; returns (name, token). Runs a short-lived helper node."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from dff_ros.msg import ServerClaim

    token = random.SystemRandom().getrandbits(63)
    node = rclpy.create_node(f"dff_server_claim_{token:016x}", context=context,
                             enable_rosout=False, start_parameter_services=False)
    claims: dict[int, set[int]] = {}   # index -> tokens claiming it
    held: set[int] = set()

    def on_claim(msg):
        m = SERVER_NAME.match(msg.name)
        if m:
            claims.setdefault(int(m.group(1)), set()).add(msg.token)
            if msg.held and msg.token != token:
                held.add(int(m.group(1)))

    node.create_subscription(ServerClaim, CLAIMS_TOPIC, on_claim, CLAIMS_QOS)
    pub = node.create_publisher(ServerClaim, CLAIMS_TOPIC, CLAIMS_QOS)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin_for(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
            stopping.check()   # a signal while the server picks its name

    try:
        spin_for(discovery_seconds)
        lost: set[int] = set(exclude or ())
        while True:
            running = {int(m.group(1)) for n, _ in node.get_node_names_and_namespaces()
                       if (m := SERVER_NAME.match(n))}
            index = lowest_free(running | held | lost)
            pub.publish(ServerClaim(name=f"server_{index}", token=token, hostname=socket.gethostname(),
                                    pid=os.getpid(), held=False))
            spin_for(settle_seconds)
            running = {int(m.group(1)) for n, _ in node.get_node_names_and_namespaces()
                       if (m := SERVER_NAME.match(n))}
            if index not in running and index not in held and winner(claims, index, token):
                return f"server_{index}", token
            log(f"name server_{index} is taken by another server; trying the next one")
            lost.add(index)
    finally:
        executor.remove_node(node)
        node.destroy_node()
