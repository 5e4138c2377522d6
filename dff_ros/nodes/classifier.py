"""Classifier node: runs a trained model on a robot's images.

Subscribes ``image`` (sensor_msgs/Image; remap it to the camera topic), publishes a
``prediction`` (dff_ros/Prediction) per image with the image's header, and serves
``~/classify`` (dff_ros/srv/Classify) for one-shot requests. The model is a network file,
from ``dff-ros export`` (per-node weights gathered onto this machine) or ``dff-ros train``, or
one whose layers stay on the servers (``--model NAME``: a DFF run with ``keep_layers: true``;
the images go through its layers there, dff_ros/nodes/hosted.py).
Images of another encoding, or of another size (unless ``fit`` is resize or crop), are
answered with label -1 and the reason (and counted), never a crash.
"""
from __future__ import annotations

import argparse
import sys
import time

import rclpy
import torch
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from dff_ros.ff.classifiers import class_scores
from dff_ros.ff.trainer import load_network
from dff_ros.msg import Prediction
from dff_ros.nodes.common import answering
from dff_ros.srv import Classify
from dff_ros.wire.images import FITS, ImageError, image_to_row


class Classifier:
    """The model and its classifier, apart from ROS: rows in, (labels, confidences, scores) out."""

    def __init__(self, weights: str, classifier: str = "", fit: str = "refuse"):
        if fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
        self.fit = fit
        self.net, self.config = load_network(weights)
        self.net.eval()
        known = self.config.train.classifiers
        self.classifier = classifier or ("softmax" if "softmax" in known else known[0])
        if self.classifier not in known:
            raise ValueError(f"{weights} was trained for classifier(s) {', '.join(known)}, not {self.classifier!r}")
        self.shape = self.config.data.image_shape   # (C, H, W), recorded with the weights
        self.where = f"network file {weights}"

    @torch.no_grad()
    def __call__(self, rows: torch.Tensor):
        scores = class_scores(self.net, rows, self.classifier, self.config.train.goodness)
        probs = torch.softmax(scores, dim=1)   # log-probabilities (softmax head) or goodness per label
        confidence, label = probs.max(dim=1)
        return label, confidence, scores


class ClassifierNode(Node):
    """Classifies each ``sensor_msgs/Image`` with a trained network and publishes a Prediction."""
    def __init__(self, model: Classifier, input_qos: str = "best_effort"):
        super().__init__("dff_classifier")
        self.model = model
        self.classified = self.rejected = 0
        self.pub = self.create_publisher(Prediction, "prediction", QoSProfile(depth=10))
        # best effort (camera drivers' sensor-data QoS) matches every publisher; reliable makes a
        # reliable publisher resend what was lost (then best-effort publishers do not match)
        qos = qos_profile_sensor_data if input_qos == "best_effort" else QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Image, "image", self._on_image, qos)
        self.create_service(Classify, "~/classify", answering(self, "classify", self._on_classify))
        self.get_logger().info(f"classifying {model.config.name!r} ({model.classifier}; {model.where}) images "
                               f"{'x'.join(map(str, model.shape))} (CxHxW; other sizes: {model.fit}) from "
                               f"{self.resolve_topic_name('image')} -> "
                               f"{self.resolve_topic_name('prediction')}")

    def predict(self, image: Image) -> Prediction:
        start = time.perf_counter()
        out = Prediction(header=image.header, classifier=self.model.classifier, label=-1)
        try:
            row = image_to_row(image, self.model.shape, self.model.fit)
            label, confidence, scores = self.model(row.unsqueeze(0))
        except (ImageError, TimeoutError, ValueError) as e:   # hosted layers: no answer, or a wrong one
            self.rejected += 1
            out.error = str(e)
            self.get_logger().warning(f"cannot classify an image: {e} ({self.rejected} so far)",
                                      throttle_duration_sec=5.0)
        else:
            out.label, out.confidence, out.scores = int(label[0]), float(confidence[0]), scores[0].tolist()
            self.classified += 1
        out.latency_seconds = time.perf_counter() - start
        return out

    def _on_image(self, image: Image) -> None:
        self.pub.publish(self.predict(image))

    def _on_classify(self, req, res):
        res.prediction = self.predict(req.image)
        res.success = res.prediction.label >= 0
        res.message = res.prediction.error or f"class {res.prediction.label}"
        return res


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    p = argparse.ArgumentParser(prog="dff_ros classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="", help="network file (dff-ros export / dff-ros train)")
    p.add_argument("--model", default="", help="or: the model whose layers stay on the servers (keep_layers: true)")
    p.add_argument("--run", default="", help="--model: the run, when the servers host several of the model")
    p.add_argument("--head", default="", help="--model with the softmax classifier: the head file (default: the "
                                              "one the master saved under the weights dir)")
    p.add_argument("--classifier", default="", help="goodness | softmax | pon_last | pon_all | cwc_all | cwc_last "
                                                    "(default: softmax when trained, else the config's first)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--fit", default="", help="images of another size: refuse (default) | resize | crop (the centre "
                                             "at the model's aspect ratio, then scaled); also the ROS parameter fit")
    p.add_argument("--input-qos", choices=["best_effort", "reliable"], default="best_effort",
                   help="image subscription reliability (default best_effort, as camera drivers publish)")
    args = p.parse_args(rclpy.utilities.remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    try:
        probe = rclpy.create_node("dff_classifier_params", start_parameter_services=False, enable_rosout=False)
        weights = args.weights or probe.declare_parameter("weights", "").value
        hosted = args.model or probe.declare_parameter("model", "").value
        classifier = args.classifier or probe.declare_parameter("classifier", "").value
        fit = args.fit or probe.declare_parameter("fit", "refuse").value
        probe.destroy_node()
        if bool(weights) == bool(hosted):
            print("[classifier] pass a model: --weights FILE (from `dff-ros export MODEL`) or --model NAME (its "
                  "layers on the servers), or the ROS parameter weights or model; not both", file=sys.stderr)
            return 2
        torch.set_num_threads(max(args.threads, 1))
        try:
            if hosted:
                from dff_ros.nodes.hosted import HostedModel
                model = HostedModel(hosted, run_id=args.run, classifier=classifier, head=args.head, fit=fit)
            else:
                model = Classifier(weights, classifier, fit)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            print(f"[classifier] cannot load {weights or hosted}: {e}", file=sys.stderr)
            return 2
        node = ClassifierNode(model, args.input_qos)
        executor = SingleThreadedExecutor()   # rclpy's multi-threaded one drops to ~20 images/s here
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            if hasattr(model, "close"):
                model.close()
        return 0
    finally:
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
