"""A hosted DFF layer without ROS (dff_ros.hosting): what it takes and drops, its weights file
with where it came from, and its status."""
import torch

from dff_ros import weights
from dff_ros.config import parse_model_config
from dff_ros.hosting import UNSEALED_WAITING, HostedLayer
from dff_ros.pipeline.chunks import TrainChunk
from dff_ros.run.cluster import HostRequest


def request(run_id="r1", **train):
    m = parse_model_config({"name": "hosting test", "model": [[-1, "FFDense", [40]], [-1, "FFDense", [30]]],
                            "train": {"epochs": 2, "splits": 2, "train_subset": 200, **train}}, "test")
    return HostRequest(run_id, m, (0,))


def first_layer(tmp_path, req=None):
    req = req or request()
    return HostedLayer(req, req.model.layers[0], {}, last=False, weights_dir=tmp_path)


def chapter_chunk(mnist, chapter):
    x, y = mnist["train_images"][:200], mnist["train_labels"][:200]
    neg = (y + 1) % 10
    return TrainChunk(chapter, chapter + 1, 0, 1, y, images=x, neg_labels=neg)


def test_it_names_chunks_that_are_not_for_it(tmp_path):
    h = first_layer(tmp_path)
    assert h.foreign("r1", "hosting test", -1) is None
    assert h.foreign("r1", "other", -1)[0] == "foreign"
    assert h.foreign("r2", "hosting test", -1) == ("foreign", "run 'r2', this layer belongs to run 'r1'")
    assert h.foreign("r1", "hosting test", 0)[0] == "misrouted"
    assert [h.drop("foreign"), h.drop("foreign"), h.drop("malformed")] == [True, False, True]
    assert h.dropped == 3 and "foreign 2" in h.status("server_1").message


def test_unsealed_chunks_get_a_bounded_number_of_places(tmp_path):
    """Nobody paces unsealed inference chunks: past UNSEALED_WAITING waiting, more are dropped
    until one is done (the server counts them as busy)."""
    h = first_layer(tmp_path)
    assert all(h.take_unsealed_place() for _ in range(UNSEALED_WAITING))
    assert not h.take_unsealed_place()
    h.free_unsealed_place()
    assert h.take_unsealed_place() and not h.take_unsealed_place()


def test_only_a_finished_layer_is_restored_and_it_says_from_where(mnist, tmp_path):
    h = first_layer(tmp_path)
    outs = h.train(chapter_chunk(mnist, 0))
    assert outs and not h.finished(chapter_chunk(mnist, 0), outs)
    h.save()   # after 1 of 2 chapters: an interrupted run's layer
    again = first_layer(tmp_path, request("r2"))
    why = again.restore()
    assert "stopped after 1 of 2 chapters" in why and not again.restored
    outs = h.train(chapter_chunk(mnist, 1))
    assert h.finished(chapter_chunk(mnist, 1), outs)
    path = h.save()
    later = first_layer(tmp_path, request("r3"))
    assert later.restore() == "" and later.restored
    assert later.restored_from.startswith(f"{path} (run r1, 2/2 chapters, saved ")
    assert all(torch.equal(a, b) for a, b in zip(later.host.layer.state_dict().values(),
                                                 h.host.layer.state_dict().values()))
    # saved again without training further, it keeps the provenance of the run that trained it
    later.save()
    _, made = weights.read_layer(path, later.hash)
    assert made["run_id"] == "r1" and made["chapters_done"] == 2


def test_status_reports_history_and_bytes(mnist, tmp_path):
    h = first_layer(tmp_path)
    h.train(chapter_chunk(mnist, 0))
    h.sent(0, 1234)
    st = h.status("robot1/server_1")
    assert (st.server, st.layer, st.phase, st.chapters_done, st.samples) == ("robot1/server_1", 0, "training", 1, 200)
    assert st.chapter_bytes_out == [1234, 0] and st.bytes_out == 1234
    assert st.epoch_loss[0] == st.epoch_loss[0] and st.epoch_loss[1] != st.epoch_loss[1]   # epoch 2 not yet
