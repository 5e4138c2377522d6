"""IDX image datasets in torchvision's on-disk layout ``<root>/<NAME>/raw/<file>[.gz]``."""
from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dff_ros.data.idx import ChecksumError, read_idx

ENV_DATA_ROOT = "DFF_DATA_ROOT"


@dataclass(frozen=True)
class IdxFile:
    """One file of an IDX dataset: its name, where to download it and its checksum."""
    name: str   # without .gz, e.g. "train-images-idx3-ubyte"
    md5: str    # md5 of the decompressed content: the same for every mirror's compression


@dataclass(frozen=True)
class IdxDataset:
    """A train/test image classification set stored as four IDX files."""

    name: str
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile
    image_shape: tuple = (28, 28)
    num_classes: int = 10
    mirrors: tuple = ()

    @property
    def input_features(self) -> int:
        return int(np.prod(self.image_shape))

    @property
    def files(self) -> tuple[IdxFile, ...]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)

    def raw_dir(self, root: str | os.PathLike) -> Path:
        return Path(root) / self.name / "raw"


DATASETS: dict[str, IdxDataset] = {
    "MNIST": IdxDataset(
        name="MNIST",
        train_images=IdxFile("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
        train_labels=IdxFile("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
        test_images=IdxFile("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
        test_labels=IdxFile("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    ),
}


class DatasetMissing(FileNotFoundError):
    """The dataset cannot be used here; the message says which files and what to do."""


class DatasetUnreadable(DatasetMissing):
    """A dataset file is there but corrupt, truncated or not the right one."""


def _read(f: IdxFile, path: Path) -> np.ndarray:
    try:
        return read_idx(path, f.md5)
    except ChecksumError as e:
        raise DatasetUnreadable(str(e)) from None
    except (OSError, EOFError, ValueError, zlib.error) as e:   # truncated gzip, bad header, unreadable
        raise DatasetUnreadable(f"{path}: cannot be read ({type(e).__name__}: {e}); the file is corrupt or "
                                f"truncated: delete it and run again to download it, or put a good copy "
                                f"there") from None


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """Explicit root, else $DFF_DATA_ROOT, else ~/.cache/dff_ros/data."""
    if root:
        return Path(root).expanduser()
    if os.environ.get(ENV_DATA_ROOT):
        return Path(os.environ[ENV_DATA_ROOT]).expanduser()
    return Path.home() / ".cache" / "dff_ros" / "data"


def find_file(spec: IdxDataset, f: IdxFile, root: Path) -> Path | None:
    for candidate in (spec.raw_dir(root) / (f.name + ".gz"), spec.raw_dir(root) / f.name):
        if candidate.is_file():
            return candidate
    return None


def download(spec: IdxDataset, root: Path, mirrors: tuple | None = None, timeout: float = 30.0) -> None:
    """Fetch every missing file, verifying the content md5 before it is kept (atomic rename)."""
    mirrors = spec.mirrors if mirrors is None else mirrors
    raw = spec.raw_dir(root)
    errors: list[str] = []
    missing = [f for f in spec.files if find_file(spec, f, root) is None]
    for f in missing:
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + f.name + ".gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    blob = r.read()
                got = hashlib.md5(gzip.decompress(blob)).hexdigest()
                if got != f.md5:
                    raise ChecksumError(f"content md5 {got}, expected {f.md5}")
            except (OSError, urllib.error.URLError, ChecksumError, EOFError, ValueError) as e:
                errors.append(f"{url}: {e}")
                continue
            raw.mkdir(parents=True, exist_ok=True)
            tmp = raw / (f.name + ".gz.part")
            tmp.write_bytes(blob)
            os.replace(tmp, raw / (f.name + ".gz"))
            break
    still = [f.name for f in spec.files if find_file(spec, f, root) is None]
    if still:
        raise DatasetMissing(_missing_message(spec, root, still, errors))


def _missing_message(spec: IdxDataset, root: Path, names: list[str], errors: list[str]) -> str:
    lines = [f"{spec.name} is not available under {root} and could not be downloaded.",
             f"Put these files (gzipped or not) into {spec.raw_dir(root)}:"]
    lines += [f"  {n}.gz" for n in names]
    lines.append(f"or point {ENV_DATA_ROOT} (or the config's dataset.root / --data-root) at a folder "
                 f"that holds {spec.name}/raw/ with them.")
    if errors:
        lines.append("Download attempts:")
        lines += [f"  {e}" for e in errors]
    return "\n".join(lines)


def load_dataset(name: str = "MNIST", root: str | os.PathLike | None = None, *, allow_download: bool = True,
                 mirrors: tuple | None = None) -> dict[str, torch.Tensor]:
    """Verified train/test tensors: images float32 [N, H*W] in [0, 1], labels int64 [N]."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    spec, root = DATASETS[name], resolve_root(root)
    if any(find_file(spec, f, root) is None for f in spec.files):
        if not allow_download:
            missing = [f.name for f in spec.files if find_file(spec, f, root) is None]
            raise DatasetMissing(_missing_message(spec, root, missing, ["download disabled"]))
        download(spec, root, mirrors)
    arrays = {key: _read(f, find_file(spec, f, root)) for key, f in
              zip(("train_images", "train_labels", "test_images", "test_labels"), spec.files)}
    out = {}
    for split in ("train", "test"):
        images = arrays[f"{split}_images"]
        out[f"{split}_images"] = torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / 255.0)
        out[f"{split}_labels"] = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
    return out
