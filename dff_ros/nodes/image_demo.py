"""Image demo: publishes a dataset's test images as sensor_msgs/Image (mono8 or rgb8, of the
data's size) on ``image``, as a camera would, reads the classifier node's ``prediction`` and reports live accuracy and
latency (image stamp to prediction received, one clock: run both on one machine or sync
clocks). Ends after ``--count`` images with a summary line (and ``--out`` JSON). Which dataset:
the one the ``--weights`` file was trained on, else the preset ``--dataset`` (MNIST).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import rclpy
import torch
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from dff_ros.data import DatasetMissing, load_dataset
from dff_ros.msg import Prediction
from dff_ros.progress import Progress
from dff_ros.wire.images import row_to_image


class LiveScore:
    """Accuracy and latency of the predictions so far (pure logic, tested without ROS)."""

    def __init__(self):
        self.sent: dict[str, tuple[int, float]] = {}   # frame_id -> (label, sent at)
        self.correct = self.answered = self.refused = 0
        self.latencies: list[float] = []

    def note_sent(self, frame_id: str, label: int, at: float) -> None:
        self.sent[frame_id] = (label, at)

    def note_prediction(self, frame_id: str, label: int, at: float) -> bool:
        """False for a prediction of no image of ours (or one already scored)."""
        if frame_id not in self.sent:
            return False
        truth, sent_at = self.sent.pop(frame_id)
        self.answered += 1
        self.latencies.append(at - sent_at)
        if label < 0:
            self.refused += 1
        self.correct += int(label == truth)
        return True

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        pick = (lambda q: round(1000 * lat[min(int(q * len(lat)), len(lat) - 1)], 2)) if lat else (lambda q: None)
        return {"answered": self.answered, "unanswered": len(self.sent), "refused": self.refused,
                "accuracy": round(self.correct / self.answered, 5) if self.answered else None,
                "latency_ms": {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": pick(1.0)}}


class ImageDemo(Node):
    """Publishes test-set images as ``sensor_msgs/Image`` and checks the classifier's predictions."""
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shape: tuple[int, int, int], rate: float):
        super().__init__("dff_image_demo")
        self.images, self.labels, self.shape, self.period = images, labels, shape, 1.0 / rate
        self.score = LiveScore()
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.create_publisher(Image, "image", qos)
        self.sub = self.create_subscription(Prediction, "prediction", self._on_prediction, qos)

    def wait_for_classifier(self, timeout: float) -> bool:
        """Until both topics are matched and a warm-up image came back classified (the first
        images would otherwise race discovery, and the first forward pass is slow)."""
        end = time.monotonic() + timeout
        warmups = 0
        while time.monotonic() < end:
            if self.pub.get_subscription_count() and self.sub.get_publisher_count():
                self.publish(0, frame_id=f"warmup_{warmups}")
                warmups += 1
                stop = min(end, time.monotonic() + 1.0)
                while time.monotonic() < stop:
                    rclpy.spin_once(self, timeout_sec=0.05)
                    if self.score.answered:
                        self.score = LiveScore()   # warm-up does not count
                        return True
            rclpy.spin_once(self, timeout_sec=0.1)
        return False

    def publish(self, i: int, frame_id: str = "") -> None:
        _, h, w = self.shape
        msg = Image(height=h, width=w, is_bigendian=0)
        msg.encoding, msg.data, msg.step = row_to_image(self.images[i], self.shape)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = frame_id or f"test_{i}"
        self.score.note_sent(msg.header.frame_id, int(self.labels[i]), time.monotonic())
        self.pub.publish(msg)

    def _on_prediction(self, msg: Prediction) -> None:
        self.score.note_prediction(msg.header.frame_id, msg.label, time.monotonic())

    def run(self, count: int, progress: Progress, grace: float = 5.0) -> dict:
        start = time.monotonic()
        for i in range(count):
            while time.monotonic() < start + i * self.period:
                rclpy.spin_once(self, timeout_sec=max(0.0, start + i * self.period - time.monotonic()))
            self.publish(i)
            rclpy.spin_once(self, timeout_sec=0.0)
            self._report(progress)
        end = time.monotonic() + grace   # the last predictions
        while self.score.sent and time.monotonic() < end:
            rclpy.spin_once(self, timeout_sec=0.05)
            self._report(progress)
        return {**self.score.summary(), "sent": count, "rate_hz": round(1.0 / self.period, 2),
                "seconds": round(time.monotonic() - start, 2)}

    def _report(self, progress: Progress) -> None:
        # called per image: no percentiles here (summary() sorts every latency)
        sc = self.score
        progress.update(sc.answered - progress.done, accuracy=sc.correct / sc.answered if sc.answered else float("nan"),
                        latency_ms=1000 * sc.latencies[-1] if sc.latencies else 0.0)


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    p = argparse.ArgumentParser(prog="dff_ros image_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000, help="test images to send (default 1000)")
    p.add_argument("--rate", type=float, default=50.0, help="images per second (default 50)")
    p.add_argument("--weights", default="", help="network file: publish the test set it was trained on")
    p.add_argument("--dataset", default="MNIST", help="a preset's name, when no --weights (default MNIST)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the classifier node")
    p.add_argument("--out", help="write the summary as JSON here")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(rclpy.utilities.remove_ros_args(argv)[1:])
    dataset = args.dataset
    try:
        if args.weights:
            from dff_ros.ff.trainer import load_network
            dataset = load_network(args.weights)[1].dataset
        data = load_dataset(dataset, args.data_root)
    except (DatasetMissing, ValueError) as e:   # ValueError: not a network file, a bad dataset
        print(f"[image_demo] {e}", file=sys.stderr)
        return 3
    count = min(args.count, len(data["test_labels"]))
    rclpy.init(args=argv)
    try:
        node = ImageDemo(data["test_images"], data["test_labels"], data["info"].image_shape, args.rate)
        if not node.wait_for_classifier(args.wait):
            print(f"[image_demo] no classifier on {node.resolve_topic_name('image')} within {args.wait:.0f} s: "
                  "start `ros2 run dff_ros classifier --weights FILE` (same ROS_DOMAIN_ID)", file=sys.stderr)
            return 1
        progress = Progress(count, f"image demo ({args.rate:g} Hz)", enabled=not args.no_progress)
        result = node.run(count, progress)
        lat = result["latency_ms"]
        acc = "n/a" if result["accuracy"] is None else f"{100 * result['accuracy']:.2f} %"
        print(f"[image_demo] {result['answered']}/{count} images classified, accuracy {acc}, latency "
              f"p50 {lat['p50']} ms, p90 {lat['p90']} ms, max {lat['max']} ms; refused {result['refused']}, "
              f"unanswered {result['unanswered']}", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2))
        return 0 if result["answered"] else 1
    except KeyboardInterrupt:
        return 130
    finally:
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
