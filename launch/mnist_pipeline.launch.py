"""MNIST pipeline on one or several machines (ROS 2 launch).

    ros2 launch dff_ros mnist_pipeline.launch.py                      # master + 2 servers here
    ros2 launch dff_ros mnist_pipeline.launch.py role:=server         # on each robot
    ros2 launch dff_ros mnist_pipeline.launch.py role:=master servers:=4
    ros2 launch dff_ros mnist_pipeline.launch.py transport:=parameters pff_variant:=all_layers

Arguments: role (all | master | server), servers (how many to start for role all, and how many
the master waits for), pipeline (YAML; default share/dff_ros/config/mnist_pipeline.yaml),
model, layer_types, data_root, weights_dir, server_threads, server_solo_threads, transport,
pff_variant (override the pipeline YAML when given; the servers take their settings from it too).
Servers name themselves server_<n>. With a master here (role all or master), launch ends when
the master does: after the run, or with an error and a non-zero exit code when the run failed.
Ctrl-C stops every node within ~2 s; the master drops its run's layers on the servers first.
Without `launch`, `python -m dff_ros.launcher` starts the same processes from the same YAML.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dff_ros.config.pipeline import load_pipeline_config, server_arguments
from dff_ros.procenv import node_env

ARGS = {
    "role": ("all", "all: master + servers here; master: only the master; server: one server"),
    "servers": ("", "servers to start (role all) and to wait for (master) (default: the pipeline's)"),
    "pipeline": ("", "pipeline YAML (default: the package's config/mnist_pipeline.yaml)"),
    "model": ("", "model YAML (overrides the pipeline's)"),
    "layer_types": ("", "layer-type YAML (overrides the pipeline's)"),
    "data_root": ("", "dataset folder (overrides the pipeline's)"),
    "weights_dir": ("", "where servers keep layer weights (overrides the pipeline's)"),
    "server_threads": ("", "torch threads per server (default: the pipeline's)"),
    "server_solo_threads": ("", "threads of a server while the others have no work "
                                "(default: the pipeline's; 0: the cores the servers started here share)"),
    "transport": ("", "activations (DFF) | parameters (PFF) (overrides the pipeline's)"),
    "pff_variant": ("", "single_layer | all_layers | federated (overrides the pipeline's)"),
}


OVERRIDES = ("servers", "model", "layer_types", "data_root", "weights_dir", "server_threads",
             "server_solo_threads", "transport", "pff_variant")


def _master_exited(event, context):
    """The run is over: stop the servers too; a failed master fails the launch (exit code 1).
    Stopped by Ctrl-C (launch is shutting down already): nothing more to do."""
    if context.is_shutdown:
        return None
    if event.returncode:
        raise RuntimeError(f"the master failed (exit code {event.returncode}); its log above says why")
    return [Shutdown(reason="the master finished its run")]


def _nodes(context):
    value = {k: LaunchConfiguration(k).perform(context) for k in ARGS}
    share = get_package_share_directory("dff_ros")
    pipeline = value["pipeline"] or os.path.join(share, "config", "mnist_pipeline.yaml")
    overrides = {k: value[k] for k in OVERRIDES if value[k]}
    for k in ("servers", "server_threads", "server_solo_threads"):
        if k in overrides:
            overrides[k] = int(overrides[k])
    cfg = load_pipeline_config(pipeline, overrides)   # a bad value: an error naming the file and key
    profile = os.path.join(share, "config", "fastdds_profile.xml")
    env = {} if os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") else {"FASTDDS_DEFAULT_PROFILES_FILE": profile}
    env.update(node_env())   # fast large copies, thread-count-independent matmuls (dff_ros/procenv.py)
    role = value["role"]
    if role not in ("all", "master", "server"):
        raise RuntimeError(f"role must be all, master or server, got {role!r}")
    count = cfg.servers if role == "all" else 1
    server_args = server_arguments(cfg, count)
    master_args = ["--pipeline", pipeline]
    for key, v in overrides.items():
        master_args += ["--set", f"{key}={v}"]
    actions = []
    if role in ("all", "server"):
        actions += [Node(package="dff_ros", executable="server", name=None, output="screen",
                         arguments=server_args, additional_env=env) for _ in range(count)]
    if role in ("all", "master"):
        actions.append(Node(package="dff_ros", executable="master", output="screen", arguments=master_args,
                            additional_env=env, on_exit=_master_exited))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(k, default_value=d, description=h) for k, (d, h) in ARGS.items()]
        + [OpaqueFunction(function=_nodes)])
