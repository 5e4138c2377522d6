"""The model YAML's ``dataset`` section: what a dataset is, where it lives, how to check it.

A dataset is described, not looked up::

    dataset: {name: MNIST}                                  # a preset: format, files, md5s, mirrors
    dataset: {name: robot_cam, format: image_folder, path: robot_cam.tar.gz}
    dataset: {name: FashionMNIST, format: idx, path: FashionMNIST/raw,
              md5: {train-images-idx3-ubyte: 8d4fb7e6c68d591d4c3dfef9ec88bf0d, ...}}

Image shape, channels and classes always come from the data itself (``describe``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

FORMATS = ("idx", "image_folder", "cifar10")
IDX_FILES = ("train_images", "train_labels", "test_images", "test_labels")
MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


class DatasetConfigError(ValueError):
    """A bad ``dataset`` entry: ``key`` (below ``dataset.``) and the problem."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"dataset.{key}: {problem}")


@dataclass(frozen=True)
class DatasetConfig:
    """Where a dataset is and how to read and check it.

    ``path`` is below ``root`` (or absolute): idx: the folder of the four files; image_folder:
    a folder or ``.tar[.gz]`` holding ``train/<class>/*`` and ``test/<class>/*``; cifar10: a
    folder holding ``cifar-10-batches-py`` or ``cifar-10-batches-bin`` (or their archives).
    ``md5``: file name -> md5 (of an IDX file's decompressed content, else of the file), checked
    whenever that file is read or downloaded. ``urls``: idx: mirrors (base URLs serving
    ``<file>.gz``); otherwise archives to download when the data is missing."""
    name: str = "MNIST"
    format: str = "idx"
    root: str | None = None          # None: $DFF_DATA_ROOT, else ~/.cache/dff_ros/data
    path: str | None = None
    files: Mapping[str, str] = field(default_factory=dict)   # idx only: role -> file name
    md5: Mapping[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        """``path``, or the format's default below the root."""
        if self.path:
            return self.path
        return f"{self.name}/raw" if self.format == "idx" else self.name

    def to_dict(self) -> dict:
        return {"name": self.name, "format": self.format, "root": self.root, "path": self.path,
                "files": dict(self.files), "md5": dict(self.md5), "urls": list(self.urls)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_root(self, root: str | None) -> "DatasetConfig":
        return replace(self, root=root) if root else self


CIFAR10_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

# Named datasets: what a user would otherwise write out (their published checksums and mirrors).
PRESETS: dict[str, dict] = {
    "MNIST": {"format": "idx", "files": MNIST_FILES,
              "md5": {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
                      "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
                      "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
                      "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
              "urls": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]},
    "CIFAR10": {"format": "cifar10", "md5": CIFAR10_MD5,
                "urls": ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]},
}


def dataset_config(raw: Any) -> DatasetConfig:
    """A ``dataset`` mapping (or a preset's name) as a DatasetConfig; DatasetConfigError names
    the key. A preset's entries are defaults: the mapping's own keys replace them."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise DatasetConfigError("", "must be a mapping like {name: MNIST} or {name: cam, format: image_folder, "
                                     "path: cam.tar.gz}")
    known = {f.name for f in fields(DatasetConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DatasetConfigError(unknown[0], f"unknown key (known: {', '.join(sorted(known))})")
    name = raw.get("name", "MNIST")
    if not isinstance(name, str) or not name.strip():
        raise DatasetConfigError("name", f"must be a non-empty string, got {name!r}")
    preset = PRESETS.get(name, {})
    if not preset and "format" not in raw:
        raise DatasetConfigError("format", f"{name!r} is not a preset ({', '.join(PRESETS)}): say its format "
                                           f"({', '.join(FORMATS)}) and path")
    values = {**preset, **{k: v for k, v in raw.items() if v is not None or k in ("root", "path")}}
    fmt = values.get("format")
    if fmt not in FORMATS:
        raise DatasetConfigError("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    for key in ("root", "path"):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise DatasetConfigError(key, f"must be a path string or null, got {values[key]!r}")
    files = values.get("files") or {}
    if not isinstance(files, Mapping) or set(files) - set(IDX_FILES):
        raise DatasetConfigError("files", f"must map some of {', '.join(IDX_FILES)} to file names")
    if fmt == "idx":
        files = {**MNIST_FILES, **files}   # MNIST's names unless told
    elif files:
        raise DatasetConfigError("files", f"only the idx format names its files (this one is {fmt})")
    md5 = values.get("md5") or {}
    if not isinstance(md5, Mapping) or not all(isinstance(k, str) and isinstance(v, str) and len(v) == 32
                                               for k, v in md5.items()):
        raise DatasetConfigError("md5", "must map file names to 32-digit md5 strings")
    urls = values.get("urls") or []
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, (list, tuple)) or not all(isinstance(u, str) for u in urls):
        raise DatasetConfigError("urls", "must be a list of URL strings")
    return DatasetConfig(name=name, format=fmt, root=values.get("root"), path=values.get("path"),
                         files={k: str(v) for k, v in files.items()}, md5={k: v.lower() for k, v in md5.items()},
                         urls=tuple(urls))
