"""A colour image set (generated, in the image-folder layout) and a conv FF model through the
DFF pipeline and PFF over real DDS: servers read the dataset description from the request, conv
activations cross the topics with their shapes, and the runs learn."""
import pytest
import yaml

from generated_images import blobs
from rosutil import ros_env, run_launcher, write_pipeline

MODEL = [[-1, "FFConv", [8]], [-1, "FFConv", {"channels": 8, "pool": 1, "depth": 2}], [-1, "FFDense", [40]]]   # a block


CWC = {"algorithm": "cwc", "classifiers": ["cwc_all", "cwc_last"]}   # class groups: no negatives, one pass


def pipeline_for(tmp_path, train=None, **pipe):
    dataset = blobs(tmp_path / "cam", (10, 12), 3, 4)
    pipeline = write_pipeline(tmp_path, tmp_path, pipeline=pipe)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({
        "name": "cam test", "dataset": dataset, "model": MODEL,
        "train": {"epochs": 4, "splits": 2, "lr": 0.003, "batch_size": 16, "schedule": "chapters", **(train or {})}}))
    return pipeline


# (cwc through DFF: test_ros_faults' conv block, which also recovers from a killed server)
@pytest.mark.parametrize("train", [None], ids=["ff"])
def test_a_conv_model_on_colour_images_through_dff(tmp_path, train):
    summary, out = run_launcher(ros_env(), tmp_path, pipeline_for(tmp_path, train))
    # chance: 0.25 (a conv layer's label overlay is a few pixels: its goodness classifier is no better)
    for key in (["cwc_all", "cwc_last"] if train else ["softmax"]):
        assert summary["accuracy"][key] >= 0.8, summary["accuracy"]
    assert "layer0-FFConv-" in out and "layer1-FFConv-" in out, out[-3000:]   # the servers hosted conv layers
    assert ("head weights" in out) == (train is None)   # cwc has no softmax head


@pytest.mark.parametrize("train", [None, CWC], ids=["ff", "cwc"])
def test_a_conv_model_on_colour_images_through_pff(tmp_path, train):
    summary, out = run_launcher(ros_env(), tmp_path, pipeline_for(tmp_path, train, transport="parameters",
                                                                  pff_variant="all_layers"))
    key = "cwc_all" if train else "softmax"
    assert summary["accuracy"][key] >= 0.8, summary["accuracy"]
