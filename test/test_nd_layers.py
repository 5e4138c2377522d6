"""Layer specs and activations of any rank: a layer type whose activations are [batch, channels,
height, width] is validated from a model row, hosted by the DFF layer host, chained in process,
trained by PFF workers, and its chunks cross the codec with their shapes."""
import queue

import pytest
import torch
from torch import nn

from dff_ros.config import parse_model_config
from dff_ros.config.schema import ConfigError
from dff_ros.ff.learners import Activities
from dff_ros.ff.layers import FFLayer, length_normalize, register_layer
from dff_ros.pipeline.chunks import ChunkError, TrainChunk
from dff_ros.pipeline.driver import PipelineDriver
from dff_ros.pipeline.host import LayerHost
from dff_ros import weights


@register_layer("TestConv")
class ConvForTests(FFLayer):
    """3x3 convolution, ReLU, on one sample's (C, side, side) activations; a flat input of
    side * side values is read as one channel (the first layer's label-overlaid images)."""
    shape_args = True

    def __init__(self, in_shape: tuple, channels: int):
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), self.output_shape(in_shape, channels)
        self.out_features = self.out_shape[0] * self.out_shape[1] * self.out_shape[2]
        self.conv = nn.Conv2d(self.image_shape(in_shape)[0], channels, 3, padding=1)

    @staticmethod
    def image_shape(in_shape):
        if len(in_shape) == 1:
            side = int(round(in_shape[0] ** 0.5))
            if side * side != in_shape[0]:
                raise ValueError(f"a flat input of {in_shape[0]} values is not a square image")
            return (1, side, side)
        if len(in_shape) != 3:
            raise ValueError(f"needs (C, H, W) activations, got {list(in_shape)}")
        return tuple(in_shape)

    @classmethod
    def output_shape(cls, in_shape, channels):
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        _, h, w = cls.image_shape(tuple(in_shape))
        return (channels, h, w)

    def forward(self, x):
        x = length_normalize(x).view(len(x), *self.image_shape(self.in_shape))
        return torch.relu(self.conv(x))


def config(**train):
    return parse_model_config({
        "name": "nd", "model": [[-1, "TestConv", [2]], [-1, "TestConv", [3]], [-1, "FFDense", [50]]],
        "train": {"epochs": 2, "splits": 2, "lr": 0.003, "train_subset": 600, "test_subset": 200, **train}}, "test")


def test_specs_carry_shapes():
    cfg = config()
    assert [(s.in_shape, s.out_shape) for s in cfg.layers] == [((1, 28, 28), (2, 28, 28)), ((2, 28, 28), (3, 28, 28)),
                                                               ((3, 28, 28), (50,))]
    assert cfg.layers[2].in_features == 3 * 28 * 28
    with pytest.raises(ConfigError, match=r"model\[1\].args: TestConv\[0\]: channels must be a positive"):
        parse_model_config({"name": "nd", "model": [[-1, "TestConv", [2]], [-1, "TestConv", [0]]]}, "test")
    # a flat layer keeps the weights key it had before specs had shapes (its saved files are
    # still found); an N-d one is keyed by its shapes too
    import hashlib
    import json
    flat = parse_model_config({"name": "nd", "model": [[-1, "FFDense", [50]], [-1, "FFDense", [20]]]}, "test")
    before = {"model": "nd", "index": 1, "source": 0, "module": "FFDense", "args": [20], "kwargs": {}, "in": 50,
              "out": 20, "goodness": "sum", "algorithm": "ff"}
    assert weights.spec_hash("nd", flat.layers[1], {"goodness": "sum", "algorithm": "ff"}) == hashlib.sha256(
        json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]


def test_a_pipeline_of_nd_layers_trains(mnist):
    cfg = config()
    hosts = [LayerHost(s, cfg.train, cfg.num_classes, last=s.index == 2) for s in cfg.layers]
    results, seen = queue.Queue(), {}

    def push(i, chunk, infer):
        outs = [hosts[i].infer(chunk)] if infer else hosts[i].train(chunk)
        for out in outs:
            if not infer and out.acts is not None:
                seen[i] = tuple(out.acts.pos.shape[1:])
            results.put(out) if i + 1 == len(hosts) else push(i + 1, out, infer)

    driver = PipelineDriver(cfg, mnist, send_train=lambda c: push(0, c, False), send_infer=lambda c: push(0, c, True),
                            results=results, chunk_rows=300, progress=False)
    driver.fit()
    acc = driver.evaluate()["accuracy"]
    assert seen == {0: (2, 28, 28), 1: (3, 28, 28)}   # what travelled between the layers
    assert all(h.chapters_done == 2 and h.samples == 600 * 2 for h in hosts)
    assert 0.0 <= acc["goodness"] <= 1.0 and acc["softmax"] > 0.3, acc
    # a chunk of the wrong shape is refused, naming the shape it needed
    labels = torch.zeros(4, dtype=torch.long)
    flat = torch.zeros(4, 2, 28)
    bad = TrainChunk(0, 1, 0, 1, labels, acts=Activities(flat, flat, flat, labels))
    with pytest.raises(ChunkError, match=r"expected \[4, 2, 28, 28\]"):
        hosts[1].train(bad)


CWC = {"model": [[-1, "FFConv", {"channels": 10, "norm": "batch"}], [-1, "FFConv", [20, 3, 2, "batch"]],
                 [-1, "FFDense", [30]]], "train": {"algorithm": "cwc", "classifiers": ["cwc_all", "cwc_last"]}}


@pytest.mark.parametrize("variant", ["overlay", "cwc", "augmented", "hybrid"])
def test_pff_workers_train_nd_layers_like_the_sequential_run(mnist, variant):
    from dff_ros.ff.trainer import ReferenceTrainer
    from dff_ros.parts.versions import ParameterStore
    from dff_ros.pff.plan import PFFPlan
    from dff_ros.pff.worker import PFFWorker, network_from_parts
    from dff_ros.parts.state import part_state
    from dff_ros.ff.classifiers import accuracy

    if variant == "cwc":   # conv layers with batch statistics, trained on class groups
        cfg = parse_model_config({"name": "nd", "model": CWC["model"],
                                  "train": {"epochs": 2, "splits": 2, "lr": 0.003, "train_subset": 600,
                                            "test_subset": 200, **CWC["train"]}}, "test")
    else:
        cfg = config(**{"overlay": {}, "augmented": {"augment_crop": 3, "augment_flip": True},
                        "hybrid": {"negatives": "hybrid", "classifiers": ["softmax"]}}[variant])
    reference = ReferenceTrainer(cfg, mnist, progress=False).fit()["accuracy"]
    plan = PFFPlan.for_model(cfg, "all_layers", 1)
    x, y = mnist["train_images"][:600], mnist["train_labels"][:600]
    worker = PFFWorker(cfg, x, y, plan, 0, ParameterStore(), wait_seconds=5.0)
    worker.run()
    net = network_from_parts(cfg, {p: part_state(learner, optimizer=False) for p, learner in enumerate(worker.parts)})
    got = {c: round(accuracy(net, mnist["test_images"][:200], mnist["test_labels"][:200], c, cfg.train.goodness,
                             cfg.train.eval_batch_size), 5) for c in cfg.train.classifiers}
    assert got == reference


def test_nd_chunks_cross_the_codec_with_their_shapes():
    from dff_ros.wire.codec import spec_from_msg, spec_to_msg, train_from_msg, train_to_msg

    acts = Activities(torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4), None, torch.arange(5))
    back = train_from_msg(train_to_msg(TrainChunk(0, 1, 0, 1, torch.arange(5), acts=acts), run_id="r", model="m",
                                       layer=0))
    assert back.acts.pos.shape == (5, 3, 4, 4) and torch.equal(back.acts.neg, acts.neg)
    images, neg = (torch.randint(0, 256, (5, 12), dtype=torch.uint8) for _ in range(2))   # hybrid negatives
    back = train_from_msg(train_to_msg(TrainChunk(0, 1, 0, 1, torch.arange(5), images=images, neg_images=neg),
                                       run_id="r", model="m", layer=-1))
    assert torch.equal(back.images, images) and torch.equal(back.neg_images, neg) and back.neg_labels is None
    spec = config().layers[1]
    topics = dict.fromkeys(("train_input", "train_output", "infer_input", "infer_output"), "/t")
    msg = spec_to_msg(spec, topics, False)
    assert list(msg.in_shape) == [2, 28, 28] and msg.in_features == 2 * 28 * 28
    for spec in config().layers:   # a dense layer after a conv one keeps its N-d in_shape on the server
        assert spec_from_msg(spec_to_msg(spec, topics, False), "test") == spec
