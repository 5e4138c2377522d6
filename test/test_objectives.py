import math

import pytest
import torch

from dff_ros.ff import FFDense, ff_loss, goodness, length_normalize


def sp(x):
    return math.log1p(math.exp(x))


def test_goodness_sum_and_mean_by_hand():
    h = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 4.0]])
    assert goodness(h, "sum").tolist() == [5.0, 25.0]
    assert goodness(h, "mean").tolist() == pytest.approx([5 / 3, 25 / 3])


def test_ff_loss_by_hand():
    g_pos = torch.tensor([3.0, 1.0])
    g_neg = torch.tensor([0.5, 2.5])
    theta = 2.0
    expected = ((sp(theta - 3.0) + sp(0.5 - theta)) + (sp(theta - 1.0) + sp(2.5 - theta))) / 2
    assert float(ff_loss(g_pos, g_neg, theta)) == pytest.approx(expected, rel=1e-6)


def test_symmetric_ff_loss_by_hand_depends_only_on_the_gap():
    from dff_ros.ff.objectives import symmetric_ff_loss
    g_pos, g_neg, theta = torch.tensor([3.0, 1.0]), torch.tensor([0.5, 2.5]), 2.0
    expected = (sp(-4 * (3.0 - 0.5) / theta) + sp(-4 * (1.0 - 2.5) / theta)) / 2
    assert float(symmetric_ff_loss(g_pos, g_neg, theta)) == pytest.approx(expected, rel=1e-6)
    # no level to reach: moving both goodnesses together changes nothing (the threshold loss does)
    assert float(symmetric_ff_loss(g_pos + 7, g_neg + 7, theta)) == pytest.approx(expected, rel=1e-6)
    assert float(ff_loss(g_pos + 7, g_neg + 7, theta)) != pytest.approx(float(ff_loss(g_pos, g_neg, theta)))


def test_a_symmetric_ff_layer_learns_and_the_key_is_checked(mnist):
    from dff_ros.config import parse_model_config
    from dff_ros.config.schema import ConfigError
    from dff_ros.ff.trainer import ReferenceTrainer
    raw = {"name": "sym", "model": [[-1, "FFDense", [100]], [-1, "FFDense", [100]]],
           "train": {"epochs": 1, "splits": 1, "train_subset": 2000, "test_subset": 500, "ff_loss": "symmetric"}}
    acc = ReferenceTrainer(parse_model_config(raw, "sym.yaml"), mnist, progress=False).fit()["accuracy"]
    assert acc["goodness"] > 0.2 and acc["softmax"] > 0.6, acc   # chance: 0.1 (the threshold loss: 0.03 here)
    raw["train"]["ff_loss"] = "squared"
    with pytest.raises(ConfigError, match="sym.yaml: train.ff_loss: must be one of threshold, symmetric"):
        parse_model_config(raw, "sym.yaml")


def test_ff_loss_falls_as_positive_rises_and_negative_falls():
    base = float(ff_loss(torch.tensor([1.0]), torch.tensor([1.0]), 1.0))
    assert float(ff_loss(torch.tensor([5.0]), torch.tensor([1.0]), 1.0)) < base
    assert float(ff_loss(torch.tensor([1.0]), torch.tensor([-3.0]), 1.0)) < base


def test_length_normalize_hides_goodness_of_previous_layer():
    x = torch.tensor([[3.0, 4.0], [30.0, 40.0]])
    n = length_normalize(x)
    assert torch.allclose(n[0], n[1])
    assert float(n[0].pow(2).mean()) == pytest.approx(1.0, rel=1e-5)


def test_dense_layer_output_is_invariant_to_input_scale():
    torch.manual_seed(0)
    layer = FFDense(8, 4)
    x = torch.rand(3, 8)
    assert torch.allclose(layer(x), layer(7.5 * x), atol=1e-5)
    assert (layer(x) >= 0).all()


def test_length_normalize_has_finite_gradient_on_an_all_zero_row():
    from dff_ros.ff.layers import length_normalize

    x = torch.zeros(2, 5, requires_grad=True)
    with torch.no_grad():
        x[1] = torch.tensor([3.0, 4.0, 0.0, 0.0, 0.0])
    y = length_normalize(x)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.allclose(y[1].pow(2).mean(), torch.tensor(1.0), atol=1e-6)
