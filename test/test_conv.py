"""Convolutional FF layers and image sets other than MNIST: generated images of several sizes,
channel counts and class counts through the trainer, the network file, `dff-ros eval` and the
classifier; a conv layer's gradient stays inside it."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dff_ros.config.schema import ConfigError, parse_model_config
from dff_ros.data import load_dataset
from dff_ros.ff.layers import FFConv
from dff_ros.ff.trainer import ReferenceTrainer, load_network
from generated_images import blobs

REPO = Path(__file__).resolve().parents[1]


def model(dataset, rows, **train):
    return {"name": "gen", "dataset": dataset, "model": rows,
            "train": {"epochs": 4, "splits": 2, "lr": 0.003, "batch_size": 16, **train}}


def test_conv_specs_and_bad_args(tmp_path):
    cfg = parse_model_config(model(blobs(tmp_path / "set"), [[-1, "FFConv", [8]], [-1, "FFConv", [6, 3, 1]],
                                                             [-1, "FFDense", [30]]]), "m.yaml")
    assert [(s.in_shape, s.out_shape) for s in cfg.layers] == [((3, 10, 12), (8, 5, 6)), ((8, 5, 6), (6, 5, 6)),
                                                               ((6, 5, 6), (30,))]
    for args, words in (([8, 4], "kernel must be odd"), ([0], "channels must be a positive"),
                        ([8, 3, 20], "smaller than pool 20")):
        with pytest.raises(ConfigError, match=r"model\[0\].args: FFConv.*" + words):
            parse_model_config(model(blobs(tmp_path / "set"), [[-1, "FFConv", args], [-1, "FFDense", [5]]]), "m")
    with pytest.raises(ConfigError, match=r"model\[1\].args: .*needs \(C, H, W\) activations"):
        parse_model_config(model(blobs(tmp_path / "set"), [[-1, "FFDense", [5]], [-1, "FFConv", [4]]]), "m")


def test_a_conv_layer_learns_only_from_its_own_loss(tmp_path):
    first, second = FFConv((3, 8, 8), 4), FFConv((4, 4, 4), 5)
    x = torch.rand(6, 3 * 8 * 8)
    h = first(x)
    out = second(h.detach())   # what the learners pass on: the activity, not its graph
    out.pow(2).sum().backward()
    assert all(p.grad is None for p in first.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in second.parameters())


@pytest.mark.parametrize("size, channels, classes, rows", [
    ((10, 12), 3, 4, [[-1, "FFConv", [8]], [-1, "FFDense", [40]]]),
    ((9, 9), 1, 3, [[-1, "FFConv", [6, 3, 1]], [-1, "FFConv", [6]]]),
    ((6, 7), 3, 5, [[-1, "FFDense", [60]], [-1, "FFDense", [60]]]),
])
def test_generated_sets_train_save_and_evaluate(tmp_path, size, channels, classes, rows):
    dataset = blobs(tmp_path / "set", size, channels, classes)
    cfg = parse_model_config(model(dataset, rows), "m.yaml")
    assert cfg.data.image_shape == (channels, *size) and cfg.num_classes == classes
    data = load_dataset(cfg.dataset)
    trainer = ReferenceTrainer(cfg, data, progress=False)
    result = trainer.fit()
    assert result["accuracy"]["softmax"] >= 0.8, result["accuracy"]   # chance: 1 / classes
    trainer.save(tmp_path / "net.pt")
    net, again = load_network(tmp_path / "net.pt")
    assert again.data == cfg.data and again.dataset == cfg.dataset   # recorded with the weights
    out = subprocess.run([sys.executable, "-m", "dff_ros.cli", "eval", str(tmp_path / "net.pt")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"{100 * result['accuracy']['softmax']:6.2f} %" in out.stdout, (out.stdout, result["accuracy"])


def test_the_classifier_takes_the_models_image_size_and_channels(tmp_path):
    from types import SimpleNamespace

    from dff_ros.nodes.classifier import Classifier
    from dff_ros.wire.images import ImageError, image_to_row, row_to_image

    dataset = blobs(tmp_path / "set", (10, 12), 3, 4)
    cfg = parse_model_config(model(dataset, [[-1, "FFConv", [8]], [-1, "FFDense", [40]]]), "m.yaml")
    data = load_dataset(cfg.dataset)
    trainer = ReferenceTrainer(cfg, data, progress=False)
    trainer.fit()
    trainer.save(tmp_path / "net.pt")
    clf = Classifier(str(tmp_path / "net.pt"))
    assert clf.shape == (3, 10, 12)
    rows = []
    for row in data["test_images"][:8]:   # as a camera would send them (rgb8), decoded as the node does
        encoding, raw, step = row_to_image(row, clf.shape)
        rows.append(image_to_row(SimpleNamespace(height=10, width=12, encoding=encoding, is_bigendian=0,
                                                 step=step, data=raw), clf.shape))
    labels, _, _ = clf(torch.stack(rows))
    direct, _, _ = clf(data["test_images"][:8])
    assert torch.equal(labels, direct)
    with pytest.raises(ImageError, match="image is 28x28"):
        image_to_row(SimpleNamespace(height=28, width=28, encoding="rgb8", is_bigendian=0, step=84,
                                     data=bytes(28 * 84)), clf.shape)


def test_class_goodness_matches_a_naive_loop():
    from dff_ros.ff.objectives import class_goodness

    h = torch.randn(3, 6, 2, 5)   # 6 channels, 3 classes: channels 0-1, 2-3, 4-5
    naive = torch.tensor([[float((h[n, 2 * k:2 * k + 2] ** 2).mean()) for k in range(3)] for n in range(3)])
    assert torch.allclose(class_goodness(h, 3), naive)
    flat = torch.randn(4, 9)
    assert torch.allclose(class_goodness(flat, 3), (flat ** 2).view(4, 3, 3).mean(2))
    with pytest.raises(ValueError, match="7 channels do not split into 3"):
        class_goodness(torch.randn(2, 7), 3)


def test_cwc_classifies_in_one_pass_without_negatives(tmp_path):
    dataset = blobs(tmp_path / "set", (10, 12), 3, 4)
    cfg = parse_model_config(model(dataset, [[-1, "FFConv", {"channels": 8, "norm": "batch"}],
                                             [-1, "FFConv", {"channels": 8, "pool": 1, "norm": "batch", "depth": 2}],
                                             [-1, "FFDense", [20]]],
                                   algorithm="cwc", classifiers=["cwc_all", "cwc_last"]), "m.yaml")
    data = load_dataset(cfg.dataset)
    trainer = ReferenceTrainer(cfg, data, progress=False)
    result = trainer.fit()
    assert trainer.negatives is None
    assert min(result["accuracy"].values()) >= 0.8, result["accuracy"]   # chance: 0.25
    trainer.save(tmp_path / "net.pt")
    net, _ = load_network(tmp_path / "net.pt")   # the BatchNorms' statistics travel with the weights
    from dff_ros.ff.classifiers import accuracy
    assert round(accuracy(net, data["test_images"], data["test_labels"], "cwc_all"), 5) == result["accuracy"]["cwc_all"]
    with pytest.raises(ConfigError, match=r"model\[0\].args: cwc splits each layer's channels .* 6 do not split into 4"):
        parse_model_config(model(dataset, [[-1, "FFConv", [6]], [-1, "FFDense", [8]]], algorithm="cwc",
                                 classifiers=["cwc_all"]), "m.yaml")


def test_a_block_trains_its_convolutions_together_and_nothing_before_it():
    first, block = FFConv((3, 8, 8), 4), FFConv((4, 4, 4), 5, depth=3, norm="batch")
    assert len(block.inner) == 2 and block.out_shape == (5, 2, 2)
    assert sum(p.numel() for p in block.parameters()) == 3 * (5 * 2) + (4 * 9 * 5 + 5) + 2 * (5 * 9 * 5 + 5)
    assert set(FFConv((3, 8, 8), 4, norm="batch").state_dict()) == {   # a single layer's file as before blocks
        "conv.weight", "conv.bias", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var",
        "norm.num_batches_tracked"}
    block(first(torch.rand(6, 3 * 8 * 8)).detach()).pow(2).sum().backward()
    assert all(p.grad is None for p in first.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())   # every convolution
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        FFConv.check_args((3, 8, 8), 4, depth=0)


def test_batch_statistics_are_recomputed_once_a_chapter_is_trained():
    from dff_ros.ff.learners import GroupsLearner, make_inputs

    layer = FFConv((1, 6, 6), 4, 3, 1, "batch").eval()
    learner = GroupsLearner(layer, 2, lr=0.01, optimizer="adam", total_epochs=1, cooldown=False)
    x, y = torch.rand(700, 36), torch.randint(0, 2, (700,))
    a = make_inputs(x, y, None, 2, True)
    for idx in torch.arange(700).split(50):
        learner.train_step(a.select(idx))
    learner.settle(a, rows=600, chunk=100)   # the statistics of the first 600 rows, with the trained weights
    z = layer.conv(a.neutral[:600].view(600, 1, 6, 6))
    assert torch.allclose(layer.norm.running_mean, z.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(layer.norm.running_var, z.var((0, 2, 3)), rtol=1e-3)
    assert not layer.training and layer.norm.momentum == 0.1


def test_batch_norm_layers_need_the_chapters_schedule(tmp_path):
    with pytest.raises(ConfigError, match="train.schedule: layer 0 normalises by batch statistics"):
        parse_model_config(model(blobs(tmp_path / "set"), [[-1, "FFConv", [8, 3, 2, "batch"]], [-1, "FFDense", [8]]],
                                 schedule="stream"), "m.yaml")


def test_augmentation_shifts_and_mirrors_whole_images():
    from dff_ros.data.augment import augmented

    img = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4) + 1   # 2 channels, 3x4, no zeros
    rows = img.reshape(1, -1).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    out = augmented(rows, (2, 3, 4), 1, True, g).view(400, 2, 3, 4)
    seen = set()
    for o in out:
        found = None
        for flipped in (False, True):
            src = img[0].flip(2) if flipped else img[0]
            padded = torch.nn.functional.pad(src, (1, 1, 1, 1))
            for dy in range(3):
                for dx in range(3):
                    if torch.equal(o, padded[:, dy:dy + 3, dx:dx + 4]):
                        found = (flipped, dy, dx)
        assert found is not None   # every row is one shift of the (mirrored) image, channels together
        seen.add(found)
    assert len(seen) == 18   # every shift, both ways round
    same = augmented(rows, (2, 3, 4), 1, True, torch.Generator().manual_seed(0))
    assert torch.equal(same.view(400, 2, 3, 4), out)   # the same draws for the same seed
    assert torch.equal(augmented(rows, (2, 3, 4), 0, False, g), rows)
    u8 = augmented(rows.to(torch.uint8), (2, 3, 4), 1, True, torch.Generator().manual_seed(0))
    assert torch.equal(u8.float().view(400, 2, 3, 4), out)   # the master's uint8 rows draw the same copy


def test_hybrid_negatives_mix_two_images_by_a_blurred_mask():
    from dff_ros.ff.negatives import hybrid_images

    n, shape = 50, (3, 16, 16)
    images = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1).repeat(1, 3 * 16 * 16)   # image k: all k
    neg = hybrid_images(images, shape, seed=0, chapter=3).view(n, *shape)
    for k in range(n):
        values = set(neg[k].unique().tolist())
        assert len(values) <= 2 and k + 1 in values or len(values) == 1   # its own pixels and one other image's
        assert torch.equal(neg[k, 0], neg[k, 2])   # one mask for every channel
    mixed = sum(len(neg[k].unique()) == 2 for k in range(n))
    assert mixed >= 0.8 * n   # a 16x16 mask thresholded at 0.5 is almost never all one side
    assert torch.equal(hybrid_images(images, shape, 0, 3), neg.view(n, -1))       # drawn from (seed, chapter)
    assert not torch.equal(hybrid_images(images, shape, 0, 4), neg.view(n, -1))


def test_unsupervised_ff_with_hybrid_negatives_learns_features_for_the_head(tmp_path):
    dataset = blobs(tmp_path / "set", (10, 12), 3, 4)
    cfg = parse_model_config(model(dataset, [[-1, "FFDense", [100]], [-1, "FFDense", [100]]], negatives="hybrid",
                                   classifiers=["softmax"]), "m.yaml")
    assert not cfg.train.overlay
    result = ReferenceTrainer(cfg, load_dataset(cfg.dataset), progress=False).fit()
    assert result["accuracy"]["softmax"] >= 0.8, result["accuracy"]
    with pytest.raises(ConfigError, match="train.negatives: hybrid negatives train FF without labels"):
        parse_model_config(model(dataset, [[-1, "FFDense", [10]], [-1, "FFDense", [10]]], negatives="hybrid"), "m")


def test_a_centred_dense_layer_gives_its_overlays_the_plain_forward():
    from dff_ros.ff.layers import FFDense
    from dff_ros.ff.overlay import blank_labels, overlay, overlay_neutral

    layer = FFDense(20, 7, center=True)
    x, labels = torch.rand(5, 20) + 3.0, torch.tensor([0, 2, 1, 3, 0])
    got = layer.forward_overlaid(blank_labels(x, 4), [labels, None], 4)
    want = torch.cat([layer(overlay(x, labels, 4)), layer(overlay_neutral(x, 4))])
    assert torch.allclose(got, want)
    shifted = layer(x + 10.0)   # centring: a constant added to every pixel changes nothing
    assert torch.allclose(shifted, layer(x), atol=1e-5)
