"""Datasets described in the model YAML (IDX, image folders, CIFAR-10): read, verify, download."""
from dff_ros.data.config import PRESETS, DatasetConfig, DatasetConfigError, dataset_config  # noqa: F401
from dff_ros.data.datasets import describe, load_dataset, resolve_root  # noqa: F401
from dff_ros.data.idx import read_idx  # noqa: F401
from dff_ros.data.info import ChecksumError, DataInfo, DatasetMissing, DatasetUnreadable  # noqa: F401
