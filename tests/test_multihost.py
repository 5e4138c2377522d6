"""Master and servers on different "hosts": `dff_ros.launcher --emulate-hosts` puts each node in
its own network namespace with its own IP on a bridge, DDS over UDP only (dff_ros.netns).
Skipped, with the reason, where namespaces cannot be made (not root)."""
import re

import pytest

from rosutil import ros_env, run_launcher, write_pipeline

from dff_ros.config import load_model_config
from dff_ros.netns import NetnsUnavailable, VirtualHosts

SMALL = dict(widths=(200, 200), epochs=4, splits=4, train_subset=3000, test_subset=1000)


@pytest.fixture(autouse=True)
def namespaces_available():
    try:
        VirtualHosts.check_available()
    except NetnsUnavailable as e:
        pytest.skip(f"no network namespaces here: {e}")


def traffic_by_host(out: str) -> dict[str, tuple[int, int]]:
    """What the launcher reports each emulated host sent and received: {"master": (sent, received), ...}."""
    return {who: (int(s), int(r)) for who, s, r in
            re.findall(r"\[launcher\] host \S+ \((\S+)\) sent (\d+) bytes, received (\d+) bytes", out)}


def test_pff_all_layers_across_hosts_matches_the_sequential_run(tmp_path, data_root, mnist):
    from dff_ros.ff.trainer import ReferenceTrainer

    pipeline = write_pipeline(tmp_path, data_root, pipeline={"transport": "parameters", "pff_variant": "all_layers"},
                              **SMALL)
    summary, out = run_launcher(ros_env(), tmp_path, pipeline, "--emulate-hosts")
    assert "master on 10." in out, out
    ref = ReferenceTrainer(load_model_config(tmp_path / "model.yaml"), mnist, progress=False).fit()["accuracy"]
    for k in ("goodness", "softmax"):
        assert abs(summary["accuracy"][k] - ref[k]) <= 0.005, (summary["accuracy"], ref)
    # the parameters really crossed the emulated network: the server hosts sent at least what they
    # published, once per remote reader (the other server and the master)
    traffic = traffic_by_host(out)
    published = sum(n["bytes_out"] for n in summary["per_node"])
    # the parameters crossed the emulated network: each version once, to the other server
    assert traffic["server#1"][0] + traffic["server#2"][0] >= published > 0, (traffic, published)
    # the master host got the final versions only, by service and without optimizer state, not
    # every version: a twelfth of what was published, plus discovery and task reports
    assert summary["master_bytes_received"] <= traffic["master"][1] < 0.4 * published, (traffic, summary)


def test_dff_activations_across_hosts(tmp_path, data_root):
    pipeline = write_pipeline(tmp_path, data_root)
    summary, out = run_launcher(ros_env(), tmp_path, pipeline, "--emulate-hosts")
    assert summary["accuracy"]["softmax"] > 0.8, summary["accuracy"]
    assert {l["server"] for l in summary["layers"]} == {"server_1", "server_2"}
    assert traffic_by_host(out)["master"][0] >= summary["master"]["bytes_sent"] > 0, out[-3000:]
