"""IDX files (LeCun's format: MNIST, Fashion-MNIST, KMNIST, EMNIST ...), gz or raw, and a dataset of four."""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from dff_ros.data.config import IDX_FILES as ROLES
from dff_ros.data.fetch import ENV_DATA_ROOT, fetch_first
from dff_ros.data.info import ChecksumError, DataInfo, DatasetMissing, DatasetUnreadable, RawSet, digit_classes

# IDX type codes -> big-endian numpy dtypes
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path: str | os.PathLike) -> bytes:
    """File content, decompressed when the name ends in .gz."""
    path = os.fspath(path)
    with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
        return f.read()


def parse_idx(blob: bytes, source: str = "<bytes>") -> np.ndarray:
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0:
        raise ValueError(f"{source}: not an IDX file (bad magic number)")
    code, ndim = blob[2], blob[3]
    if code not in _DTYPES:
        raise ValueError(f"{source}: unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise ValueError(f"{source}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(blob) - header != expected:
        raise ValueError(f"{source}: IDX header declares shape {shape} ({expected} bytes) "
                         f"but the file holds {len(blob) - header} bytes of data")
    return np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike, md5: str | None = None) -> np.ndarray:
    """Read an IDX file; with ``md5`` given, verify the decompressed content first."""
    blob = read_bytes(path)
    if md5 is not None:
        got = hashlib.md5(blob).hexdigest()
        if got != md5:
            raise ChecksumError(f"{os.fspath(path)}: content md5 is {got}, expected {md5}; the file is "
                                f"corrupt or not the right one: delete it and download it again")
    return parse_idx(blob, os.fspath(path))


# ---------------------------------------------------------------- an IDX dataset: four files in a folder

def find(folder: Path, name: str) -> Path | None:
    """``name.gz`` or ``name`` in ``folder``, whichever is there."""
    for candidate in (folder / (name + ".gz"), folder / name):
        if candidate.is_file():
            return candidate
    return None


def _read_checked(path: Path, md5: str | None) -> np.ndarray:
    try:
        return read_idx(path, md5)
    except ChecksumError as e:
        raise DatasetUnreadable(str(e)) from None
    except (OSError, EOFError, ValueError, zlib.error) as e:   # truncated gzip, bad header, unreadable
        raise DatasetUnreadable(f"{path}: cannot be read ({type(e).__name__}: {e}); the file is corrupt or "
                                f"truncated: delete it and run again to download it, or put a good copy "
                                f"there") from None


def _images(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim != 3 or array.dtype != np.uint8:
        raise DatasetUnreadable(f"{path}: holds {array.dtype} {list(array.shape)}; images must be uint8 "
                                f"[N, H, W] (grey, one byte per pixel)")
    return array[:, None]


def missing(cfg, folder: Path) -> list[str]:
    return [cfg.files[role] for role in ROLES if find(folder, cfg.files[role]) is None]


def download(cfg, folder: Path, errors: list[str]) -> None:
    """Fetch the missing files (``<mirror>/<file>.gz``), each checked by its content md5."""
    for name in missing(cfg, folder):
        want = cfg.md5.get(name)
        if want is None:
            errors.append(f"{name}: dataset.md5 has no checksum for it, so it is not downloaded")
            continue
        fetch_first([u.rstrip("/") + "/" + name + ".gz" for u in cfg.urls], folder / (name + ".gz"),
                    lambda blob: (hashlib.md5(gzip.decompress(blob)).hexdigest(), want), errors)


def ensure(cfg, folder: Path, allow_download: bool) -> None:
    """The four files are in ``folder`` (the missing ones downloaded when allowed), or
    DatasetMissing says which to put where."""
    if not missing(cfg, folder):
        return
    errors = ["download disabled"] if not allow_download else []
    if allow_download:
        download(cfg, folder, errors)
    still = missing(cfg, folder)
    if still:
        lines = [f"{cfg.name} is not available in {folder} and could not be downloaded.",
                 f"Put these files (gzipped or not) into {folder}:"] + [f"  {n}.gz" for n in still]
        lines.append(f"or point {ENV_DATA_ROOT} (or the config's dataset.root / --data-root) at a folder that "
                     f"holds {cfg.folder}/ with them.")
        lines += ["Download attempts:"] + [f"  {e}" for e in errors] if errors else []
        raise DatasetMissing("\n".join(lines))


def read_set(cfg, folder: Path, allow_download: bool = True) -> RawSet:
    """The four files as a RawSet (every file checked against its md5 when one is given)."""
    ensure(cfg, folder, allow_download)
    paths = {role: find(folder, cfg.files[role]) for role in ROLES}
    arrays = {role: _read_checked(p, cfg.md5.get(cfg.files[role])) for role, p in paths.items()}
    images = {r: _images(arrays[r], paths[r]) for r in ("train_images", "test_images")}
    labels = {r: arrays[r].astype(np.int64).reshape(-1) for r in ("train_labels", "test_labels")}
    for split in ("train", "test"):
        if len(images[f"{split}_images"]) != len(labels[f"{split}_labels"]):
            raise DatasetUnreadable(f"{paths[split + '_images']} holds {len(images[split + '_images'])} images but "
                                    f"{paths[split + '_labels']} {len(labels[split + '_labels'])} labels")
    return RawSet(images["train_images"], labels["train_labels"], images["test_images"], labels["test_labels"],
                  digit_classes(labels["train_labels"], labels["test_labels"]))


def describe(cfg, folder: Path, allow_download: bool = True) -> DataInfo:
    """DataInfo from the image file's header and the label files (the images are not read)."""
    ensure(cfg, folder, allow_download)
    path = find(folder, cfg.files["train_images"])
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as f:
            head = f.read(16)
    except (OSError, EOFError, zlib.error):
        head = b""
    if len(head) < 16 or head[:4] != bytes([0, 0, 0x08, 3]):
        _images(_read_checked(path, cfg.md5.get(cfg.files["train_images"])), path)   # names the problem
    h, w = (int(d) for d in np.frombuffer(head, dtype=">u4", count=2, offset=8))
    labels = [_read_checked(find(folder, cfg.files[r]), cfg.md5.get(cfg.files[r])) for r in ("train_labels", "test_labels")]
    return DataInfo((1, h, w), digit_classes(*labels))
