"""Downloads that keep a file only once its md5 is right (written beside it, then renamed)."""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from dff_ros.data.info import ChecksumError, DatasetUnreadable
from dff_ros.weights import write_atomic

ENV_DATA_ROOT = "DFF_DATA_ROOT"


def file_md5(path: str | os.PathLike) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_md5(path: Path, md5: str | None) -> None:
    """DatasetUnreadable unless ``path``'s md5 is ``md5`` (None: not checked)."""
    if md5 is not None and (got := file_md5(path)) != md5:
        raise DatasetUnreadable(f"{path}: md5 is {got}, expected {md5}; the file is corrupt, truncated or not "
                                f"the right one: delete it and run again to download it, or put a good copy there")


def fetch(url: str, dest: Path, check: Callable[[bytes], str], *, timeout: float = 30.0) -> None:
    """Download ``url`` to ``dest``: ``check(blob)`` returns (md5 found, md5 wanted), of the file
    or of its decompressed content; raises ChecksumError, OSError or URLError, keeping nothing."""
    print(f"[data] downloading {url}", file=sys.stderr, flush=True)
    with urllib.request.urlopen(url, timeout=timeout) as r:
        blob = r.read()
    got, want = check(blob)
    if got != want:
        raise ChecksumError(f"md5 {got}, expected {want}")
    write_atomic(dest, lambda f: f.write(blob))


def fetch_first(urls, dest: Path, check, errors: list[str]) -> bool:
    """Try each URL in turn; failures are appended to ``errors``. True once one worked."""
    for url in urls:
        try:
            fetch(url, dest, check)
            return True
        except (OSError, urllib.error.URLError, ChecksumError, EOFError, ValueError) as e:
            errors.append(f"{url}: {e}")
    return False
