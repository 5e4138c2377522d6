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


def test_bfloat16_scoring_is_float32_scores_close_to_the_float32_ones():
    """bf16 keeps 8 bits of mantissa: each score within ~1 % of the float32 one (the chosen
    negative may differ only where two labels score within that), and deterministic."""
    net = tiny_net()
    x = torch.rand(200, 784)
    exact = goodness_scores(net, x, "sum")
    fast = goodness_scores(net, x, "sum", dtype="bfloat16")
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    assert not torch.equal(fast, exact)   # the matmuls did run in bf16
    assert torch.allclose(fast, exact, rtol=0.02, atol=1e-3), (fast - exact).abs().max()
    assert torch.equal(fast, goodness_scores(net, x, "sum", dtype="bfloat16"))
    assert torch.is_autocast_enabled("cpu") is False   # nothing left switched on


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


def test_overlaid_first_layer_equals_the_materialised_overlays_in_values_and_gradients():
    """Training and chapter forwards take the first layer's passes from one matmul over the
    images; they must be what the layer gives on the overlays themselves."""
    from dff_ros.ff.learners import Activities, make_inputs

    net = tiny_net()
    layer = net.layers[0]
    images, labels = torch.rand(37, 784), torch.randint(0, 10, (37,))
    neg = (labels + torch.randint(1, 10, (37,))) % 10
    inputs = make_inputs(images, labels, neg, 10, True)
    passes = ("pos", "neg", "neutral")
    fast = inputs.forward(layer, passes)
    plain = layer(torch.cat([inputs.pos, inputs.neg, inputs.neutral]))
    assert torch.allclose(fast, plain, atol=1e-5)
    fast_grads = torch.autograd.grad(fast.pow(2).sum(), list(layer.parameters()))
    plain_grads = torch.autograd.grad(plain.pow(2).sum(), list(layer.parameters()))
    for f, p in zip(fast_grads, plain_grads):
        assert torch.allclose(f, p, rtol=1e-4, atol=1e-4 * p.abs().max().item())
    mapped = inputs.map(layer, chunk=8)
    for name in passes:
        assert torch.allclose(getattr(mapped, name), layer(getattr(inputs, name)), atol=1e-5)
    halves = Activities.concat([inputs.select(slice(0, 10)), inputs.select(slice(10, None))])
    assert torch.equal(halves.forward(layer, passes), fast)
    assert inputs.select(slice(0, 0)).map(layer).neutral.shape == (0, 32)


def test_head_features_in_row_chunks_equal_the_whole_at_once():
    from dff_ros.ff.layers import length_normalize

    acts = [torch.rand(1100, 32), torch.rand(1100, 24), torch.rand(1100, 16)]
    whole = torch.cat([length_normalize(a) for a in acts[1:]], dim=1)
    assert torch.equal(FFNetwork.head_features(acts, chunk=512), whole)


def test_scratch_tensors_are_written_over_from_one_chapter_to_the_next():
    from dff_ros.ff.learners import Activities, Scratch, make_inputs

    net, scratch = tiny_net(), Scratch()
    images, labels = torch.rand(700, 784), torch.randint(0, 10, (700,))
    outputs = []
    for chapter in range(2):
        neg = (labels + 1 + chapter) % 10
        inputs = make_inputs(images, labels, neg, 10, True, scratch=scratch)
        fresh_inputs = make_inputs(images, labels, neg, 10, True)
        for name in ("pos", "neg", "neutral"):
            assert torch.equal(getattr(inputs, name), getattr(fresh_inputs, name))
        out = inputs.map(net.layers[0], chunk=256, scratch=scratch, key=0)
        fresh = fresh_inputs.map(net.layers[0], chunk=256)
        for name in ("pos", "neg", "neutral"):
            assert torch.equal(getattr(out, name), getattr(fresh, name))
        feats = net.head_features([out.neutral, out.neutral], scratch=scratch)
        assert torch.equal(feats, net.head_features([fresh.neutral, fresh.neutral]))
        outputs.append((inputs.neg.data_ptr(), out.pos.data_ptr(), out.neutral.data_ptr(), feats.data_ptr()))
    assert outputs[0] == outputs[1], "the second chapter wrote into the first chapter's tensors"
    assert len({p for p in outputs[0]}) == 4, "each pass has its own tensor"
    smaller = Activities(images[:100], None, None, labels[:100]).map(net.layers[0], scratch=scratch, key=0)
    assert smaller.pos.shape == (100, 32), "a different shape gets a new tensor"
