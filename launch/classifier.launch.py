"""Classify a robot's camera images with a trained model (ROS 2 launch).

    dff-ros export mnist_default -o ~/mnist.pt             # once: gather the per-node weights
    ros2 launch dff_ros classifier.launch.py weights:=$HOME/mnist.pt image:=/camera/image_mono
    ros2 launch dff_ros classifier.launch.py weights:=$HOME/mnist.pt demo:=true   # MNIST test images

Arguments: weights (network file from `dff-ros export` or `dff-ros train`), image (the topic to
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
    if not value["weights"]:
        raise RuntimeError("weights:=FILE is needed (make one with `dff-ros export MODEL -o FILE`)")
    remap = [("image", value["image"]), ("prediction", value["prediction"])]
    args = ["--weights", value["weights"], "--input-qos", value["input_qos"], "--fit", value["fit"]]
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
