import torch

from dff_ros.config.schema import parse_model_config
from dff_ros.ff import goodness, overlay
from dff_ros.ff.classifiers import class_scores, goodness_scores
from dff_ros.ff.network import FFNetwork


def tiny_net(algorithm="ff"):
    torch.manual_seed(0)
    train = {"algorithm": algorithm, "classifiers": ["pon_last", "pon_all"] if algorithm == "pon"
             else ["goodness", "softmax"]}
    cfg = parse_model_config({"name": "t", "model": [[-1, "FFDense", [32]], [-1, "FFDense", [24]],
                                                     [-1, "FFDense", [16]]], "train": train})
    return FFNetwork.from_config(cfg)


def naive_goodness_scores(net, images):
    """Ten separate passes, one per candidate label."""
    cols = []
    for c in range(10):
        acts = net.forward_all(overlay(images, torch.full((images.shape[0],), c)))
        cols.append(sum(goodness(a, "mean") for a in acts[1:]))
    return torch.stack(cols, dim=1)


def test_batched_goodness_equals_ten_passes():
    net = tiny_net()
    x = torch.rand(37, 784)
    batched = goodness_scores(net, x, "mean", batch_size=8)
    assert batched.shape == (37, 10)
    assert torch.allclose(batched, naive_goodness_scores(net, x), atol=1e-5)


def test_softmax_scores_use_all_layers_but_first():
    net = tiny_net()
    assert net.head.in_features == 24 + 16
    assert class_scores(net, torch.rand(5, 784), "softmax").shape == (5, 10)


def test_pon_all_sums_the_per_layer_log_probs():
    net = tiny_net("pon")
    x = torch.rand(6, 784)
    last = class_scores(net, x, "pon_last")
    every = class_scores(net, x, "pon_all")
    assert last.shape == every.shape == (6, 10)
    assert (every <= last + 1e-6).all(), "a sum of log-probs can only be lower than one of them"


def test_label_candidate_shortcut_equals_plain_overlay_forward():
    net = tiny_net()
    x = torch.rand(9, 784)
    from dff_ros.ff import overlay_all_labels

    fast = net.layers[0].forward_label_candidates(x, 10)
    plain = net.layers[0](overlay_all_labels(x, 10))
    assert torch.allclose(fast, plain, atol=1e-5)
