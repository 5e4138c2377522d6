"""Atomic, weights-only persistence of tensors."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def save_atomic(state: dict, path: str | os.PathLike) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over ``path``: a crash
    mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_weights(path: str | os.PathLike) -> dict:
    """Load tensors only: ``weights_only=True`` refuses pickled code."""
    return torch.load(path, map_location="cpu", weights_only=True)
