"""Labelled images in torchvision's ``ImageFolder`` layout: ``train/<class>/*.png|jpg`` and
``test/<class>/*``, as a folder or a ``.tar[.gz]`` (one top folder above train/ and test/ is
fine). Classes are the train folder's sub-folder names, sorted; every image has one size, and
grey images stay one channel unless the set also holds colour ones. The rows come in one fixed
shuffled order (sorted, then permuted with seed 0), so the first N rows mix the classes.

Decoding is slow (CIFAR-10's 60,000 JPEGs: ~30 s a core), so it happens once: the uint8 result
is cached under ``$DFF_CACHE_DIR`` (else ``~/.cache/dff_ros/cache``), keyed by a hash of the
images' bytes, and read back weights-only."""
from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np

from dff_ros.data.fetch import check_md5, fetch_first
from dff_ros.data.info import DataInfo, DatasetMissing, DatasetUnreadable, RawSet

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp", ".gif", ".tif", ".tiff")
CACHE_FORMAT = "dff_ros.image_cache/2"
ORDER_SEED = 0   # rows come in one fixed shuffled order: `train_subset: N` then takes a mix of classes
ENV_CACHE_DIR = "DFF_CACHE_DIR"


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "dff_ros" / "cache").expanduser()


def _is_tar(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(s) for s in (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2"))


def _entries(names: list[str]) -> list[tuple[str, str, str]]:
    """(split, class, name) for each image name below train/ or test/ (at the top or one folder
    down), sorted."""
    parts = [PurePosixPath(n).parts for n in names]
    for prefix_len in (0, 1):
        found = [(p[prefix_len], p[prefix_len + 1], n) for p, n in zip(parts, names)
                 if len(p) == prefix_len + 3 and p[prefix_len] in ("train", "test")
                 and PurePosixPath(n).suffix.lower() in SUFFIXES]
        if found:
            return sorted(found)
    return []


def _reader(source: Path):
    """(names, open(name) -> bytes, what to hash): a folder's or a tar's images."""
    if _is_tar(source):
        try:
            tar = tarfile.open(source)
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetUnreadable(f"{source}: cannot be read as a tar ({type(e).__name__}: {e}); the file is "
                                    f"corrupt or truncated") from None

        def read(name):
            try:
                return tar.extractfile(members[name]).read()
            except (tarfile.TarError, OSError, EOFError) as e:
                raise DatasetUnreadable(f"{source}: {name} cannot be read ({type(e).__name__}: {e}); the archive "
                                        f"is corrupt or truncated") from None
        return list(members), read, tar
    names = [p.relative_to(source).as_posix() for p in sorted(source.rglob("*")) if p.is_file()]
    return names, lambda name: (source / name).read_bytes(), None


def _fingerprint(source: Path, entries=None, read=None) -> str:
    """Hash of the images' names and bytes (of a tar: the file's), plus how they are decoded."""
    h = hashlib.sha256(CACHE_FORMAT.encode())
    if _is_tar(source):
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        for split, cls, name in entries:
            blob = read(name)
            h.update(f"{name}\0{len(blob)}\0".encode())
            h.update(blob)
    return h.hexdigest()[:24]


GREY = ("1", "L", "I", "I;16", "F")


def _decode(entries, read, source: Path, show_progress: bool) -> RawSet:
    from PIL import Image, UnidentifiedImageError

    from dff_ros.progress import Progress

    classes = sorted({cls for split, cls, _ in entries if split == "train"})
    extra = sorted({cls for split, cls, _ in entries if split == "test"} - set(classes))
    if extra:
        raise DatasetUnreadable(f"{source}: test/ has class folder(s) {', '.join(extra)} that train/ lacks")
    decoded: list[np.ndarray] = []
    size = first = None
    progress = Progress(len(entries), f"decoding {source.name}", enabled=show_progress)
    for split, cls, name in entries:
        try:
            with Image.open(io.BytesIO(read(name))) as im:
                im.load()
                if size is None:
                    size, first = im.size, name
                elif im.size != size:
                    raise DatasetUnreadable(f"{source}: {name} is {im.size[0]}x{im.size[1]}, but {first} is "
                                            f"{size[0]}x{size[1]}: every image of a set needs one size (resize them)")
                decoded.append(np.asarray(im.convert("L" if im.mode in GREY else "RGB"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DatasetUnreadable(f"{source}: {name} is not a readable image ({type(e).__name__}: {e}); delete "
                                    f"or replace it") from None
        progress.update(1)
    if any(d.ndim == 3 for d in decoded):   # colour among grey: grey ones get three equal channels
        decoded = [np.repeat(d[..., None], 3, axis=2) if d.ndim == 2 else d for d in decoded]
    return _stack(entries, decoded, classes, {c: i for i, c in enumerate(classes)})


def _stack(entries, decoded, classes, index) -> RawSet:
    out = {}
    for split in ("train", "test"):
        rows = [i for i, e in enumerate(entries) if e[0] == split]   # sorted by class and name, then shuffled
        rows = [rows[j] for j in np.random.default_rng(ORDER_SEED).permutation(len(rows))]
        imgs = np.stack([decoded[i] for i in rows]) if rows else np.zeros((0, 1, 1), np.uint8)
        imgs = imgs[:, None] if imgs.ndim == 3 else imgs.transpose(0, 3, 1, 2)   # [N, C, H, W]
        out[split] = (np.ascontiguousarray(imgs), np.array([index[entries[i][1]] for i in rows], dtype=np.int64))
    return RawSet(*out["train"], *out["test"], tuple(classes))


def _load_cache(path: Path) -> RawSet | None:
    from dff_ros.weights import load_weights

    try:
        blob = load_weights(path)
        if blob.get("format") != CACHE_FORMAT:
            return None
        t = {k: blob[k].numpy() for k in ("train_images", "train_labels", "test_images", "test_labels")}
        return RawSet(**t, classes=tuple(blob["classes"]))
    except Exception as e:   # a bad cache is only slower: decoded again and rewritten
        print(f"[data] ignoring unreadable cache {path} ({type(e).__name__}: {e}); decoding again",
              file=sys.stderr, flush=True)
        return None


def _save_cache(path: Path, raw: RawSet) -> None:
    import torch

    from dff_ros.weights import save_atomic

    blob = {"format": CACHE_FORMAT, "classes": list(raw.classes),
            **{k: torch.from_numpy(getattr(raw, k)) for k in ("train_images", "train_labels", "test_images",
                                                               "test_labels")}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(blob, path)
    except OSError as e:
        print(f"[data] cannot write the decoded images to {path} ({e}): they are decoded again next time; set "
              f"{ENV_CACHE_DIR} to a writable folder", file=sys.stderr, flush=True)


def ensure(cfg, source: Path, allow_download: bool) -> None:
    """``source`` is there (downloading the archive when ``dataset.urls`` says where), its md5
    checked when ``dataset.md5`` has one for it."""
    errors: list[str] = []
    if not source.exists():
        if allow_download and cfg.urls:
            if source.name not in cfg.md5:
                errors.append(f"dataset.md5 has no checksum for {source.name}, so it is not downloaded")
            else:
                fetch_first(cfg.urls, source, lambda b: (hashlib.md5(b).hexdigest(), cfg.md5[source.name]), errors)
        elif not allow_download:
            errors.append("download disabled")
    if not source.exists():
        lines = [f"{cfg.name}: {source} is not there. Put the images there as a folder or a .tar[.gz] holding "
                 f"train/<class>/<image> and test/<class>/<image>, or point dataset.path (and dataset.root / "
                 f"$DFF_DATA_ROOT / --data-root) at them."]
        if errors:
            lines += ["Download attempts:"] + [f"  {e}" for e in errors]
        raise DatasetMissing("\n".join(lines))
    if source.is_file():
        check_md5(source, cfg.md5.get(source.name))


def read_set(cfg, source: Path, allow_download: bool = True, show_progress: bool = True) -> RawSet:
    """The images at ``source`` (a folder or a tar), decoded or from the cache."""
    ensure(cfg, source, allow_download)
    if _is_tar(source):   # keyed by the file: a cached tar is not opened at all
        cached = cache_dir() / f"{_fingerprint(source)}.pt"
        if cached.is_file() and (raw := _load_cache(cached)) is not None:
            return raw
    names, read, tar = _reader(source)
    try:
        entries = _entries(names)
        if not any(e[0] == "train" for e in entries):
            raise DatasetUnreadable(f"{source}: no images under train/<class>/ (nor one folder down); an image "
                                    f"folder holds train/<class>/<image> and test/<class>/<image>")
        if tar is None:
            cached = cache_dir() / f"{_fingerprint(source, entries, read)}.pt"
            if cached.is_file() and (raw := _load_cache(cached)) is not None:
                return raw
        raw = _decode(entries, read, source, show_progress)
        _save_cache(cached, raw)
        return raw
    finally:
        if tar is not None:
            tar.close()


def describe(cfg, source: Path, allow_download: bool = True) -> DataInfo:
    return read_set(cfg, source, allow_download).info

