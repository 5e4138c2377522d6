"""A dataset from its description (``DatasetConfig``): found, downloaded and checked, read in
its format, and handed over as float tensors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dff_ros.data import cifar, idx, image_folder
from dff_ros.data.config import DatasetConfig, dataset_config
from dff_ros.data.fetch import ENV_DATA_ROOT
from dff_ros.data.info import DataInfo, RawSet


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """Explicit root, else $DFF_DATA_ROOT, else ~/.cache/dff_ros/data."""
    if root:
        return Path(root).expanduser()
    if os.environ.get(ENV_DATA_ROOT):
        return Path(os.environ[ENV_DATA_ROOT]).expanduser()
    return Path.home() / ".cache" / "dff_ros" / "data"


def _folder(cfg: DatasetConfig, root: Path) -> Path:
    folder = Path(cfg.folder).expanduser()
    return folder if folder.is_absolute() else root / folder


FORMATS = {"idx": idx, "cifar10": cifar, "image_folder": image_folder}   # each: read_set, describe


def _located(cfg: DatasetConfig | str | dict, root, allow_download: bool):
    """The config, the folder (or file) its data is at, and its format's module."""
    cfg = dataset_config(cfg) if isinstance(cfg, (str, dict)) else cfg
    return cfg, _folder(cfg, resolve_root(root or cfg.root)), FORMATS[cfg.format]


def read_raw(cfg: DatasetConfig | str, root=None, *, allow_download: bool = True) -> RawSet:
    """The dataset as its files hold it (uint8 images [N, C, H, W])."""
    cfg, folder, fmt = _located(cfg, root, allow_download)
    return fmt.read_set(cfg, folder, allow_download)


def describe(cfg: DatasetConfig | str, root=None, *, allow_download: bool = True) -> DataInfo:
    """Image shape and classes, read from the data (IDX and CIFAR: without reading every image)."""
    cfg, folder, fmt = _located(cfg, root, allow_download)
    return fmt.describe(cfg, folder, allow_download)


def _float_rows(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.float32)).div_(255.0)


def load_dataset(cfg: DatasetConfig | str = "MNIST", root=None, *, allow_download: bool = True) -> dict:
    """Checked train/test tensors: images float32 [N, C*H*W] in [0, 1] (one flat row per image,
    channel-major), labels int64 [N]; ``info`` (DataInfo) says the shape and the classes."""
    raw = read_raw(cfg, root, allow_download=allow_download)
    return {"train_images": _float_rows(raw.train_images), "train_labels": torch.from_numpy(raw.train_labels),
            "test_images": _float_rows(raw.test_images), "test_labels": torch.from_numpy(raw.test_labels),
            "info": raw.info}
