"""Helpers for the ROS integration tests: real nodes in separate processes, one ROS domain
per test, localhost discovery."""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dff_ros.weights import path_token

REPO = Path(__file__).resolve().parents[1]
# Each test gets a domain of its own, so nodes of one test never see another's; a ROS_DOMAIN_ID
# set when the suite starts is honoured instead: every test then runs in that one domain.
_domains = (itertools.repeat(int(os.environ["ROS_DOMAIN_ID"])) if os.environ.get("ROS_DOMAIN_ID")
            else itertools.count(40 + (os.getpid() % 50) * 3))


def ros_env(**extra) -> dict:
    env = {**os.environ, "ROS_DOMAIN_ID": str(next(_domains)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "PYTHONUNBUFFERED": "1"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Proc:
    """A node process whose output is collected to a file (read it with .output())."""

    def __init__(self, args: list[str], env: dict, log: Path, wrap: list[str] = ()):
        """``wrap``: a command prefix, e.g. ``ip netns exec <host>`` to run on another "host"."""
        self.log = log
        self._f = open(log, "w")
        self.p = subprocess.Popen([*wrap, sys.executable, *args], stdout=self._f, stderr=subprocess.STDOUT, env=env,
                                  cwd=REPO)

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.output():
                return
            if self.p.poll() is not None:
                raise AssertionError(f"process exited ({self.p.returncode}) before {text!r}:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(2)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._f.close()


def start_server(env: dict, tmp: Path, name: str = "", weights: Path | None = None, wrap: list[str] = ()) -> Proc:
    args = ["-m", "dff_ros.nodes.server", "--weights-dir", str(weights or tmp / "weights")]
    if name:
        args += ["--name", name]
    return Proc(args, env, tmp / f"server-{name or time.monotonic_ns()}.log", wrap=wrap)


def master(env, tmp_path, pipeline, name="master", wrap: list[str] = ()) -> Proc:
    return Proc(["-m", "dff_ros.nodes.master", "--pipeline", str(pipeline), "--no-progress"], env,
                tmp_path / f"{name}.log", wrap=wrap)


def finished(run: Proc) -> dict:
    """The summary of a master run that ended well."""
    rc = run.p.wait(240)
    out = run.output()
    assert rc == 0, out
    return json.loads(open(re.search(r"\[dff_master\]: summary: (\S+)", out).group(1)).read())


def server_2_killed(env, tmp_path, pipeline, ready, delay: float):
    """server_1..3 and a master; server_2 is SIGKILLed ``delay`` s after a status of it
    satisfies ``ready``. The run's summary and that status."""
    servers = [start_server(env, tmp_path, name=f"server_{i}") for i in (1, 2, 3)]
    run = None
    try:
        for s in servers:
            s.wait_for("ready:")
        run = master(env, tmp_path, pipeline)
        killed = kill_when(Client(env), servers[1], "server_2", ready, delay=delay)
        return finished(run), killed
    finally:
        for p in [*servers, *([run] if run else [])]:
            p.stop()


def master_killed(env, tmp_path, pipeline, ready, state) -> tuple[dict, str, Proc]:
    """server_1, server_2 and a master; the master is SIGKILLed once a status satisfies
    ``ready`` and its run state file ``state`` exists, then started again. The second
    master's summary, the run id the first one had saved, and the second master."""
    from dff_ros.weights import load_weights

    servers = [start_server(env, tmp_path, name=f"server_{i}") for i in (1, 2)]
    runs = []
    try:
        for s in servers:
            s.wait_for("ready:")
        runs.append(master(env, tmp_path, pipeline, "first"))
        client = Client(env)
        try:
            wait_status(client, ready, timeout=120)
        finally:
            client.close()
        end = time.monotonic() + 60
        while not state.exists() and time.monotonic() < end:
            time.sleep(0.1)
        assert state.exists(), runs[0].output()
        saved_id = load_weights(state)["run_id"]
        runs[0].p.send_signal(signal.SIGKILL)
        runs[0].p.wait()
        runs.append(master(env, tmp_path, pipeline, "second"))
        return finished(runs[1]), saved_id, runs[1]
    finally:
        for p in [*servers, *runs]:
            p.stop()


class Client:
    """An rclpy node in the test process, on the test's domain."""

    def __init__(self, env: dict):
        import rclpy
        from rclpy.context import Context

        self.rclpy = rclpy
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.context = Context()
        rclpy.init(context=self.context, domain_id=int(env["ROS_DOMAIN_ID"]))
        self.node = rclpy.create_node("test_client", context=self.context)
        from rclpy.executors import SingleThreadedExecutor
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)

    def call(self, srv_type, name: str, request, timeout: float = 20.0, *, resend_every: float | None = None):
        """``resend_every``: for a query, send it again after that many seconds without an answer
        (within ``timeout``): a request that arrives before the service's reply writer has
        matched this client gets no answer (DDS), which a busy machine made happen here."""
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"{name} not available"
        deadline = time.monotonic() + timeout
        while True:
            future = client.call_async(request)
            wait = deadline - time.monotonic() if resend_every is None else min(resend_every, deadline - time.monotonic())
            self.executor.spin_until_future_complete(future, timeout_sec=max(wait, 0.0))
            if future.done() or time.monotonic() >= deadline:
                break
        assert future.done(), f"{name} did not answer in {timeout:.0f} s"
        return future.result()

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


def wait_status(client: Client, ready, timeout: float = 600.0):
    """The first /dff/status message that satisfies ``ready``."""
    from dff_ros.msg import LayerStatus
    from dff_ros.nodes.common import STATUS_QOS
    from dff_ros.topics import STATUS_TOPIC

    seen = []
    sub = client.node.create_subscription(LayerStatus, STATUS_TOPIC, seen.append, STATUS_QOS)
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            client.spin(0.1)
            hit = [m for m in seen if ready(m)]
            if hit:
                return hit[0]
            seen.clear()
        raise AssertionError(f"no status message as waited for within {timeout:.0f} s")
    finally:
        client.node.destroy_subscription(sub)


def kill_when(client: Client, server: Proc, name: str, ready, timeout: float = 600.0, close: bool = True,
              delay: float = 0.0):
    """SIGKILL ``server`` (no goodbye) ``delay`` s after one of its status messages satisfies
    ``ready``; returns that message. ``close``: close the client afterwards."""
    try:
        hit = wait_status(client, lambda m: m.server == name and ready(m), timeout)
        time.sleep(delay)
        server.p.send_signal(signal.SIGKILL)
        server.p.wait()
        return hit
    except AssertionError:
        raise AssertionError(f"{name} never reported what was waited for:\n{server.output()}") from None
    finally:
        if close:
            client.close()


MODEL = "pipe test"              # the model write_pipeline writes (a name with a space)
FOLDER = path_token(MODEL)        # its folder under a weights dir, and its run state's name


def write_pipeline(tmp_path, data_root, widths=(300, 300), pipeline=None, **train):
    """A small model + pipeline YAML in tmp_path (MNIST subset, 2 servers)."""
    model = {"name": MODEL, "model": [[-1, "FFDense", [w]] for w in widths],
             "train": {"epochs": 4, "splits": 2, "lr": 0.003, "train_subset": 4000, "test_subset": 1000,
                       "schedule": "chapters", **train}}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))
    pipe = {"model": "model.yaml", "layer_types": str(REPO / "config" / "layer_types.yaml"), "servers": 2,
            "data_root": str(data_root), "weights_dir": str(tmp_path / "weights"),
            "summary_dir": str(tmp_path / "runs"), "chunk_rows": 500, "stall_seconds": 60, **(pipeline or {})}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipe))
    return tmp_path / "pipeline.yaml"


def run_launcher(env, tmp_path, pipeline, *extra, name="run"):
    """Run the launcher (servers + master) to the end; its summary and output."""
    proc = Proc(["-m", "dff_ros.launcher", "--pipeline", str(pipeline), "--no-progress", *extra], env,
                tmp_path / f"{name}.log")
    try:
        rc = proc.p.wait(240)
    finally:
        proc.stop()
    out = proc.output()
    assert rc == 0, out
    summary = json.loads(open(re.search(r"\[dff_master\]: summary: (\S+)", out).group(1)).read())
    return summary, out


def check_run_plots(summary: dict, out: str, parts: list[str]) -> None:
    """A trained run's summary has per-epoch curves of every part and bytes per chapter, and
    the master wrote its curves and timeline PNGs."""
    h = summary["history"]
    epochs = summary["config"]["train"]["epochs"]
    assert sorted(h["loss"]) == sorted(parts) == sorted(h["accuracy"]), h
    for part in parts:
        loss, acc = h["loss"][part], h["accuracy"][part]
        assert len(loss) == len(acc) == epochs and None not in loss + acc, (part, loss, acc)
        assert loss[-1] < loss[0] and 0.5 < acc[-1] <= 1.0, (part, loss, acc)
    assert h["chapter_epochs"][-1] == epochs
    links = h["bytes_per_chapter"].values()
    assert links and all(len(v) == len(h["chapter_epochs"]) for v in links), h
    assert all(sum(v[c] for v in links) > 0 for c in range(len(h["chapter_epochs"]))), h   # bytes every chapter
    pngs = re.findall(r"\[dff_master\]: plot: (\S+)", out)
    assert sorted(Path(p).name.rsplit("-", 1)[1] for p in pngs) == ["curves.png", "timeline.png"], out[-2000:]
    assert all(Path(p).stat().st_size > 10_000 for p in pngs)
