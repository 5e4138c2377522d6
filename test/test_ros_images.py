"""A colour image set (generated, in the image-folder layout) and a conv FF model through the
DFF pipeline and PFF over real DDS: servers read the dataset description from the request, conv
activations cross the topics with their shapes, and the runs learn."""
import yaml

from generated_images import blobs
from rosutil import ros_env, run_launcher, write_pipeline

MODEL = [[-1, "FFConv", [8]], [-1, "FFConv", [8, 3, 1]], [-1, "FFDense", [40]]]


def pipeline_for(tmp_path, **pipe):
    dataset = blobs(tmp_path / "cam", (10, 12), 3, 4)
    pipeline = write_pipeline(tmp_path, tmp_path, pipeline=pipe)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({
        "name": "cam test", "dataset": dataset, "model": MODEL,
        "train": {"epochs": 4, "splits": 2, "lr": 0.003, "batch_size": 16, "schedule": "chapters"}}))
    return pipeline


def test_a_conv_model_on_colour_images_through_dff(tmp_path):
    summary, out = run_launcher(ros_env(), tmp_path, pipeline_for(tmp_path))
    assert summary["accuracy"]["softmax"] >= 0.8, summary["accuracy"]   # chance: 0.25
    assert "layer0-FFConv-" in out and "layer1-FFConv-" in out, out[-3000:]   # the servers hosted conv layers
    assert "decoding cam" in out   # the master decoded the image folder, with progress


def test_a_conv_model_on_colour_images_through_pff(tmp_path):
    summary, out = run_launcher(ros_env(), tmp_path, pipeline_for(tmp_path, transport="parameters",
                                                                  pff_variant="all_layers"))
    assert summary["accuracy"]["softmax"] >= 0.8, summary["accuracy"]
