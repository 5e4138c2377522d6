"""What a dataset holds, as read from its files: images as uint8 and what the model needs to know."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class ChecksumError(ValueError):
    """A data file whose content is not the published file's (corrupt, truncated or another file)."""


class DatasetMissing(FileNotFoundError):
    """The dataset cannot be used here; the message says which files and what to do."""


class DatasetUnreadable(DatasetMissing):
    """A dataset file is there but corrupt, truncated or not the right one."""


@dataclass(frozen=True)
class DataInfo:
    """One image's shape ``(C, H, W)`` and the class names (index = label)."""
    image_shape: tuple[int, int, int]
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def features(self) -> int:
        return math.prod(self.image_shape)

    def to_dict(self) -> dict:
        return {"image_shape": list(self.image_shape), "classes": list(self.classes)}


@dataclass
class RawSet:
    """A dataset as its files hold it: uint8 images [N, C, H, W], int64 labels [N]."""
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]

    @property
    def info(self) -> DataInfo:
        return DataInfo(tuple(int(d) for d in self.train_images.shape[1:]), self.classes)


def digit_classes(*labels: np.ndarray) -> tuple[str, ...]:
    """Class names "0".."K-1" for integer labels whose largest is K-1."""
    top = max((int(l.max()) for l in labels if len(l)), default=0)
    return tuple(str(i) for i in range(top + 1))
