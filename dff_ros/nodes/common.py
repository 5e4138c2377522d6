"""What the ROS adapters share: QoS profiles, ROS parameters, server discovery, executors, and
the data topics' serialized publishing and receiving."""
from __future__ import annotations

import os
import re
import threading
import weakref

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from dff_ros.wire import cdr
from dff_ros.wire.rcl import SerializedPublisher

SERVER_NAME = re.compile(r"^server_(\d+)$")   # the names servers give themselves (naming.py)
SERVER_SERVICE = ("create_layers", "dff_ros/srv/CreateLayers")   # what makes a node a server

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




def answering(node, name: str, callback):
    """``callback`` as service ``name``'s callback that answers whatever happens: an exception no
    check foresaw (a bug, an error torch raises) becomes a refusal with the error in ``message``,
    counted in ``node.service_errors`` and logged once per service, never a dead node."""

    def answer(req, res):
        try:
            return callback(req, res)
        except Exception as e:
            why = f"{name} failed: {type(e).__name__}: {e}"[:2000]
            errors = node.__dict__.setdefault("service_errors", {})
            errors[name] = errors.get(name, 0) + 1
            if errors[name] == 1:
                node.get_logger().error(f"{why} (answered as a refusal; more such errors are only counted)")
            if hasattr(res, "success"):
                res.success = False
            if hasattr(res, "message"):
                res.message = why
            return res
    return answer


_SERIALIZED = weakref.WeakKeyDictionary()   # rclpy publisher -> its SerializedPublisher (and buffer)
_SERIALIZED_LOCK = threading.Lock()


def publish_serialized(pub, msg) -> int:
    """Publish ``msg`` (a message or its ``cdr.Blank``) on the rclpy publisher ``pub`` as CDR
    that ``dff_ros.wire`` writes once into the publisher's buffer and rcl sends from there (rosidl
    would copy each tensor several times); returns the bytes sent."""
    with _SERIALIZED_LOCK:
        serialized = _SERIALIZED.get(pub)
        if serialized is None:
            serialized = _SERIALIZED[pub] = SerializedPublisher(pub)
    return serialized.publish(msg)


def subscribe_serialized(node, msg_type, topic: str, callback, qos, on_malformed):
    """A subscription that hands ``callback`` a ``cdr.Blank`` read from the serialized message (its
    tensors view the received bytes), and ``on_malformed`` the reason for bytes that do not parse."""

    def receive(data: bytes) -> None:
        try:
            msg = cdr.deserialize(data, msg_type)
        except cdr.CDRError as e:
            return on_malformed(str(e))
        callback(msg)

    return node.create_subscription(msg_type, topic, receive, qos, raw=True)
