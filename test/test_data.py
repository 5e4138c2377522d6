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

from dff_ros.data import DatasetMissing, IdxDataset, IdxFile, load_dataset, read_idx
from dff_ros.data.datasets import DatasetUnreadable, download
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
    files = [IdxFile(k, hashlib.md5(b).hexdigest()) for k, b in blobs.items()]
    spec = IdxDataset("Tiny", *files, image_shape=(3, 4), num_classes=3)
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
    download(spec, root, mirrors=(http_mirror(bad_dir), http_mirror(good_dir)))
    for f, key in zip(spec.files, arrays):
        assert np.array_equal(read_idx(root / "Tiny" / "raw" / f"{f.name}.gz", f.md5), arrays[key])
    assert not list((root / "Tiny" / "raw").glob("*.part"))


def test_offline_and_missing_says_where_to_put_which_files(tmp_path, tiny_set, http_mirror):
    spec, _, good_dir = tiny_set
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetMissing) as e:
        download(spec, tmp_path / "root", mirrors=(http_mirror(empty), "http://127.0.0.1:9/"))
    msg = str(e.value)
    assert str(tmp_path / "root" / "Tiny" / "raw") in msg
    for f in spec.files:
        assert f"{f.name}.gz" in msg
    assert "DFF_DATA_ROOT" in msg and "127.0.0.1:9" in msg


def test_missing_mnist_without_download_names_files(tmp_path):
    with pytest.raises(DatasetMissing, match="train-images-idx3-ubyte.gz"):
        load_dataset("MNIST", tmp_path, allow_download=False)
