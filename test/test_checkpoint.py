"""Checkpoint files: a writer killed mid-write leaves the previous file whole; loading refuses
anything but tensors."""
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from dff_ros.weights import load_weights, save_atomic

WRITER = """
import sys, torch
from dff_ros.weights import save_atomic
i = 1
while True:  # ~32 MB per version: most of the time is spent inside a write
    save_atomic({"version": torch.tensor(i), "w": torch.full((8_000_000,), float(i))}, sys.argv[1])
    i += 1
"""


def test_kill_during_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    path = tmp_path / "layer0.pt"
    save_atomic({"version": torch.tensor(0), "w": torch.zeros(8_000_000)}, path)
    mid_write = 0
    for delay in (0.0, 0.02, 0.05, 0.08, 0.13):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env={**os.environ})
        before, end = path.stat().st_mtime_ns, time.monotonic() + 60
        while path.stat().st_mtime_ns == before and time.monotonic() < end:   # the writer is writing
            time.sleep(0.002)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        left = list(tmp_path.glob(".layer0.pt.*.tmp"))
        mid_write += bool(left)
        for f in left:   # what a killed writer leaves is a temp file beside, never the checkpoint
            f.unlink()
        state = load_weights(path)
        v = float(state["version"])
        assert torch.equal(state["w"], torch.full((8_000_000,), v)), f"torn checkpoint after {delay} s"
    assert mid_write >= 1, "no kill landed inside a write: the test proved nothing"


def test_loading_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(path, "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_weights(path)


def test_two_models_never_share_a_folder_and_deleting_one_leaves_files_naming_another(tmp_path):
    from dff_ros import weights

    assert weights.model_dir(tmp_path, "a/x") != weights.model_dir(tmp_path, "a_x")   # made safe alike once
    folder = weights.model_dir(tmp_path, "a_x")

    def layer(model, name):
        weights.save_layer(folder / name, model=model, index=0, spec_hash="h", state={"layer": {}}, provenance={})

    layer("a_x", "layer0-FFDense-aaa.pt")
    layer("a/x", "layer0-FFDense-bbb.pt")        # another model's files, copied into this folder
    weights.save_head(folder / "head-bbb.pt", {}, {}, model="a/x")
    save_atomic({"format": weights.HEAD_FORMAT, "state_dict": {}}, folder / "head-old.pt")   # names no model
    (folder / "garbage.pt").write_bytes(b"not a checkpoint")
    assert weights.remove_model_files(tmp_path, "a/x") == (0, weights.model_dir(tmp_path, "a/x"))   # not its folder
    assert weights.remove_model_files(tmp_path, "a_x")[0] == 1   # its layer; not a/x's files, nor what names no model
    assert sorted(p.name for p in folder.iterdir()) == ["garbage.pt", "head-bbb.pt", "head-old.pt",
                                                        "layer0-FFDense-bbb.pt"]
    assert [weights.file_model(folder / n) for n in ("garbage.pt", "head-old.pt")] == [None, None]
    # alone in the folder: the files that name no model go with it
    for n in ("head-bbb.pt", "layer0-FFDense-bbb.pt"):
        (folder / n).unlink()
    layer("a_x", "layer0-FFDense-aaa.pt")
    assert weights.remove_model_files(tmp_path, "a_x")[0] == 3 and not folder.exists()


def test_a_bad_or_planted_weights_file_is_refused_by_name_never_read_blindly(tmp_path):
    from dff_ros import weights

    good = tmp_path / "good.pt"
    weights.save_layer(good, model="m", index=0, spec_hash="h", state={"layer": {"w": torch.ones(3)}}, provenance={})
    assert weights.read_layer(good, "h")[0]["layer"]["w"].sum() == 3
    data = good.read_bytes()
    cases = {"truncated": lambda p: p.write_bytes(data[: len(data) // 2]), "empty": lambda p: p.write_bytes(b""),
             "garbage": lambda p: p.write_bytes(os.urandom(500)), "a directory": lambda p: p.mkdir(),
             "a link": lambda p: p.symlink_to(good), "a pipe": lambda p: os.mkfifo(p),
             "pickled code": lambda p: p.write_bytes(pickle.dumps(os.system)),
             "NaN weights": lambda p: weights.save_layer(p, model="m", index=0, spec_hash="h", provenance={},
                                                          state={"layer": {"w": torch.tensor([1.0, float("nan")])}})}
    for what, make in cases.items():
        path = tmp_path / f"{what.replace(' ', '_')}.pt"
        make(path)
        with pytest.raises(weights.WeightsError, match=re.escape(str(path))) as e:   # no hang, no other error
            weights.read_layer(path, "h")
        assert "remove it" in str(e.value), (what, e.value)
    with pytest.raises(weights.WeightsError, match="NaN or infinite"):
        weights.save_head(tmp_path / "head.pt", {"w": torch.tensor([float("inf")])}, {}, model="m")
        weights.read_head(tmp_path / "head.pt")
