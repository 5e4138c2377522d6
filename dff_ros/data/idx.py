"""IDX file reader (LeCun's format: MNIST, Fashion-MNIST, KMNIST, EMNIST ...), gz or raw."""
from __future__ import annotations

import gzip
import hashlib
import os

import numpy as np

# IDX type codes -> big-endian numpy dtypes
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class ChecksumError(ValueError):
    """A data file whose content is not the published file's (corrupt, truncated or another file)."""
    pass


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
