"""The classifier node on sensor_msgs/Image (topic and service) and the image demo, as separate
processes over DDS, against the same network evaluated in-process."""
import json
import re
import time

import numpy as np
import pytest
import torch

from rosutil import Client, Proc, ros_env

from dff_ros.config import parse_model_config
from dff_ros.ff.classifiers import class_scores
from dff_ros.ff.trainer import ReferenceTrainer, load_network


@pytest.fixture(scope="module")
def network(tmp_path_factory, mnist):
    cfg = parse_model_config({"name": "demo net", "model": [[-1, "FFDense", [200]], [-1, "FFDense", [200]]],
                              "train": {"epochs": 2, "splits": 1, "lr": 0.01, "train_subset": 5000,
                                        "classifiers": ["goodness", "softmax"]}}, "test")
    trainer = ReferenceTrainer(cfg, mnist, progress=False)
    trainer.fit()
    path = tmp_path_factory.mktemp("net") / "demo.pt"
    trainer.save(path)
    return path


def image_msg(pixels: np.ndarray, encoding="mono8", frame_id="one"):
    from sensor_msgs.msg import Image

    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, is_bigendian=0,
                step=pixels.shape[1] * pixels.itemsize)
    msg.data = pixels.tobytes()
    msg.header.frame_id = frame_id
    return msg


def test_classifier_node_and_image_demo(network, tmp_path, mnist, data_root):
    from sensor_msgs.msg import Image

    from dff_ros.msg import Prediction
    from dff_ros.srv import Classify

    env = ros_env()
    count = 300
    net, cfg = load_network(network)
    expected = class_scores(net, mnist["test_images"][:count], "softmax").argmax(dim=1)
    truth = mnist["test_labels"][:count]
    # reliable input: the demo must see every image answered (cameras: the best-effort default)
    node = Proc(["-m", "dff_ros.nodes.classifier", "--weights", str(network), "--input-qos", "reliable"], env,
                tmp_path / "classifier.log")
    client = Client(env)
    try:
        # one-shot service: the same class as in-process; a wrong size is refused with the reason
        first = (mnist["test_images"][0] * 255).round().to(torch.uint8).reshape(28, 28).numpy()
        res = client.call(Classify, "/dff_classifier/classify", Classify.Request(image=image_msg(first)), timeout=60)
        assert res.success and res.prediction.label == int(expected[0]), (res.message, int(expected[0]))
        assert res.prediction.header.frame_id == "one" and len(res.prediction.scores) == 10
        assert 0.1 <= res.prediction.confidence <= 1.0 and res.prediction.classifier == "softmax"
        res = client.call(Classify, "/dff_classifier/classify",
                          Classify.Request(image=image_msg(np.zeros((32, 32), np.uint8))))
        assert not res.success and "32x32 (HxW), the model takes 28x28" in res.message, res.message
        # on the topic, a bad image is answered with label -1 and the reason; the node lives on
        got = []
        client.node.create_subscription(Prediction, "/prediction", got.append, 10)
        pub = client.node.create_publisher(Image, "/image", 10)
        end = time.monotonic() + 20
        while not got and time.monotonic() < end:
            pub.publish(image_msg(np.zeros((28, 56), np.uint8), "yuv422", "bad"))
            client.spin(0.5)
        assert got and got[0].label == -1 and got[0].header.frame_id == "bad", got
        assert "encoding 'yuv422' is not supported" in got[0].error, got[0].error
    finally:
        client.close()

    demo = Proc(["-m", "dff_ros.nodes.image_demo", "--count", str(count), "--rate", "100", "--data-root",
                 str(data_root), "--out", str(tmp_path / "demo.json"), "--no-progress"], env, tmp_path / "demo.log")
    try:
        assert demo.p.wait(120) == 0, demo.output()
    finally:
        demo.stop()
        node.stop()
    result = json.loads((tmp_path / "demo.json").read_text())
    assert result["answered"] == count and result["refused"] == 0, result
    # every image crossed as mono8 and was classified as in-process
    assert result["accuracy"] == pytest.approx(float((expected == truth).float().mean()), abs=1e-6), result
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["max"] < 5000, result
    assert "accuracy" in demo.output() and "latency p50" in demo.output()


def test_classifier_runs_a_model_whose_layers_stay_on_the_servers(tmp_path, data_root, mnist):
    """--model: the images go through the layers the servers still host (keep_layers: true) and
    get the classes the gathered network gives them in-process; softmax with the master's head."""
    from rosutil import MODEL, start_server, write_pipeline
    from test_ros_admin import cli

    from dff_ros.srv import Classify

    env = ros_env()
    pipeline = write_pipeline(tmp_path, data_root, epochs=2, splits=1, train_subset=3000,
                              pipeline={"keep_layers": True})
    servers = [start_server(env, tmp_path, f"server_{i}") for i in (1, 2)]
    nodes = []
    client = Client(env)
    try:
        run = Proc(["-m", "dff_ros.nodes.master", "--pipeline", str(pipeline), "--no-progress"], env,
                   tmp_path / "master.log")
        nodes.append(run)
        assert run.p.wait(180) == 0, run.output()
        summary = json.loads(open(re.search(r"\[dff_master\]: summary: (\S+)", run.output()).group(1)).read())
        rc, out = cli(env, "export", MODEL, "--model-config", str(tmp_path / "model.yaml"), "--servers", "2",
                      "--pipeline", str(pipeline), "-o", str(tmp_path / "net.pt"))
        assert rc == 0, out
        net, _ = load_network(tmp_path / "net.pt")
        # a model no server hosts (checked at the end: it looks for its servers for 10 s meanwhile)
        other = Proc(["-m", "dff_ros.nodes.classifier", "--model", "other"], env, tmp_path / "other.log")
        nodes.append(other)
        count = 40
        images = mnist["test_images"][:count]
        for classifier, extra in (("softmax", ["--head", summary["head_weights"]]), ("goodness", [])):
            expected = class_scores(net, images, classifier).argmax(dim=1)
            node = Proc(["-m", "dff_ros.nodes.classifier", "--model", MODEL, "--classifier", classifier, *extra,
                         "--ros-args", "-r", f"__node:=clf_{classifier}"], env, tmp_path / f"{classifier}.log")
            nodes.append(node)
            got = []
            for i in range(count):
                pixels = (images[i] * 255).round().to(torch.uint8).reshape(28, 28).numpy()
                res = client.call(Classify, f"/clf_{classifier}/classify", Classify.Request(image=image_msg(pixels)),
                                  timeout=60)
                assert res.success, res.message
                got.append(res.prediction.label)
            assert got == expected.tolist(), (classifier, got, expected.tolist())
            assert f"layers on the servers, run {summary['run_id']}" in node.output(), node.output()
            node.stop()
        # the model no server hosts: said, with what to do
        assert other.p.wait(60) == 2, other.output()
        assert "0 runs of 'other' have every layer on the servers" in other.output() and "keep_layers: true" in other.output()
    finally:
        client.close()
        for p in [*nodes, *servers]:
            p.stop()
