"""Pipeline YAML, layer-type YAML and the distribution planner."""
from pathlib import Path

import pytest
import yaml

from dff_ros.config import ConfigError, load_model_config
from dff_ros.config.pipeline import (check_model_layer_types, load_layer_types, load_pipeline_config,
                                     place_layers, solo_threads)
from dff_ros.topics import layer_topics, topic_token
from dff_ros.weights import path_token

REPO = Path(__file__).resolve().parents[1]


def test_shipped_pipeline_resolves_paths_and_checks():
    p = load_pipeline_config(REPO / "config" / "mnist_pipeline.yaml")
    model = load_model_config(p.model)
    check_model_layer_types(model, load_layer_types(p.layer_types), p.layer_types)
    assert p.servers == 2 and Path(p.model).is_absolute()


@pytest.mark.parametrize("raw, key", [
    ({"servers": 0}, "servers"), ({"placement": "random"}, "placement"), ({"train": "yes"}, "train"),
    ({"bogus": 1}, "bogus"), ({"stall_seconds": -1}, "stall_seconds"), ({"transport": "sockets"}, "transport"),
    ({"pff_variant": "ring"}, "pff_variant"), ({"param_history": 0}, "param_history"),
    ({"server_solo_threads": -1}, "server_solo_threads")])
def test_pipeline_errors_name_file_and_key(tmp_path, raw, key):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"model": "m.yaml", "layer_types": "l.yaml", **raw}))
    with pytest.raises(ConfigError) as e:
        load_pipeline_config(f)
    assert e.value.source == str(f) and e.value.key == key


def test_solo_threads_share_this_machine_among_the_servers_started_here(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert solo_threads(0, servers_here=2, threads=1) == 2      # two 1-thread servers share 2 of 4 cores
    assert solo_threads(0, servers_here=8, threads=1) == 4      # never more than the machine has
    assert solo_threads(0, servers_here=1, threads=1) == 1      # one server per robot: no change
    assert solo_threads(0, servers_here=1, threads=6) == 6      # nor fewer than its own
    assert solo_threads(3, servers_here=2, threads=1) == 3      # set in the YAML: as given


def test_layer_types_errors(tmp_path):
    f = tmp_path / "l.yaml"
    f.write_text(yaml.safe_dump({"FFDense": {"train": {"input": "x/msg/Y", "output": "dff_ros/msg/TrainingBatch"},
                                             "infer": {"input": "dff_ros/msg/InferenceBatch",
                                                       "output": "dff_ros/msg/InferenceBatch"}}}))
    with pytest.raises(ConfigError, match="FFDense.train.input: unknown message type"):
        load_layer_types(f)
    f.write_text(yaml.safe_dump({"Conv9": {}}))
    with pytest.raises(ConfigError, match="Conv9: unknown layer type"):
        load_layer_types(f)


def test_round_robin_and_explicit_placement():
    servers = ["server_10", "server_2", "server_1"]
    assert place_layers(4, servers) == ["server_1", "server_2", "server_10", "server_1"]
    assert place_layers(2, servers, {0: "server_10", 1: "server_10"}) == ["server_10", "server_10"]
    with pytest.raises(ConfigError, match="placement.1: layer 1 has no server"):
        place_layers(2, servers, {0: "server_1"})
    with pytest.raises(ConfigError, match="not running"):
        place_layers(1, servers, {0: "server_7"})
    with pytest.raises(ConfigError, match="no server"):
        place_layers(1, [])


def test_names_are_sanitized():
    assert topic_token("9 lives/../x") == "m_9_lives____x"
    assert path_token("mnist_default") == "mnist_default"      # safe names are kept
    token = path_token("../../etc/passwd")
    assert "/" not in token and not token.startswith(".") and token.startswith("_.._etc_passwd+")
    # different names, different folders, even where they are made safe alike
    names = ["a_x", "a/x", "a x", "a\\x", ".a_x", "a_x+" + path_token("a/x").split("+")[1], "é", "e", "x" * 100,
             "x" * 101, "x" * 300, "x" * 301, "", "."]
    tokens = [path_token(n) for n in names]
    assert len(set(tokens)) == len(names), dict(zip(names, tokens))
    assert all(len(t) <= 100 and "/" not in t and t not in (".", "..") and not t.startswith(".") for t in tokens)
    t = layer_topics("my model", 1, 1)
    assert t["train_input"] == "/dff/my_model/layer_0/train" and t["train_output"] == "/dff/my_model/output/train"


def test_the_reference_lists_every_pipeline_key_as_the_code_has_it():
    from dff_ros.config.pipeline import reference_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "reference.md").read_text()
    assert reference_table() in doc, "docs/reference.md: paste dff_ros.config.pipeline.reference_table()"


def test_pipeline_settings_go_through_ros_parameters_and_back(tmp_path):
    from dff_ros.config.pipeline import from_parameter_values, parameter_values

    cfg = load_pipeline_config(REPO / "config" / "mnist_pipeline.yaml", {"placement": {0: "server_2", 1: "server_1"}})
    values = parameter_values(cfg)
    assert values["placement"] == "{0: server_2, 1: server_1}" and values["restore_weights"] is None
    back = from_parameter_values(values, "params")
    assert {k: getattr(back, k) for k in values} == {k: getattr(cfg, k) for k in values}
    with pytest.raises(ConfigError, match="servers"):
        from_parameter_values({**values, "servers": "3"}, "params")
    assert not cfg.restores and load_pipeline_config(REPO / "config" / "mnist_pipeline.yaml", {"train": False}).restores
    with pytest.raises(ConfigError, match="restore_weights"):
        load_pipeline_config(REPO / "config" / "mnist_pipeline.yaml", {"transport": "parameters", "restore_weights": True})
