"""Datasets in IDX format (MNIST and its look-alikes): read, verify, download."""
from dff_ros.data.datasets import DATASETS, DatasetMissing, IdxDataset, IdxFile, load_dataset  # noqa: F401
from dff_ros.data.idx import ChecksumError, read_idx  # noqa: F401
