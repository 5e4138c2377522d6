"""Per-epoch history (what summaries and plots show) and the run plots themselves."""
import math

import pytest
import torch

from dff_ros.ff.history import EpochMeans, curves
from dff_ros.ff.learners import Activities, FFLearner
from dff_ros.ff.layers import FFDense


def test_epoch_means_travel_as_flat_numbers_and_merge():
    a = EpochMeans()
    a.add(1, 4.0, 0.5)
    a.add(1, 2.0, 1.0)
    a.add(2, 1.0, 1.0)
    state = a.state()
    assert all(isinstance(v, (int, float)) for v in state.values())   # fits a parameters message
    b = EpochMeans()
    b.load({**state, "samples": 7, "epoch_x_loss": 1.0, "epoch_3_other": 2.0})   # other keys ignored
    b.add(3, 0.5, 1.0)
    assert b.loss() == {1: 3.0, 2: 1.0, 3: 0.5} and b.accuracy() == {1: 0.75, 2: 1.0, 3: 1.0}
    out = curves({"layer_0": b}, 4)
    assert out["loss"]["layer_0"] == [3.0, 1.0, 0.5, None] and out["epochs"] == 4


def test_ff_training_accuracy_is_the_share_on_the_right_side_of_the_threshold():
    layer = FFDense(4, 2)
    learner = FFLearner(layer, lr=0.0, threshold=1.0, goodness_kind="sum", optimizer="sgd",
                        total_epochs=1, cooldown=False)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.eye(2, 4))
        layer.linear.bias.zero_()
    # length-normalised inputs; goodness = sum of squares of the first two inputs (x 4 after normalising)
    pos = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])   # goodness 4 (right), 0 (wrong)
    neg = torch.tensor([[0, 0, 0, 1.0], [0, 0, 1.0, 0]])   # goodness 0 (right), 0 (right)
    _, metrics = learner.train_step(Activities(pos, neg, None, torch.tensor([0, 1])))
    assert float(metrics["accuracy"]) == pytest.approx(0.75)


def test_curves_png_is_drawn_from_a_summary(tmp_path):
    from dff_ros.plots import curves_png

    e = 6
    summary = {"accuracy": {"softmax": 0.93},
               "history": {"epochs": e, "chapter_epochs": [2, 4, 6],
                           "loss": {"layer_0": [math.exp(-i) for i in range(e)], "head": [1.0] * 5 + [None]},
                           "accuracy": {"layer_0": [0.5 + i / 20 for i in range(e)], "head": [0.9] * 5 + [None]},
                           "bytes_per_chapter": {"master -> layer_0": [10e6] * 3, "layer_0 -> master": [20e6] * 3}}}
    png = curves_png(summary, tmp_path / "c.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
