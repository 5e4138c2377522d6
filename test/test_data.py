import functools
import gzip
import hashlib
import http.server
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dff_ros.data import DatasetMissing, DatasetUnreadable, dataset_config, describe, load_dataset, read_idx
from dff_ros.data.idx import parse_idx

REPO = Path(__file__).resolve().parents[1]


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08}[array.dtype.type]
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture
def tiny_set(tmp_path):
    """A 4-file IDX dataset in MNIST's format but another name and size: 5 images of 3x4."""
    rng = np.random.default_rng(0)
    arrays = {"tr-img": rng.integers(0, 256, (5, 3, 4), dtype=np.uint8),
              "tr-lab": rng.integers(0, 3, (5,), dtype=np.uint8),
              "te-img": rng.integers(0, 256, (2, 3, 4), dtype=np.uint8),
              "te-lab": rng.integers(0, 3, (2,), dtype=np.uint8)}
    blobs = {k: idx_bytes(v) for k, v in arrays.items()}
    spec = {"name": "Tiny", "format": "idx", "files": dict(zip(("train_images", "train_labels", "test_images",
                                                                 "test_labels"), blobs)),
            "md5": {k: hashlib.md5(b).hexdigest() for k, b in blobs.items()}}
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for k, b in blobs.items():
        (mirror / f"{k}.gz").write_bytes(gzip.compress(b))
    return spec, arrays, mirror


@pytest.fixture
def http_mirror():
    """Serve folders over real HTTP on loopback; yields a function folder -> base URL."""
    servers = []

    def serve(folder):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a: None
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield serve
    for s in servers:
        s.shutdown()


def test_parse_rejects_bad_magic_and_wrong_length():
    good = idx_bytes(np.zeros((2, 2), dtype=np.uint8))
    assert parse_idx(good).shape == (2, 2)
    with pytest.raises(ValueError, match="magic"):
        parse_idx(b"\x01" + good[1:])
    with pytest.raises(ValueError, match="declares shape"):
        parse_idx(good + b"\x00")


def test_checksum_mismatch_is_detected(tmp_path, data_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for p in (data_root / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(p, raw / p.name)
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(gzip.decompress(labels.read_bytes()))
    blob[-1] = (blob[-1] + 1) % 10  # one label changed
    labels.write_bytes(gzip.compress(bytes(blob)))
    with pytest.raises(DatasetUnreadable, match="t10k-labels-idx1-ubyte.gz: content md5"):
        load_dataset("MNIST", tmp_path, allow_download=False)
    # a truncated download: the file and what to do, no EOFError from deep inside gzip
    labels.write_bytes(gzip.compress(bytes(blob))[:100])
    with pytest.raises(DatasetUnreadable, match=r"t10k-labels-idx1-ubyte.gz: cannot be read .*delete it"):
        load_dataset("MNIST", tmp_path, allow_download=False)
    out = subprocess.run([sys.executable, "-m", "dff_ros.cli", "train", str(REPO / "config/models/mnist_default.yaml"),
                          "--data-root", str(tmp_path), "--no-download"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3 and "t10k-labels-idx1-ubyte.gz: cannot be read" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_real_mnist_loads_verified(mnist):
    assert mnist["train_images"].shape == (60000, 784) and mnist["test_images"].shape == (10000, 784)
    assert float(mnist["train_images"].max()) == 1.0 and float(mnist["train_images"].min()) == 0.0
    assert sorted(mnist["test_labels"].unique().tolist()) == list(range(10))


def test_download_verifies_and_falls_back_to_next_mirror(tmp_path, tiny_set, http_mirror):
    spec, arrays, good_dir = tiny_set
    bad_dir = tmp_path / "bad"
    shutil.copytree(good_dir, bad_dir)
    (bad_dir / "tr-lab.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05" + bytes(5)))
    root = tmp_path / "root"
    data = load_dataset({**spec, "urls": [http_mirror(bad_dir), http_mirror(good_dir)]}, root)
    for name in arrays:
        assert np.array_equal(read_idx(root / "Tiny" / "raw" / f"{name}.gz", spec["md5"][name]), arrays[name])
    assert not list((root / "Tiny" / "raw").glob("*.part"))
    # shape and classes come from the files: 3x4 grey images, labels 0..2
    assert data["info"].image_shape == (1, 3, 4) and data["info"].num_classes == 3
    assert torch.equal(data["train_images"], torch.from_numpy(arrays["tr-img"].reshape(5, 12) / 255.0).float())
    assert describe(spec, root) == data["info"]


def test_offline_and_missing_says_where_to_put_which_files(tmp_path, tiny_set, http_mirror):
    spec, _, good_dir = tiny_set
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetMissing) as e:
        load_dataset({**spec, "urls": [http_mirror(empty), "http://127.0.0.1:9/"]}, tmp_path / "root")
    msg = str(e.value)
    assert str(tmp_path / "root" / "Tiny" / "raw") in msg
    for name in spec["files"].values():
        assert f"{name}.gz" in msg
    assert "DFF_DATA_ROOT" in msg and "127.0.0.1:9" in msg


def test_a_download_without_a_checksum_is_refused(tmp_path, tiny_set, http_mirror):
    spec, _, good_dir = tiny_set
    with pytest.raises(DatasetMissing, match="tr-img: dataset.md5 has no checksum"):
        load_dataset({**spec, "md5": {}, "urls": [http_mirror(good_dir)]}, tmp_path / "root")


def test_missing_mnist_without_download_names_files(tmp_path):
    with pytest.raises(DatasetMissing, match="train-images-idx3-ubyte.gz"):
        load_dataset("MNIST", tmp_path, allow_download=False)


@pytest.mark.parametrize("raw, key, problem", [
    ({"name": "cam"}, "dataset.format", "not a preset"),
    ({"name": "cam", "format": "jpeg"}, "dataset.format", "must be one of"),
    ({"name": "MNIST", "colour": True}, "dataset.colour", "unknown key"),
    ({"name": "MNIST", "md5": {"x": "123"}}, "dataset.md5", "32-digit"),
    ({"name": "cam", "format": "image_folder", "files": {"train_images": "a"}}, "dataset.files", "only the idx"),
    ({"name": "MNIST", "root": 3}, "dataset.root", "path string"),
])
def test_dataset_section_errors_name_the_key(raw, key, problem):
    from dff_ros.config.schema import ConfigError, parse_model_config

    with pytest.raises(ConfigError) as e:
        parse_model_config({"name": "m", "dataset": raw, "model": [[-1, "FFDense", [10]], [-1, "FFDense", [10]]]},
                           "m.yaml")
    assert e.value.key == key and problem in e.value.problem, str(e.value)


def test_presets_are_defaults_a_mapping_overrides():
    cfg = dataset_config({"name": "MNIST", "path": "elsewhere/raw"})
    assert cfg.format == "idx" and cfg.folder == "elsewhere/raw" and cfg.md5 and cfg.urls
    assert dataset_config("CIFAR10").format == "cifar10" and dataset_config("CIFAR10").folder == "CIFAR10"
    assert dataset_config(cfg.to_dict()) == cfg
