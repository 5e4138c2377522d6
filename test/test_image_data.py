"""Image folders (a folder or a tar) and CIFAR-10's python and binary batches, on small sets the
tests write themselves: shapes, channels and classes come from the files; bad files are named."""
import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dff_ros.data import DatasetMissing, DatasetUnreadable, describe, load_dataset

REPO = Path(__file__).resolve().parents[1]


def write_folder(root: Path, sizes=(6, 5), mode="RGB", classes=("cat", "dog", "owl"), n=(4, 2), fmt="png",
                 seed=0) -> dict:
    """train/<class>/*.png and test/<class>/*.png of random images; the arrays written, as [N, C, H, W]."""
    rng = np.random.default_rng(seed)
    w, h = sizes
    out = {}
    for split, count in zip(("train", "test"), n):
        imgs, labels = [], []
        for label, cls in enumerate(sorted(classes)):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                px = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
                Image.fromarray(px, mode).save(root / split / cls / f"{i:03d}.{fmt}")
                imgs.append(px.transpose(2, 0, 1) if mode == "RGB" else px[None])
                labels.append(label)
        out[split] = (np.stack(imgs), np.array(labels))
    return out


def as_tar(folder: Path, tar_path: Path, top: str = "") -> Path:
    with tarfile.open(tar_path, "w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            tar.add(p, arcname=str(Path(top) / p.relative_to(folder)) if top else str(p.relative_to(folder)),
                    recursive=False)
    return tar_path


@pytest.mark.parametrize("mode, sizes, classes", [("RGB", (6, 5), ("cat", "dog", "owl")),
                                                  ("L", (9, 7), ("a", "b", "c", "d", "e", "f"))])
def test_an_image_folder_reads_shape_channels_and_classes_from_the_files(tmp_path, mode, sizes, classes):
    written = write_folder(tmp_path / "set", sizes, mode, classes)
    cfg = {"name": "set", "format": "image_folder", "path": "set"}
    data = load_dataset(cfg, tmp_path)
    c = 3 if mode == "RGB" else 1
    assert data["info"].image_shape == (c, sizes[1], sizes[0]) and data["info"].classes == tuple(sorted(classes))
    for split in ("train", "test"):   # the rows in one fixed shuffled order, so a subset mixes the classes
        imgs, labels = written[split]
        order = np.random.default_rng(0).permutation(len(labels))
        assert torch.equal(data[f"{split}_labels"], torch.from_numpy(labels[order]))
        assert torch.equal(data[f"{split}_images"],
                           torch.from_numpy(imgs[order].reshape(len(imgs), -1) / 255.0).float())


def test_a_tar_with_a_top_folder_is_the_same_set_and_is_decoded_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFF_CACHE_DIR", str(tmp_path / "cache"))
    write_folder(tmp_path / "set")
    tar = as_tar(tmp_path / "set", tmp_path / "set.tar.gz", top="robot_cam")
    md5 = hashlib.md5(tar.read_bytes()).hexdigest()
    cfg = {"name": "cam", "format": "image_folder", "path": "set.tar.gz", "md5": {"set.tar.gz": md5}}
    first = load_dataset(cfg, tmp_path)
    assert "decoding set.tar.gz" in capsys.readouterr().err   # progress while decoding
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    again = load_dataset(cfg, tmp_path)
    assert "decoding" not in capsys.readouterr().err          # from the cache
    folder = load_dataset({"name": "set", "format": "image_folder", "path": "set"}, tmp_path)
    for k in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(first[k], again[k]) and torch.equal(first[k], folder[k])
    # the md5 is checked: a changed archive is refused, naming it
    with pytest.raises(DatasetUnreadable, match="set.tar.gz: md5"):
        load_dataset({**cfg, "md5": {"set.tar.gz": "0" * 32}}, tmp_path)


def test_grey_images_among_colour_ones_get_three_channels(tmp_path):
    write_folder(tmp_path / "set", classes=("a", "b"))
    Image.fromarray(np.full((5, 6), 200, np.uint8), "L").save(tmp_path / "set" / "train" / "a" / "grey.png")
    data = load_dataset({"name": "set", "format": "image_folder", "path": "set"}, tmp_path)
    assert data["info"].image_shape == (3, 5, 6) and len(data["train_labels"]) == 9


@pytest.mark.parametrize("damage, problem", [
    ("corrupt", "train/cat/001.png is not a readable image"),
    ("size", "train/cat/001.png is 3x3, but"),
    ("test class", "test/ has class folder(s) emu that train/ lacks"),
    ("empty", "no images under train/<class>/"),
])
def test_bad_image_folders_name_the_file_and_the_problem(tmp_path, damage, problem):
    write_folder(tmp_path / "set")
    bad = tmp_path / "set" / "train" / "cat" / "001.png"
    if damage == "corrupt":
        bad.write_bytes(bad.read_bytes()[:40])
    elif damage == "size":
        Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(bad)
    elif damage == "test class":
        (tmp_path / "set" / "test" / "emu").mkdir()
        Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "set" / "test" / "emu" / "0.png")
    else:
        for p in (tmp_path / "set" / "train").rglob("*.png"):
            p.unlink()
    with pytest.raises(DatasetUnreadable) as e:
        load_dataset({"name": "set", "format": "image_folder", "path": "set"}, tmp_path)
    assert problem in str(e.value), str(e.value)


def test_a_truncated_tar_is_named(tmp_path):
    write_folder(tmp_path / "set")
    tar = as_tar(tmp_path / "set", tmp_path / "set.tar.gz")
    tar.write_bytes(tar.read_bytes()[:300])
    with pytest.raises(DatasetUnreadable, match="set.tar.gz"):
        load_dataset({"name": "cam", "format": "image_folder", "path": "set.tar.gz"}, tmp_path)


def test_a_missing_image_folder_says_what_to_put_where(tmp_path):
    with pytest.raises(DatasetMissing) as e:
        load_dataset({"name": "cam", "format": "image_folder", "path": "cam.tar.gz"}, tmp_path)
    assert str(tmp_path / "cam.tar.gz") in str(e.value) and "train/<class>/<image>" in str(e.value)


# ---------------------------------------------------------------- CIFAR-10 batches

def cifar_batches(rng, n_train=(4, 3, 3, 2, 2), n_test=5, classes=10):
    out = {f"data_batch_{i + 1}": (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, classes, n))
           for i, n in enumerate(n_train)}
    out["test_batch"] = (rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), rng.integers(0, classes, n_test))
    return out


def write_python(base: Path, batches, names) -> Path:
    folder = base / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": [int(x) for x in labels], b"data": data,
                         b"filenames": [b"x.png"] * len(labels)}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names], b"num_vis": 3072}, f, protocol=2)
    return folder


def write_binary(base: Path, batches, names) -> Path:
    folder = base / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        rows = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(rows.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    return folder


NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.parametrize("kind", ["python", "binary"])
def test_cifar10_batches_in_both_official_formats(tmp_path, kind):
    batches = cifar_batches(np.random.default_rng(1))
    folder = (write_python if kind == "python" else write_binary)(tmp_path / "tiny", batches, NAMES)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    cfg = {"name": "tiny", "format": "cifar10", "md5": md5}
    data = load_dataset(cfg, tmp_path)
    assert data["info"].image_shape == (3, 32, 32) and data["info"].classes == tuple(NAMES)
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(data["train_images"], torch.from_numpy(train / 255.0).float())
    assert torch.equal(data["test_labels"], torch.from_numpy(batches["test_batch"][1]))
    assert describe(cfg, tmp_path) == data["info"]
    # a batch whose md5 differs is refused by name
    name = "data_batch_3" if kind == "python" else "data_batch_3.bin"
    with pytest.raises(DatasetUnreadable, match=f"{name}: md5"):
        load_dataset({**cfg, "md5": {**md5, name: "f" * 32}}, tmp_path)


def test_cifar10_from_its_archive_and_a_truncated_binary_batch(tmp_path):
    write_python(tmp_path / "src", cifar_batches(np.random.default_rng(2)), NAMES)
    (tmp_path / "tiny").mkdir()
    as_tar(tmp_path / "src", tmp_path / "tiny" / "cifar-10-python.tar.gz")
    data = load_dataset({"name": "tiny", "format": "cifar10"}, tmp_path)
    assert (tmp_path / "tiny" / "cifar-10-batches-py" / "test_batch").is_file() and len(data["test_labels"]) == 5

    folder = write_binary(tmp_path / "bin", cifar_batches(np.random.default_rng(3)), NAMES)
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes()[:-7])
    with pytest.raises(DatasetUnreadable, match="test_batch.bin: .* not a whole number of 3073-byte"):
        load_dataset({"name": "bin", "format": "cifar10"}, tmp_path)


def test_a_cifar_pickle_cannot_run_code(tmp_path):
    folder = write_python(tmp_path / "tiny", cifar_batches(np.random.default_rng(4)), NAMES)

    class Evil:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(tmp_path / "pwned")],))

    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DatasetUnreadable, match="data_batch_2: not a CIFAR python batch .*refused"):
        load_dataset({"name": "tiny", "format": "cifar10"}, tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_missing_cifar_says_what_to_put_where_and_the_cli_exits_3(tmp_path):
    with pytest.raises(DatasetMissing) as e:
        load_dataset({"name": "CIFAR10"}, tmp_path, allow_download=False)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "cifar-10-python.tar.gz" in msg and "download disabled" in msg
    cfg = tmp_path / "m.yaml"
    cfg.write_text("name: c\ndataset: {name: CIFAR10}\nmodel:\n  - [-1, FFDense, [20]]\n  - [-1, FFDense, [20]]\n")
    out = subprocess.run([sys.executable, "-m", "dff_ros.cli", "train", str(cfg), "--data-root", str(tmp_path),
                          "--no-download"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3 and "cifar-10-batches-py" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_cifar10_downloads_its_archive_checked_by_md5(tmp_path):
    import functools
    import http.server
    import threading

    write_python(tmp_path / "src", cifar_batches(np.random.default_rng(5)), NAMES)
    served = tmp_path / "served"
    served.mkdir()
    archive = as_tar(tmp_path / "src", served / "cifar-10-python.tar.gz")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/cifar-10-python.tar.gz"
    try:
        bad = {"name": "dl", "format": "cifar10", "urls": [url], "md5": {"cifar-10-python.tar.gz": "0" * 32}}
        with pytest.raises(DatasetMissing, match="md5 .*expected 0000"):
            load_dataset(bad, tmp_path / "a")
        assert not list((tmp_path / "a").rglob("*.tar.gz"))   # nothing kept of a bad download
        good = {**bad, "md5": {"cifar-10-python.tar.gz": hashlib.md5(archive.read_bytes()).hexdigest()}}
        data = load_dataset(good, tmp_path / "b")
        assert len(data["train_labels"]) == 14 and data["info"].classes == tuple(NAMES)
    finally:
        srv.shutdown()
