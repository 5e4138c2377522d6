"""Start the MNIST pipeline's nodes as processes, from the same pipeline YAML the ROS 2 launch
file reads (`launch`/`launch_ros` are not needed):

    python -m dff_ros.launcher [--pipeline config/mnist_pipeline.yaml] [--role all|master|server]
                              [--servers N] [--set key=value] [--train-set key=value]

role all: N servers and the master on this machine; server: one server (per robot);
master: the master only, using the servers already running in the ROS domain.
Output of every process is prefixed with its name; the exit code is the master's (role server:
the server's). SIGINT or SIGTERM to the launcher stops every process it started, the master
first (it drops its run's layers on the servers), and exits 130 / 143.

--emulate-hosts (root): role all, but every node on its own "host", a network namespace with
its own IP on a bridge (dff_ros.netns), DDS over UDP only; --rate caps each host's egress
(e.g. 20mbit, WiFi between SBCs) and paces every node's DDS writers to 80 % of it (a Fast DDS
flow controller). At the end the launcher prints what each host sent and received.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from dff_ros.config.pipeline import load_pipeline_config, server_arguments
from dff_ros.config.schema import ConfigError
from dff_ros.config.files import config_file, default_pipeline, parse_set
from dff_ros.procenv import node_env
from dff_ros.stopping import Interrupted, ignore, install


def _pump(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:
        sys.stdout.write(f"[{prefix}] {line}" if not line.startswith("[") else line)
        sys.stdout.flush()


def start(cmd: list[str], prefix: str, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, **node_env(), **(env or {}), "PYTHONUNBUFFERED": "1"})
    threading.Thread(target=_pump, args=(proc, prefix), daemon=True).start()
    return proc


def stop(procs: list[subprocess.Popen], timeout: float = 5.0) -> None:
    """SIGINT to each process still running, then SIGKILL to any still there after ``timeout``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"[launcher] pid {p.pid} did not stop within {timeout:.0f} s: killed", file=sys.stderr, flush=True)
            p.kill()
            p.wait()


def main(argv=None) -> int:
    a = argparse.ArgumentParser(prog="dff_ros launcher", description=__doc__.split("\n\n")[0])
    a.add_argument("--pipeline", default=None)
    a.add_argument("--role", choices=("all", "master", "server"), default="all")
    a.add_argument("--servers", type=int, default=None, help="servers to start (role all; default from the YAML)")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE")
    a.add_argument("--no-progress", action="store_true")
    a.add_argument("--emulate-hosts", action="store_true",
                   help="each node in its own network namespace (needs root; role all)")
    a.add_argument("--rate", default=None, help="with --emulate-hosts: egress cap per host, e.g. 20mbit")
    args = a.parse_args(argv)
    if (args.emulate_hosts and args.role != "all") or (args.rate and not args.emulate_hosts):
        a.error("--emulate-hosts needs role all; --rate needs --emulate-hosts")
    path = args.pipeline or default_pipeline()
    overrides = parse_set(args.set)
    if args.servers is not None:
        overrides["servers"] = args.servers
    try:
        cfg = load_pipeline_config(path, overrides)
    except ConfigError as e:
        print(f"[launcher] config error: {e}", file=sys.stderr)
        return 2
    py = sys.executable
    here = cfg.servers if args.role == "all" else 1
    server_cmd = [py, "-m", "dff_ros.nodes.server", *server_arguments(cfg, here)]
    master_cmd = [py, "-m", "dff_ros.nodes.master", "--pipeline", path]
    for item in args.set + ([f"servers={args.servers}"] if args.servers is not None else []):
        master_cmd += ["--set", item]
    for item in args.train_set:
        master_cmd += ["--train-set", item]
    if args.no_progress:
        master_cmd.append("--no-progress")

    install()   # SIGINT / SIGTERM raise Interrupted here; the children are stopped below
    servers: list[subprocess.Popen] = []
    master = None
    hosts = scratch = None
    try:
        if args.role == "server":
            servers.append(start(server_cmd, "server"))
            return servers[0].wait()
        wrap, env = (lambda i, cmd: cmd), None
        if args.emulate_hosts:
            from dff_ros.netns import NetnsUnavailable, VirtualHosts
            try:
                hosts = VirtualHosts(cfg.servers + 1, prefix=f"dff{os.getpid() % 100000}",
                                     subnet=f"10.{150 + os.getpid() % 100}.0", rate=args.rate).up()
            except (NetnsUnavailable, ValueError) as e:
                print(f"[launcher] cannot emulate hosts: {e}", file=sys.stderr)
                return 2
            wrap = hosts.command
            profile = config_file("fastdds_udp_profile.xml")
            if args.rate:   # pace every node below its link, or the link drowns in resends
                from dff_ros.netns import host_pacing, readers_per_sample, with_flow_controller
                scratch = tempfile.TemporaryDirectory(prefix="dff_ros_")
                paced = Path(scratch.name) / "fastdds_udp_paced.xml"
                readers = readers_per_sample(cfg.transport, cfg.servers)
                paced.write_text(with_flow_controller(Path(profile).read_text(), *host_pacing(args.rate, readers)))
                profile = str(paced)
            env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",   # discovery across the bridge, data over UDP
                   "FASTDDS_DEFAULT_PROFILES_FILE": profile,
                   "RMW_FASTRTPS_PUBLICATION_MODE": "AUTO"}     # the profile's publish mode applies
            print(f"[launcher] hosts: master on {hosts.address(0)}, servers on "
                  f"{', '.join(hosts.address(i + 1) for i in range(cfg.servers))}"
                  + (f", egress capped at {args.rate}" if args.rate else ""), flush=True)
        if args.role == "all":
            servers = [start(wrap(i + 1, server_cmd), f"server#{i + 1}", env) for i in range(cfg.servers)]
        master = start(wrap(0, master_cmd), "master", env)
        return master.wait()
    except Interrupted as e:
        print(f"[launcher] {e}: stopping", file=sys.stderr, flush=True)
        return e.exit_code
    finally:
        if master is not None:
            stop([master])   # first: it drops its run's layers while the servers still answer
        stop(servers)
        if hosts is not None:
            for i in range(hosts.count):
                print(f"[launcher] host {hosts.address(i)} ({'master' if i == 0 else f'server#{i}'}) "
                      f"sent {hosts.sent_bytes(i)} bytes, received {hosts.received_bytes(i)} bytes", flush=True)
            hosts.down()
        if scratch is not None:
            scratch.cleanup()
        ignore()


if __name__ == "__main__":
    sys.exit(main())
