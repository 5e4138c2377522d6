"""Short real training runs on MNIST subsets (seconds each)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dff_ros.config.schema import parse_model_config
from dff_ros.ff.classifiers import accuracy
from dff_ros.ff.trainer import ReferenceTrainer, load_network

REPO = Path(__file__).resolve().parents[1]
SMALL = {"train_subset": 6000, "test_subset": 2000, "batch_size": 64, "threads": 2, "lr": 0.003}


def config(train, widths=(256, 256)):
    return parse_model_config({"name": "small", "model": [[-1, "FFDense", [w]] for w in widths],
                               "train": {**SMALL, **train}})


@pytest.mark.parametrize("train, floor", [
    ({"epochs": 8, "splits": 4, "schedule": "stream", "classifiers": ["goodness", "softmax"]},
     {"goodness": 0.85, "softmax": 0.85}),
    ({"epochs": 8, "splits": 4, "schedule": "chapters", "classifiers": ["goodness", "softmax"]},
     {"goodness": 0.85, "softmax": 0.85}),
    ({"epochs": 6, "splits": 3, "negatives": "adaptive", "classifiers": ["goodness"]}, {"goodness": 0.80}),
    ({"epochs": 4, "splits": 4, "algorithm": "pon", "classifiers": ["pon_last", "pon_all"]},
     {"pon_last": 0.85, "pon_all": 0.85}),
])
def test_short_training_is_far_above_chance(mnist, train, floor):
    result = ReferenceTrainer(config(train), mnist, progress=False).fit()
    for name, minimum in floor.items():
        assert result["accuracy"][name] >= minimum, result["accuracy"]
    history = result["history"]
    assert history["epochs"] == train["epochs"] and set(history["loss"]) >= {"layer_0", "layer_1"}
    for name in history["loss"]:
        loss, acc = history["loss"][name], history["accuracy"][name]
        assert len(loss) == len(acc) == train["epochs"] and None not in loss + acc, name
        assert 0.0 <= min(acc) <= max(acc) <= 1.0, (name, acc)
    assert history["loss"]["layer_0"][-1] < history["loss"]["layer_0"][0], "layer 0 loss should fall"
    # training accuracy rises: FF layers separate positive from negative, the head classifies
    for name in history["accuracy"]:
        assert history["accuracy"][name][-1] > max(history["accuracy"][name][0], 0.6), (name, history["accuracy"])


def test_same_seed_same_weights(mnist):
    cfg = config({"epochs": 1, "splits": 1, "train_subset": 1000, "classifiers": ["goodness"]}, (32, 32))
    a = ReferenceTrainer(cfg, mnist, progress=False)
    b = ReferenceTrainer(cfg, mnist, progress=False)
    a.fit(), b.fit()
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(va, vb), k


def test_saved_weights_reload_to_same_accuracy(mnist, tmp_path):
    cfg = config({"epochs": 1, "splits": 1, "train_subset": 2000, "test_subset": 500}, (64, 64))
    trainer = ReferenceTrainer(cfg, mnist, progress=False)
    result = trainer.fit()
    trainer.save(tmp_path / "w.pt")
    net, cfg2 = load_network(tmp_path / "w.pt")
    assert cfg2.layers == cfg.layers
    x, y = mnist["test_images"][:500], mnist["test_labels"][:500]
    for c in ("goodness", "softmax"):
        assert accuracy(net, x, y, c) == pytest.approx(result["accuracy"][c], abs=1e-6)


def test_weights_file_with_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "x", "obj": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_network(path)


def test_cli_train_then_eval(tmp_path, data_root):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dff_ros", "train", str(REPO / "config/models/mnist_default.yaml"),
           "--data-root", str(data_root), "--out", str(out), "--no-download",
           "--set", "epochs=4", "--set", "splits=2", "--set", "lr=0.003", "--set", "train_subset=4000",
           "--set", "test_subset=500"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "test accuracy [goodness]" in done.stdout and "samples/s" in done.stdout
    assert "100.0%" in done.stderr, "progress lines expected on stderr"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"]["goodness"] > 0.7
    ev = subprocess.run([sys.executable, "-m", "dff_ros", "eval", str(out / "weights.pt"),
                         "--data-root", str(data_root), "--no-download"], capture_output=True, text=True,
                        timeout=300)
    assert ev.returncode == 0, ev.stderr
    assert "test accuracy [goodness]" in ev.stdout


def test_cli_config_error_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: [[-1, FFDense, [0]]]\n")
    done = subprocess.run([sys.executable, "-m", "dff_ros", "train", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "bad.yaml: model[0].args" in done.stderr
