import re

import pytest
import yaml

from dff_ros.config.schema import ConfigError, load_model_config, parse_model_config

GOOD = {"name": "m", "model": [[-1, "FFDense", [100]], [-1, "FFDense", {"out_features": 50}]],
        "train": {"epochs": 4, "splits": 2}}


def write(tmp_path, data, name="model.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def test_good_config_resolves_widths_and_chapters(tmp_path):
    cfg = load_model_config(write(tmp_path, GOOD))
    assert [(l.in_features, l.out_features) for l in cfg.layers] == [(784, 100), (100, 50)]
    assert cfg.train.chapter_epochs == 2
    again = parse_model_config(cfg.to_dict())
    assert again.layers == cfg.layers and again.train == cfg.train


@pytest.mark.parametrize("mutate, key, words", [
    (lambda d: d["train"].update(epochs=-3), "train.epochs", "positive integer"),
    (lambda d: d["train"].update(splits=3), "train.splits", "divide"),
    (lambda d: d["train"].update(negatives="hard"), "train.negatives", "adaptive, random, fixed"),
    (lambda d: d["train"].update(learning_rate=0.1), "train.learning_rate", "unknown key"),
    (lambda d: d.update(extra=1), "extra", "unknown key"),
    (lambda d: d["model"].append([-1, "Conv9", [3]]), "model[2].module", "unknown layer type"),
    (lambda d: d["model"].append([-1, "FFDense", [-5]]), "model[2].args", "positive integer"),
    (lambda d: d["model"].append([-1, "FFDense", [5, 6, 7, 8]]), "model[2].args", "too many"),
    (lambda d: d["model"].append([7, "FFDense", [5]]), "model[2].from", "earlier layer"),
    (lambda d: d["model"].append([-1, "FFDense"]), "model[2]", "[from, module, args]"),
    (lambda d: d["train"].update(classifiers=["pon_last"]), "train.classifiers", "not a classifier"),
    (lambda d: d.update(dataset={"name": "CIFAR"}), "dataset.format", "not a preset"),
    # not finite, or larger than anything real (they were accepted, and trained nothing or ran out of memory)
    (lambda d: d["train"].update(threshold=float("nan")), "train.threshold", "finite number"),
    (lambda d: d["train"].update(peer_normalization=float("inf")), "train.peer_normalization", "finite number"),
    (lambda d: d["train"].update(lr=float("inf")), "train.lr", "finite"),
    (lambda d: d["train"].update(threads=1_000_000), "train.threads", "up to 1,024"),
    (lambda d: d["train"].update(batch_size=2 ** 62), "train.batch_size", "up to 2,147,483,647"),
    (lambda d: d["train"].update(train_subset=2 ** 62), "train.train_subset", "up to 2,147,483,647"),
    (lambda d: d["train"].update(negatives_lag=2 ** 62), "train.negatives_lag", "up to 2,147,483,647"),
    (lambda d: d["train"].update(negatives_dtype="float16"), "train.negatives_dtype", "float32, bfloat16"),
])
def test_errors_name_file_key_and_problem(tmp_path, mutate, key, words):
    import copy

    data = copy.deepcopy(GOOD)
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_model_config(path)
    assert e.value.key == key
    assert str(path) in str(e.value) and key in str(e.value) and words in str(e.value)


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "name: m\nmodel: [[-1, FFDense, [10]]\n")
    with pytest.raises(ConfigError, match=r"model.yaml: <yaml>: line \d+"):
        load_model_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_model_config(tmp_path / "nope.yaml")


def test_overrides_are_validated(tmp_path):
    path = write(tmp_path, GOOD)
    assert load_model_config(path, {"epochs": 8}).train.epochs == 8
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_model_config(path, {"batch_size": 0})


def test_shipped_configs_are_valid():
    from pathlib import Path

    shipped = sorted((Path(__file__).resolve().parents[1] / "config" / "models").glob("*.yaml"))
    assert shipped, "config/models/ should ship model configs"
    for p in shipped:
        load_model_config(p)


def test_the_reference_lists_every_train_key_as_the_code_has_it():
    from pathlib import Path

    from dff_ros.config.schema import train_reference_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "reference.md").read_text()
    assert train_reference_table() in doc, "docs/reference.md: paste dff_ros.config.schema.train_reference_table()"


@pytest.mark.parametrize("text, words", [
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b]\n",
     "aliases (*a) are not allowed"),      # an alias bomb: grows by 9x per line
    ("x: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested deeper than 32 levels"),   # was a RecursionError
    ("name: " + "x" * (1 << 20) + "\n", "larger than any config"),
])
def test_yaml_that_only_an_attack_would_write_is_refused_at_once(tmp_path, text, words):
    import time

    path = write(tmp_path, text)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=re.escape(words)) as e:
        load_model_config(path)
    assert str(path) in str(e.value) and time.perf_counter() - start < 5
    from dff_ros.config.files import parse_set
    with pytest.raises(SystemExit, match="aliases"):
        parse_set(["epochs=[&a 1, *a]"])
