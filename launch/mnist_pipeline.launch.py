"""MNIST pipeline on one or several machines (ROS 2 launch).

    ros2 launch dff_ros mnist_pipeline.launch.py                      # master + 2 servers here
    ros2 launch dff_ros mnist_pipeline.launch.py role:=server         # on each robot
    ros2 launch dff_ros mnist_pipeline.launch.py role:=master servers:=4
    ros2 launch dff_ros mnist_pipeline.launch.py transport:=parameters pff_variant:=all_layers

Arguments: role (all | master | server), servers (how many to start for role all, and how many
the master waits for), pipeline (YAML; default share/dff_ros/config/mnist_pipeline.yaml),
model, layer_types, data_root, weights_dir, transport, pff_variant (override the pipeline YAML
when given).
Servers name themselves server_<n>. Without `launch`, `python -m dff_ros.launcher` starts the
same processes from the same YAML.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dff_ros.config.pipeline import solo_threads
from dff_ros.memcopy import node_env

ARGS = {
    "role": ("all", "all: master + servers here; master: only the master; server: one server"),
    "servers": ("2", "servers to start (role all) and to wait for (master)"),
    "pipeline": ("", "pipeline YAML (default: the package's config/mnist_pipeline.yaml)"),
    "model": ("", "model YAML (overrides the pipeline's)"),
    "layer_types": ("", "layer-type YAML (overrides the pipeline's)"),
    "data_root": ("", "dataset folder (overrides the pipeline's)"),
    "weights_dir": ("", "where servers keep layer weights (overrides the pipeline's)"),
    "server_threads": ("1", "torch threads per server"),
    "server_solo_threads": ("0", "PFF: threads of a server while the others have no work "
                                 "(0: the cores the servers started here share)"),
    "transport": ("", "activations (DFF) | parameters (PFF) (overrides the pipeline's)"),
    "pff_variant": ("", "single_layer | all_layers | federated (overrides the pipeline's)"),
}


def _nodes(context):
    value = {k: LaunchConfiguration(k).perform(context) for k in ARGS}
    share = get_package_share_directory("dff_ros")
    pipeline = value["pipeline"] or os.path.join(share, "config", "mnist_pipeline.yaml")
    profile = os.path.join(share, "config", "fastdds_profile.xml")
    env = {} if os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") else {"FASTDDS_DEFAULT_PROFILES_FILE": profile}
    env.update(node_env())   # fast large copies on older glibc (dff_ros/memcopy.py)
    here = int(value["servers"]) if value["role"] == "all" else 1
    threads = int(value["server_threads"])
    server_args = ["--threads", str(threads),
                   "--solo-threads", str(solo_threads(int(value["server_solo_threads"]), here, threads))]
    if value["weights_dir"]:
        server_args += ["--weights-dir", value["weights_dir"]]
    if value["data_root"]:  # PFF servers read their own data
        server_args += ["--data-root", value["data_root"]]
    master_args = ["--pipeline", pipeline, "--set", f"servers={value['servers']}"]
    for key in ("model", "layer_types", "data_root", "weights_dir", "transport", "pff_variant"):
        if value[key]:
            master_args += ["--set", f"{key}={value[key]}"]
    actions = []
    role = value["role"]
    if role not in ("all", "master", "server"):
        raise RuntimeError(f"role must be all, master or server, got {role!r}")
    if role in ("all", "server"):
        count = int(value["servers"]) if role == "all" else 1
        actions += [Node(package="dff_ros", executable="server", name=None, output="screen",
                         arguments=server_args, additional_env=env) for _ in range(count)]
    if role in ("all", "master"):
        actions.append(Node(package="dff_ros", executable="master", output="screen", arguments=master_args,
                            additional_env=env))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(k, default_value=d, description=h) for k, (d, h) in ARGS.items()]
        + [OpaqueFunction(function=_nodes)])
