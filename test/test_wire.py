"""Tensor <-> dff_ros/Tensor and config <-> ROS parameter conversion."""
import array

import pytest
import torch

from dff_ros.msg import Tensor
from dff_ros.wire.codec import from_parameters, to_parameters
from dff_ros.wire.tensors import TensorDecodeError, from_msg, to_msg


@pytest.mark.parametrize("t", [torch.randn(64, 2000), torch.arange(10), torch.randint(0, 255, (3, 784), dtype=torch.uint8),
                               torch.randn(4, 5).to(torch.bfloat16), torch.zeros(0, 7)])
def test_round_trip(t):
    m = to_msg(t)
    assert isinstance(m.data, array.array) and len(m.data) == t.numel() * t.element_size()
    back = from_msg(m)
    assert back.dtype == t.dtype and back.shape == t.shape and torch.equal(back, t)


def test_received_tensor_shares_the_message_buffer():
    m = to_msg(torch.zeros(4))
    t = from_msg(m)
    m.data[0:4] = array.array("B", torch.tensor([1.5]).view(torch.uint8).tolist())
    assert float(t[0]) == 1.5


def test_absent_and_malformed():
    assert from_msg(Tensor()) is None
    with pytest.raises(TensorDecodeError, match="needs 16 bytes"):
        from_msg(Tensor(dtype="float32", shape=[2, 2], data=bytes(3)))
    with pytest.raises(TensorDecodeError, match="unknown dtype"):
        from_msg(Tensor(dtype="complex", shape=[1], data=bytes(8)))
    with pytest.raises(TensorDecodeError, match="expected int64"):
        from_msg(to_msg(torch.zeros(2)), expect_dtype=torch.int64, name="labels")
    with pytest.raises(TensorDecodeError, match="without a dtype"):
        from_msg(Tensor(shape=[1], data=bytes(1)))
    # no bytes, but strides that overflow int64: torch would raise RuntimeError (a server died of it)
    with pytest.raises(TensorDecodeError, match="too large for any tensor"):
        from_msg(Tensor(dtype="float32", shape=[0, 2 ** 32 - 1, 2 ** 32 - 1], data=b""))
    assert from_msg(Tensor(dtype="float32", shape=[0, 2 ** 20, 2 ** 20], data=b"")).shape == (0, 2 ** 20, 2 ** 20)


def test_parameters_keep_types():
    values = {"epochs": 3, "lr": 0.001, "cooldown": True, "threshold": None, "classifiers": ["goodness"],
              "schedule": "stream"}
    assert from_parameters(to_parameters(values)) == values


def test_node_executor_choice(monkeypatch):
    import rclpy.executors
    from dff_ros.nodes.common import make_executor
    rclpy.init()
    try:
        monkeypatch.delenv("DFF_EXECUTOR", raising=False)
        ex = make_executor()
        assert type(ex).__name__ == "EventsExecutor"   # Kilted's rclpy has it: the nodes' default
        ex.shutdown()
        monkeypatch.setenv("DFF_EXECUTOR", "single")
        assert isinstance(make_executor(), rclpy.executors.SingleThreadedExecutor)
        monkeypatch.setenv("DFF_EXECUTOR", "fast")
        with pytest.raises(ValueError, match="DFF_EXECUTOR='fast'"):
            make_executor()
    finally:
        rclpy.shutdown()


def test_a_host_request_carries_the_dataset_and_what_it_holds(tmp_path):
    """The model YAML's dataset section and the data's image shape and classes reach the server
    as the master has them (a PFF node reads the same data; a DFF one builds on the shapes)."""
    from generated_images import blobs

    from dff_ros.config.schema import parse_model_config
    from dff_ros.pff.plan import PFFPlan
    from dff_ros.run.cluster import HostRequest
    from dff_ros.srv import CreateLayers
    from dff_ros.wire.codec import host_request_from_msg, host_request_to_msg

    cfg = parse_model_config({"name": "cam", "dataset": blobs(tmp_path / "cam", (10, 12), 3, 4),
                              "model": [[-1, "FFConv", [8]], [-1, "FFDense", [20]]],
                              "train": {"epochs": 2, "splits": 2}}, "m.yaml")
    for req in (HostRequest("r", cfg, (0, 1)), HostRequest("r", cfg, (0, 1), plan=PFFPlan.for_model(cfg, "all_layers", 2))):
        back, _ = host_request_from_msg(host_request_to_msg(req, CreateLayers.Request()))
        assert back.model.dataset == cfg.dataset and back.model.data == cfg.data
        assert [s.in_shape for s in back.model.layers] == [(3, 10, 12), (8, 5, 6)]
