"""Bad input to try on live nodes: malformed or foreign chunks, invalid service requests, names
that try to leave the weights folder. Used by test/test_ros_nodes.py (asserted) and
bench/faults.py (the README report)."""
from __future__ import annotations

import torch
from rclpy.serialization import serialize_message

from dff_ros.msg import LayerParameters, LayerSpec, TrainingBatch
from dff_ros.topics import layer_topics
from dff_ros.srv import CreateLayers
from dff_ros.wire.codec import to_parameter_value, to_parameters
from dff_ros.wire.tensors import to_msg

# names that would leave the weights folder if joined as they are, and what becomes of them
TRAVERSAL_NAMES = ["../../evil", "/etc/passwd", "a/../../b", "..", "~root/.ssh"]


def spec_msg(model="bad", index=0, module="FFDense", args=(50,), in_features=784, out_features=50, last=True):
    t = layer_topics(model, index, index if last else index + 1)
    return LayerSpec(index=index, source=index - 1, module=module, args=[to_parameter_value(a) for a in args],
                     in_features=in_features, out_features=out_features, last=last, **t)


def create_request(layers, train=None, model="bad", num_classes=10, run_id="r", image_shape=(1, 28, 28),
                   **fields) -> CreateLayers.Request:
    return CreateLayers.Request(run_id=run_id, model=model, num_classes=num_classes, layers=layers,
                                train=to_parameters(train or {"epochs": 1, "splits": 1}),
                                image_shape=list(image_shape), **fields)


def request_cases() -> list[tuple[str, CreateLayers.Request, str]]:
    """(what is wrong, request, words the refusal must contain)."""
    relative = spec_msg()
    relative.train_input = "relative/topic"
    foreign_checkpoint = LayerParameters(model="bad", part=5, chapter=0, version=1)
    return [
        ("unknown layer type", create_request([spec_msg(module="NoSuchLayer")]), "unknown layer type"),
        ("negative layer size", create_request([spec_msg(args=(-5,))]), "positive integer"),
        ("out_features not what the args make", create_request([spec_msg(out_features=7)]), "out_features 7"),
        ("splits that do not divide epochs", create_request([spec_msg()], {"epochs": 3, "splits": 2}), "train.splits"),
        ("a string learning rate", create_request([spec_msg()], {"lr": "fast"}), "train.lr"),
        ("no layers", create_request([]), "no layers"),
        ("a relative topic name", create_request([relative]), "absolute topic"),
        ("the same layer twice", create_request([spec_msg(), spec_msg()]), "name a layer twice"),
        ("num_classes 0", create_request([spec_msg()], num_classes=0), "num_classes"),
        ("an image shape that is not [C, H, W]", create_request([spec_msg()], image_shape=(784,)), "image_shape"),
        ("a dataset that is not one", create_request([spec_msg()], dataset='{"name": "x"}'), "not a preset"),
        ("an empty model name", create_request([spec_msg()], model=" "), "model name is empty"),
        ("a checkpoint of another layer", create_request([spec_msg()], resume_from=[foreign_checkpoint]),
         "not requested"),
        ("an unknown transport", create_request([spec_msg()], transport="carrier pigeon"), "transport"),
        # PFF sizes that once hung or killed a server: bounded before any work
        ("2^32-1 PFF nodes", pff_request(num_nodes=2 ** 32 - 1), "1..1024 nodes"),
        ("a 2^32-1 parameter history", pff_request(param_history=2 ** 32 - 1), "param_history"),
        ("negatives scored 2^32-1 chapters ahead", pff_request(negatives_lag=2 ** 32 - 1), "negatives_lag"),
        ("a layer on a node that is not there", pff_request(pff_variant="single_layer", layer_nodes=[5]),
         "layer_nodes"),
        ("a negative node", pff_request(pff_variant="single_layer", layer_nodes=[-7]), "layer_nodes"),
        ("a start chapter past the end", pff_request(start_chapter=2 ** 32 - 1), "start_chapter"),
        ("node_index outside the nodes", pff_request(node_index=2), "node_index"),
    ]


def pff_request(**fields) -> CreateLayers.Request:
    """A PFF share of a one-layer model on 2 nodes, with ``fields`` changed."""
    return create_request([spec_msg()], transport="parameters", **{"pff_variant": "all_layers", "num_nodes": 2,
                                                                  **fields})


def first_layer_chunk(model: str, run_id: str, **fields) -> TrainingBatch:
    """A well-formed 2-row chunk of MNIST images for the first layer of ``model``."""
    m = TrainingBatch(**{"model": model, "run_id": run_id, "layer": -1, "count": 1, **fields})
    to_msg(torch.tensor([1, 2]), m.labels)
    to_msg(torch.tensor([3, 4]), m.neg_labels)
    to_msg(torch.zeros(2, 784, dtype=torch.uint8), m.images)
    return m


def chunk_cases(model: str, run_id: str) -> list[tuple[str, TrainingBatch | bytes, str]]:
    """(what is wrong, a chunk for the first layer of ``model``, the kind it is dropped as)."""

    def chunk(**fields) -> TrainingBatch:
        return first_layer_chunk(**{"model": model, "run_id": run_id, **fields})

    short = chunk()
    short.images.data = bytes(10)                                   # shape says 1568 bytes
    unknown = chunk()
    unknown.labels.dtype = "complex7"
    absurd = chunk()
    absurd.images.shape = [2 ** 31, 2 ** 31]                        # never allocated: bytes do not match
    float_labels = chunk()
    to_msg(torch.tensor([1.0, 2.0]), float_labels.labels)
    narrow = chunk()
    to_msg(torch.zeros(2, 10, dtype=torch.uint8), narrow.images)
    return [
        ("data length != shape x dtype size", short, "malformed"),
        ("unknown dtype", unknown, "malformed"),
        ("absurd declared shape (2^31 x 2^31)", absurd, "malformed"),
        ("labels of the wrong dtype", float_labels, "malformed"),
        ("images of the wrong width", narrow, "malformed"),
        # bytes that are not a TrainingBatch (published serialized, as the nodes publish)
        ("truncated CDR", serialize_message(chunk())[:100], "malformed"),
        ("a run id that is not UTF-8", serialize_message(chunk(run_id="rr")).replace(b"rr\x00", b"r\xff\x00"),
         "malformed"),
        ("wrong layer index (from layer 3)", chunk(layer=3), "misrouted"),
        ("stale / foreign run id", chunk(run_id="someone-else"), "foreign"),
        ("another model's name on this topic", chunk(model="other"), "foreign"),
    ]
