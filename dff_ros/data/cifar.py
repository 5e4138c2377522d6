"""CIFAR-10 in its official formats: the python version (pickled batches in
``cifar-10-batches-py``) and the binary version (``cifar-10-batches-bin``: per image one label
byte, then 1024 red, 1024 green and 1024 blue bytes of a 32x32 image).

The pickles are read by an unpickler that builds nothing but dicts, lists, bytes and numpy
arrays: a batch file cannot run code."""
from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np

from dff_ros.data.fetch import check_md5, fetch_first
from dff_ros.data.info import DataInfo, DatasetMissing, DatasetUnreadable, RawSet

SHAPE = (3, 32, 32)   # the format's: every CIFAR-10 image
PY, BIN = "cifar-10-batches-py", "cifar-10-batches-bin"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]
ARCHIVES = {PY: "cifar-10-python.tar.gz", BIN: "cifar-10-binary.tar.gz"}


class _ArraysOnly(pickle.Unpickler):
    """numpy arrays and plain containers; any other global is refused."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (only numpy arrays are allowed)")
        if module == "_codecs":
            import _codecs
            return _codecs.encode
        import numpy
        return getattr(numpy if name in ("ndarray", "dtype") else numpy._core.multiarray, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            out = _ArraysOnly(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, OSError) as e:
        raise DatasetUnreadable(f"{path}: not a CIFAR python batch ({type(e).__name__}: {e}); the file is corrupt "
                                f"or truncated: delete it and run again, or put a good copy there") from None
    if not isinstance(out, dict):
        raise DatasetUnreadable(f"{path}: not a CIFAR python batch (holds a {type(out).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in out.items()}


def _python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or labels is None or len(labels) != len(data):
        raise DatasetUnreadable(f"{path}: a CIFAR python batch has 'data' uint8 [N, 3072] and N 'labels'")
    return data.reshape(-1, *SHAPE), np.asarray(labels, dtype=np.int64)


def _binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    blob = np.fromfile(path, dtype=np.uint8)
    if len(blob) == 0 or len(blob) % 3073:
        raise DatasetUnreadable(f"{path}: {len(blob)} bytes is not a whole number of 3073-byte CIFAR-10 records; "
                                f"the file is truncated or not a CIFAR-10 binary batch")
    rows = blob.reshape(-1, 3073)
    return rows[:, 1:].reshape(-1, *SHAPE).copy(), rows[:, 0].astype(np.int64)


def _classes(folder: Path, kind: str) -> tuple[str, ...]:
    if kind == PY:
        names = _unpickle(folder / "batches.meta").get("label_names")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in (names or [])]
    else:
        names = [line.strip() for line in (folder / "batches.meta.txt").read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetUnreadable(f"{folder}: its batches.meta names no classes")
    return tuple(names)


def _batches(kind: str) -> list[str]:
    names = TRAIN + TEST
    return names + ["batches.meta"] if kind == PY else [n + ".bin" for n in names] + ["batches.meta.txt"]


def _present(base: Path) -> str | None:
    for kind in (PY, BIN):
        if all((base / kind / n).is_file() for n in _batches(kind)):
            return kind
    return None


def _extract(archive: Path, base: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(base, filter="data")   # no absolute paths, links out or devices
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetUnreadable(f"{archive}: cannot be unpacked ({type(e).__name__}: {e}); delete it and run again, "
                                f"or put a good copy there") from None


def ensure(cfg, base: Path, allow_download: bool) -> str:
    """The batches under ``base`` (unpacking an archive there, or downloading one): which kind."""
    kind = _present(base)
    errors: list[str] = []
    if kind is None:
        for name in ARCHIVES.values():
            if (base / name).is_file():
                check_md5(base / name, cfg.md5.get(name))
                _extract(base / name, base)
                break
        else:
            if allow_download:
                for url in cfg.urls:
                    name = url.rstrip("/").rsplit("/", 1)[-1]
                    if name not in cfg.md5:
                        errors.append(f"{url}: dataset.md5 has no checksum for {name}, so it is not downloaded")
                    elif fetch_first([url], base / name, lambda b, n=name: (hashlib.md5(b).hexdigest(), cfg.md5[n]), errors):
                        _extract(base / name, base)
                        break
            else:
                errors.append("download disabled")
        kind = _present(base)
    if kind is None:
        lines = [f"{cfg.name} (CIFAR-10 format) is not under {base}. Put there either folder {PY}/ or {BIN}/ "
                 f"(the official batches: {', '.join(_batches(PY))} or the .bin ones), or one of the archives "
                 f"{', '.join(ARCHIVES.values())} (https://www.cs.toronto.edu/~kriz/cifar.html); or point dataset.root / "
                 f"$DFF_DATA_ROOT / --data-root at a folder holding {cfg.folder}/."]
        if errors:
            lines += ["Download attempts:"] + [f"  {e}" for e in errors]
        raise DatasetMissing("\n".join(lines))
    for n in _batches(kind):
        check_md5(base / kind / n, cfg.md5.get(n))
    return kind


def read_set(cfg, base: Path, allow_download: bool = True) -> RawSet:
    kind = ensure(cfg, base, allow_download)
    read = _python_batch if kind == PY else _binary_batch
    suffix = "" if kind == PY else ".bin"
    split = {}
    for name, batches in (("train", TRAIN), ("test", TEST)):
        parts = [read(base / kind / (b + suffix)) for b in batches]
        split[name] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    classes = _classes(base / kind, kind)
    for name, (_, labels) in split.items():
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DatasetUnreadable(f"{base / kind}: {name} labels reach {int(labels.max())}, but batches.meta names "
                                    f"{len(classes)} classes")
    return RawSet(*split["train"], *split["test"], classes)


def describe(cfg, base: Path, allow_download: bool = True) -> DataInfo:
    kind = ensure(cfg, base, allow_download)
    return DataInfo(SHAPE, _classes(base / kind, kind))

