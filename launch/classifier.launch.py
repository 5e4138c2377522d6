"""Classify a robot's camera images with a trained model (ROS 2 launch).

    dff-ros export mnist_default -o ~/mnist.pt             # once: gather the per-node weights
    ros2 launch dff_ros classifier.launch.py weights:=$HOME/mnist.pt image:=/camera/image_mono
    ros2 launch dff_ros classifier.launch.py weights:=$HOME/mnist.pt demo:=true   # MNIST test images
    ros2 launch dff_ros classifier.launch.py model:=mnist_default image:=/camera/image_mono  # layers
                                                    # kept on the servers (keep_layers: true)

Arguments: weights (network file from `dff-ros export` or `dff-ros train`), or model (a model
whose layers stay on the servers: each image goes through them; head: its softmax head file,
default the one under the weights dir), run (which run of it, when several), image (the topic to
classify, remapped onto the node's `image`), prediction (where dff_ros/Prediction goes),
classifier (goodness | softmax | ...; default softmax when trained), input_qos (best_effort |
reliable), fit (images of another size: refuse | resize | crop), demo (true: also start
image_demo, which publishes the test images of the data the network was trained on on the image
topic and prints live accuracy and latency; demo_count, demo_rate, data_root).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGS = {
    "weights": ("", "network file (dff-ros export MODEL / dff-ros train)"),
    "model": ("", "or: a model whose layers stay on the servers (keep_layers: true)"),
    "run": ("", "model: the run, when the servers host several"),
    "head": ("", "model with the softmax classifier: the head file (default: under the weights dir)"),
    "image": ("image", "sensor_msgs/Image topic to classify"),
    "prediction": ("prediction", "dff_ros/Prediction output topic"),
    "classifier": ("", "goodness | softmax | pon_last | pon_all (default: softmax when trained)"),
    "input_qos": ("best_effort", "image subscription: best_effort (cameras) | reliable"),
    "fit": ("refuse", "images of another size than the model's: refuse | resize | crop (the centre, then scaled)"),
    "demo": ("false", "also publish the network's test images and report live accuracy and latency"),
    "demo_count": ("1000", "test images the demo sends"),
    "demo_rate": ("50", "demo images per second"),
    "data_root": ("", "demo: the data's root folder (default $DFF_DATA_ROOT, else ~/.cache/dff_ros/data)"),
}


def _nodes(context):
    value = {k: LaunchConfiguration(k).perform(context) for k in ARGS}
    if bool(value["weights"]) == bool(value["model"]):
        raise RuntimeError("weights:=FILE (make one with `dff-ros export MODEL -o FILE`) or model:=NAME (its "
                           "layers on the servers) is needed, not both")
    if value["demo"].lower() in ("true", "1", "yes") and not value["weights"]:
        raise RuntimeError("demo:=true needs weights:=FILE (the demo reads the dataset it names)")
    remap = [("image", value["image"]), ("prediction", value["prediction"])]
    source = (["--weights", value["weights"]] if value["weights"] else
              ["--model", value["model"], *(["--run", value["run"]] if value["run"] else []),
               *(["--head", value["head"]] if value["head"] else [])])
    args = [*source, "--input-qos", value["input_qos"], "--fit", value["fit"]]
    if value["classifier"]:
        args += ["--classifier", value["classifier"]]
    actions = [Node(package="dff_ros", executable="classifier", output="screen", arguments=args, remappings=remap)]
    if value["demo"].lower() in ("true", "1", "yes"):
        demo = ["--weights", value["weights"], "--count", value["demo_count"], "--rate", value["demo_rate"]]
        if value["data_root"]:
            demo += ["--data-root", value["data_root"]]
        actions.append(Node(package="dff_ros", executable="image_demo", output="screen", remappings=remap,
                            arguments=demo, on_exit=Shutdown(reason="demo finished")))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(k, default_value=d, description=h) for k, (d, h) in ARGS.items()]
        + [OpaqueFunction(function=_nodes)])
