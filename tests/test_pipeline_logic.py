"""The DFF pipeline's logic (hosted layers + master driver) wired in-process, checked against
the single-process reference trainer. The ROS transport is tested in test_ros_*."""
import queue

import pytest
import torch

from dff_ros.config import parse_model_config
from dff_ros.ff.trainer import ReferenceTrainer
from dff_ros.pipeline.chunks import ChunkError, InferChunk, TrainChunk
from dff_ros.pipeline.driver import PipelineDriver, check_supported
from dff_ros.pipeline.host import LayerHost


def config(schedule, **train):
    return parse_model_config({
        "name": "t", "model": [[-1, "FFDense", [200]], [-1, "FFDense", [200]], [-1, "FFDense", [200]]],
        "train": {"epochs": 6, "splits": 2, "lr": 0.003, "schedule": schedule, "train_subset": 4000,
                  "test_subset": 1000, "threads": 2, **train}}, "test")


def run_in_process(cfg, data):
    """Hosts chained by direct calls: each output chunk goes straight to the next host."""
    hosts = [LayerHost(s, cfg.train, cfg.num_classes, last=s.index == len(cfg.layers) - 1) for s in cfg.layers]
    results = queue.Queue()

    def push(i, chunk, infer):
        outs = [hosts[i].infer(chunk)] if infer else hosts[i].train(chunk)
        for out in outs:
            if i + 1 == len(hosts):
                results.put(out)
            else:
                push(i + 1, out, infer)

    driver = PipelineDriver(cfg, data, send_train=lambda c: push(0, c, False),
                            send_infer=lambda c: push(0, c, True), results=results, chunk_rows=700,
                            progress=False)
    driver.fit()
    return driver.evaluate()["accuracy"], hosts


@pytest.mark.parametrize("schedule", ["stream", "chapters"])
def test_pipeline_matches_reference(mnist, schedule):
    cfg = config(schedule)
    ref = ReferenceTrainer(cfg, mnist, progress=False).fit()["accuracy"]
    got, _ = run_in_process(cfg, mnist)
    assert got["goodness"] > 0.75 and got["softmax"] > 0.8
    for k in ("goodness", "softmax"):
        # both schedules run the same updates in the same order as the reference
        assert abs(got[k] - ref[k]) <= 0.005, (k, got, ref)


def test_host_rejects_bad_chunks():
    cfg = config("stream")
    first = LayerHost(cfg.layers[0], cfg.train, 10, last=False)
    second = LayerHost(cfg.layers[1], cfg.train, 10, last=False)
    lab = torch.tensor([1, 2])
    with pytest.raises(ChunkError, match="images"):
        first.train(TrainChunk(0, 1, 0, 1, lab))
    with pytest.raises(ChunkError, match="expected"):
        first.train(TrainChunk(0, 1, 0, 1, lab, images=torch.zeros(2, 10, dtype=torch.uint8), neg_labels=lab))
    with pytest.raises(ChunkError, match="labels"):
        first.train(TrainChunk(0, 1, 0, 1, torch.tensor([1, 12]), images=torch.zeros(2, 784, dtype=torch.uint8),
                               neg_labels=lab))
    with pytest.raises(ChunkError, match="seq"):
        first.train(TrainChunk(0, 1, 3, 2, lab, images=torch.zeros(2, 784, dtype=torch.uint8), neg_labels=lab))
    with pytest.raises(ChunkError, match="chapter"):
        first.train(TrainChunk(9, 1, 0, 1, lab, images=torch.zeros(2, 784, dtype=torch.uint8), neg_labels=lab))
    with pytest.raises(ChunkError, match="pos and neg"):
        second.train(TrainChunk(0, 1, 0, 1, lab))
    with pytest.raises(ChunkError, match="candidates"):
        second.infer(InferChunk(0, 1, lab, candidates=torch.zeros(3, 200), goodness=torch.zeros(2, 10),
                                neutral=torch.zeros(2, 200)))


def test_unsupported_configs_are_named():
    with pytest.raises(ValueError, match="train.negatives"):
        check_supported(config("stream", negatives="adaptive"))
    branched = parse_model_config({"name": "b", "model": [[-1, "FFDense", [50]], [-1, "FFDense", [50]],
                                                          [0, "FFDense", [50]]]}, "b.yaml")
    with pytest.raises(ValueError, match=r"model\[2\].from"):
        check_supported(branched)
