"""Names, topics, paths and QoS shared by the master and the servers."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from dff_ros.pff.plan import NEGATIVES

LAYER_WEIGHTS_FORMAT = "dff_ros.layer/1"   # one layer, saved by the server hosting or training it
HEAD_WEIGHTS_FORMAT = "dff_ros.head/1"     # a softmax head
RUN_STATE_FORMAT = "dff_ros.run/1"         # a DFF run in progress, saved by the master after each chapter
SERVER_NAME = re.compile(r"^server_(\d+)$")   # the names servers give themselves (naming.py)
SERVER_SERVICE = ("create_layers", "dff_ros/srv/CreateLayers")   # what makes a node a server
STATUS_TOPIC = "/dff/status"
CLAIMS_TOPIC = "/dff/server_claims"

# Training/inference chunks: lossless and in order. KEEP_ALL makes a full writer wait instead
# of overwriting; the master bounds what is in flight, so nothing piles up.
DATA_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
STATUS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
CLAIMS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)



def declare_settings(node, values: dict, help: dict) -> dict:
    """Declare each setting as a read-only ROS parameter of ``node``, so `ros2 param list/get/
    dump` show what it runs with. A value given with ``--ros-args -p``, ``--params-file`` or a
    launch file's ``parameters=[...]`` wins over ``values`` (the flags' and files' values);
    returns the values in effect, for the caller to validate. Typing is dynamic: the caller's
    validation names a bad value (and a null setting is a parameter that is not set)."""
    from rcl_interfaces.msg import ParameterDescriptor

    out = {}
    for key, value in values.items():
        desc = ParameterDescriptor(description=help.get(key, ""), read_only=True, dynamic_typing=True)
        out[key] = node.declare_parameter(key, value, desc).value
    return out


def discover_servers(node) -> list[str]:
    """The servers in ``node``'s graph: nodes that offer a ``<node>/create_layers`` service of
    type dff_ros/srv/CreateLayers, whatever their name and namespace. Each as its fully
    qualified name without the leading slash (``server_1``, ``robot1/server_kitchen``), so
    ``f"/{server}/list_layers"`` is its service; server_2 before server_10."""
    suffix, kind = "/" + SERVER_SERVICE[0], SERVER_SERVICE[1]
    found = {name[1:-len(suffix)] for name, types in node.get_service_names_and_types()
             if name.endswith(suffix) and kind in types and len(name) > len(suffix) + 1}
    return sorted(found, key=lambda s: (len(s), s))


def make_executor(context=None):
    """The executor a node spins. rclpy's EventsExecutor (`rclpy.experimental`, Kilted on) hands
    each message to its callback as DDS delivers it instead of rebuilding a wait set per spin,
    which makes it the fastest of rclpy's here by far (bench/transport_throughput.py). Call its
    spin_once from one thread (its spin() in a second thread busy-waited holding the GIL here)
    and shut it down before exit.
    DFF_EXECUTOR=single (also what an rclpy without it gets) or multi picks rclpy's others."""
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    kind = os.environ.get("DFF_EXECUTOR", "events")
    if kind not in ("events", "single", "multi"):
        raise ValueError(f"DFF_EXECUTOR={kind!r}: use events, single or multi")
    if kind == "multi":
        return MultiThreadedExecutor(num_threads=2, context=context)
    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:
            pass
        else:
            return EventsExecutor(context=context)
    return SingleThreadedExecutor(context=context)


def spin_until_shutdown(executor, context) -> None:
    """Spin ``executor`` until ``context`` shuts down (a spinner thread's body)."""
    from rclpy.executors import ExternalShutdownException
    try:
        while context.ok():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass


def params_qos(depth: int) -> QoSProfile:
    """PFF parameter versions: lossless, and the last ``depth`` kept for late joiners."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(1, depth), reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


# PFF task reports: one small message per trained task (its times, loss, input versions and the
# serialized size of the version it produced). The master follows a run on these and fetches
# only the final versions, so parameters cross the network once per consumer, not once more for
# the master; late or restarted listeners get the whole history.
TASKS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10000, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL)


def progress_topic(model: str) -> str:
    """The master's RunProgress (``params_qos(1)``: the latest for late listeners)."""
    return f"/dff/{topic_token(model)}/progress"


def checkpoints_topic(model: str) -> str:
    """DFF layer checkpoints (``params_qos``): each hosted layer's state after every chapter it
    trains (weights and optimizer, a few MB: ~1 % of a chapter's activations). The master keeps
    the newest per layer for the server that takes over a lost server's layer."""
    return f"/dff/{topic_token(model)}/checkpoints"


def tasks_topic(model: str) -> str:
    return f"/dff/{topic_token(model)}/tasks"


def topic_token(name: str) -> str:
    """A model name as one valid ROS name token: [A-Za-z0-9_], not starting with a digit."""
    token = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "model"
    return token if not token[0].isdigit() else f"m_{token}"


def path_token(name: str) -> str:
    """A name safe as one path component (no separators, no leading dot, bounded length)."""
    token = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:100]
    return token or "_"


def layer_topics(model: str, index: int, last_index: int) -> dict[str, str]:
    base = f"/dff/{topic_token(model)}"
    src = f"{base}/input" if index == 0 else f"{base}/layer_{index - 1}"
    dst = f"{base}/output" if index == last_index else f"{base}/layer_{index}"
    return {"train_input": f"{src}/train", "infer_input": f"{src}/infer",
            "train_output": f"{dst}/train", "infer_output": f"{dst}/infer"}


def params_topic(model: str, part: int, num_layers: int) -> str:
    """Where versions of one part go: /dff/<model>/params/layer_<i>, or .../head (part L), and
    adaptive negative labels (part NEGATIVES) /dff/<model>/negatives."""
    if part == NEGATIVES:
        return f"/dff/{topic_token(model)}/negatives"
    return f"/dff/{topic_token(model)}/params/" + ("head" if part == num_layers else f"layer_{part}")


def head_weights_file(model: str, widths, num_classes: int) -> str:
    """File name of a model's softmax head weights (keyed by what shapes the head)."""
    h = hashlib.sha256(json.dumps([model, list(widths), num_classes]).encode()).hexdigest()[:12]
    return f"head-{h}.pt"


def default_weights_dir() -> Path:
    base = os.environ.get("DFF_WEIGHTS_DIR")
    if base:
        return Path(base)
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "dff_ros" / "weights"
