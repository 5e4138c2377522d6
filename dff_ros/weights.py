"""The weights files, in one place: their names, their formats, what they record and how they
are read back. Every writer and reader of them (a server's hosted layers, a PFF node's parts,
the master's softmax head and run state, ``dff-ros export``, the trainer's network file) goes
through here.

    <weights dir>/<model>/layer<i>-<module>-<spec hash>.pt   one layer   (LAYER_FORMAT)
    <weights dir>/<model>/head-<hash>.pt                     softmax head (HEAD_FORMAT)
    <summary dir>/<model>.run-state.pt                       a run in progress (RUN_STATE_FORMAT)
    any path                                                 a whole network (NETWORK_FORMAT)

Writes are atomic; reads are weights-only (``torch.load(weights_only=True)`` refuses pickled
code). A layer or head file records the run that wrote it, how many of its chapters that run had
trained and when, so nothing is restored without saying from where, and an interrupted run's
layer is never taken for a trained one.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

import torch

LAYER_FORMAT = "dff_ros.layer/1"       # one layer, saved by the server hosting or training it
HEAD_FORMAT = "dff_ros.head/1"         # a softmax head
RUN_STATE_FORMAT = "dff_ros.run/1"     # a run in progress, saved by the master as it goes
NETWORK_FORMAT = "dff_ros.ffnetwork/1"   # a whole network with its model config (trainer, export)
SAVED_FILE = re.compile(r"(layer\d+-[A-Za-z0-9_.-]+-[0-9a-f]{12}|head-[0-9a-f]{12})\.pt")   # fullmatch
PROVENANCE = ("run_id", "chapters_done", "chapters", "saved_at")


class WeightsError(ValueError):
    """A weights file that is not what it should be; the message names the file."""


# ---------------------------------------------------------------- files

def write_atomic(path: str | os.PathLike, write) -> Path:
    """``write(f)`` into a temp file in the same folder, fsync, then rename over ``path``: a
    crash or a full disk mid-write leaves the previous file intact and no partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_atomic(state: dict, path: str | os.PathLike) -> Path:
    """torch.save ``state`` to ``path`` atomically (``write_atomic``)."""
    return write_atomic(path, lambda f: torch.save(state, f))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode()))


def load_weights(path: str | os.PathLike) -> dict:
    """Load tensors only: ``weights_only=True`` refuses pickled code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def path_token(name: str) -> str:
    """A name as one path component (no separators, no leading dot, bounded length), different
    for different names: a name of safe characters (``mnist_default``) is kept as it is; any other
    is made safe and gets ``+`` and 16 hex digits of its SHA-256 (``pipe test`` ->
    ``pipe_test+<hash>``). ``+`` is not a safe character, so no kept name is ever such a token,
    and ``a/x`` and ``a_x`` never share a folder."""
    if SAFE_NAME.fullmatch(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return (re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:80] or "_") + "+" + digest


SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")   # kept as they are by path_token


def default_weights_dir() -> Path:
    base = os.environ.get("DFF_WEIGHTS_DIR")
    if base:
        return Path(base)
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "dff_ros" / "weights"


def model_dir(root: str | os.PathLike | None, model: str) -> Path:
    """Where a model's layer and head files live under the weights dir ``root`` (None: the default)."""
    return (Path(root).expanduser() if root else default_weights_dir()) / path_token(model)


# ---------------------------------------------------------------- names

def spec_hash(model: str, spec, train: dict) -> str:
    """A layer file's key: the layer's shape-defining spec plus what changes what it learns."""
    keyed = {"model": model, "index": spec.index, "source": spec.source, "module": spec.module,
             "args": list(spec.args), "kwargs": dict(spec.kwargs), "in": spec.in_features,
             "out": spec.out_features, "goodness": train.get("goodness"), "algorithm": train.get("algorithm")}
    if len(spec.in_shape) != 1 or len(spec.out_shape) != 1:   # (flat layers keep the keys they had)
        keyed.update(in_shape=list(spec.in_shape), out_shape=list(spec.out_shape))
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:12]


def layer_key(config, spec) -> str:
    """``spec_hash`` of a layer of ``config`` (a ModelConfig)."""
    return spec_hash(config.name, spec, {"goodness": config.train.goodness, "algorithm": config.train.algorithm})


def layer_file(spec, hash_: str) -> str:
    return f"layer{spec.index}-{path_token(spec.module)}-{hash_}.pt"


def head_file(model: str, widths, num_classes: int) -> str:
    """A softmax head's file name (keyed by what shapes the head)."""
    h = hashlib.sha256(json.dumps([model, list(widths), num_classes]).encode()).hexdigest()[:12]
    return f"head-{h}.pt"


def model_head_file(config) -> str:
    return head_file(config.name, [s.out_features for s in config.layers], config.num_classes)


def part_files(config) -> dict[int, str]:
    """The file each part of ``config`` is saved in (layers 0..L-1, the head L if it has one)."""
    t = config.train
    out = {s.index: layer_file(s, layer_key(config, s)) for s in config.layers}
    if t.algorithm == "ff" and "softmax" in t.classifiers:
        out[len(config.layers)] = model_head_file(config)
    return out


# ---------------------------------------------------------------- layers and heads

def describe(path, provenance: dict) -> str:
    """``path (run <id>, <done>/<chapters> chapters, saved <when>)``: what a restore says."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(provenance.get("saved_at") or 0))
    done, total = provenance.get("chapters_done"), provenance.get("chapters")
    return (f"{path} (run {provenance.get('run_id', 'unknown')}, "
            + (f"{done}/{total} chapters, " if done is not None else "") + f"saved {when})")


def made_by(run_id: str, chapters_done: int | None = None, chapters: int | None = None) -> dict:
    """A file's provenance: which run wrote it, how far it had trained, when."""
    out = {"run_id": run_id, "saved_at": time.time()}
    if chapters_done is not None:
        out.update(chapters_done=chapters_done, chapters=chapters)
    return out


def save_layer(path, *, model: str, index: int, spec_hash: str, state: dict, provenance: dict) -> Path:
    """One layer's weights (``state``: ``layer_state``'s dict) with where they came from."""
    return save_atomic({"format": LAYER_FORMAT, "model": model, "index": index, "spec_hash": spec_hash,
                        **provenance, "state": state}, path)


def save_head(path, state_dict: dict, provenance: dict, *, model: str) -> Path:
    return save_atomic({"format": HEAD_FORMAT, "model": model, "state_dict": state_dict, **provenance}, path)


def _provenance(blob: dict, path: Path) -> dict:
    out = {k: blob[k] for k in PROVENANCE if k in blob}
    out.setdefault("saved_at", path.stat().st_mtime)
    return out


def read_file(path: Path) -> object:
    """A saved file's contents for restoring; WeightsError naming the file and what to do when it
    is not a regular file (a directory, a link, a pipe would block) or cannot be read."""
    if path.is_symlink() or not path.is_file():
        raise WeightsError(f"{path}: not a regular file (a link, directory, pipe or device is never restored); "
                           "remove it")
    try:
        return load_weights(path)
    except Exception as e:   # truncated, empty, not torch's format, pickled code
        raise WeightsError(f"{path}: cannot be read ({type(e).__name__}: {str(e)[:200]}); remove it, or save "
                           "the weights again") from None


def _check_finite(path: Path, state) -> None:
    """NaN or infinite weights would be restored as a trained layer that classifies nothing."""
    if isinstance(state, dict):
        for value in state.values():
            _check_finite(path, value)
    elif isinstance(state, torch.Tensor) and state.is_floating_point() and not bool(torch.isfinite(state).all()):
        raise WeightsError(f"{path}: holds NaN or infinite weights; remove it, or train again")


def read_layer(path, spec_hash: str) -> tuple[dict, dict]:
    """A layer file's ``(state, provenance)``; WeightsError if it is not this spec's layer."""
    path = Path(path)
    blob = read_file(path)
    if not isinstance(blob, dict) or blob.get("format") != LAYER_FORMAT or blob.get("spec_hash") != spec_hash:
        raise WeightsError(f"{path}: not weights of this layer spec")
    if not isinstance(blob.get("state"), dict) or not isinstance(blob["state"].get("layer"), dict):
        raise WeightsError(f"{path}: a layer file without a layer state")
    _check_finite(path, blob["state"])
    return blob["state"], _provenance(blob, path)


def read_head(path) -> tuple[dict, dict]:
    """A head file's ``(state_dict, provenance)``; WeightsError if it is not a head."""
    path = Path(path)
    blob = read_file(path)
    if not isinstance(blob, dict) or blob.get("format") != HEAD_FORMAT or not isinstance(blob.get("state_dict"), dict):
        raise WeightsError(f"{path}: not a softmax head's weights")
    _check_finite(path, blob["state_dict"])
    return blob["state_dict"], _provenance(blob, path)


def unfinished(provenance: dict) -> str | None:
    """Why a file must not be restored (its run stopped before its last chapter), or None."""
    done, total = provenance.get("chapters_done"), provenance.get("chapters")
    if done is not None and total is not None and done < total:
        return f"run {provenance.get('run_id')} stopped after {done} of {total} chapters"
    return None


def layer_state(learner, samples: int) -> dict:
    """What a layer file holds of a learner: the layer, peer-normalisation statistics, a PON
    layer's own head, and how many samples it has seen."""
    state = {"layer": learner.layer.state_dict(), "samples": samples}
    if getattr(learner, "running_mean", None) is not None:
        state["running_mean"] = learner.running_mean
    if isinstance(getattr(learner, "head", None), torch.nn.Module):
        state["head"] = learner.head.state_dict()
    return state


def load_layer_state(learner, state: dict) -> int:
    """Load ``layer_state``'s dict into ``learner``; returns the samples it had seen."""
    try:
        learner.layer.load_state_dict(state["layer"])
        if "running_mean" in state:
            learner.running_mean = state["running_mean"]
        if "head" in state:
            learner.head.load_state_dict(state["head"])
    except (KeyError, RuntimeError) as e:
        raise WeightsError(f"{type(e).__name__}: {e}") from None
    return int(state.get("samples", 0))


def saved_part_tensors(blob) -> dict[str, torch.Tensor]:
    """A part's tensors (``dff_ros.parts.state`` names, no optimizer state) from a layer file
    ({"state": {"layer", "running_mean", "head"}}) or a head file ({"state_dict"}). Raises
    ValueError for anything else."""
    if isinstance(blob, dict) and isinstance(blob.get("state"), dict) and isinstance(blob["state"].get("layer"), dict):
        state = blob["state"]
        out = {f"layer.{k}": v for k, v in state["layer"].items()}
        if isinstance(state.get("head"), dict):   # a PON layer's own head
            out.update({f"head.{k}": v for k, v in state["head"].items()})
        if torch.is_tensor(state.get("running_mean")):
            out["running_mean"] = state["running_mean"]
    elif isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        out = {f"head.{k}": v for k, v in blob["state_dict"].items()}
    else:
        raise ValueError("not a saved layer or head (expected 'state' with 'layer', or 'state_dict')")
    if not out or not all(torch.is_tensor(v) for v in out.values()):
        raise ValueError("a saved part without tensors, or with something else than tensors")
    return out


# ---------------------------------------------------------------- a weights dir

def saved_files(root, limit: int = 1000) -> list[tuple[str, int, float]]:
    """``(<model>/<file>, bytes, saved_at)`` of the weights files under ``root`` (the first ``limit``)."""
    out = []
    for path in sorted(Path(root).glob("*/*.pt"))[:limit]:
        try:
            st = path.stat()
        except OSError:   # removed meanwhile
            continue
        out.append((f"{path.parent.name}/{path.name}", st.st_size, st.st_mtime))
    return out


def file_model(path: Path) -> str | None:
    """The model a weights file says it belongs to (None: it does not say, or cannot be read)."""
    try:
        blob = load_weights(path)
    except Exception:   # unreadable, truncated, pickled code: not ours to judge here
        return None
    name = blob.get("model") if isinstance(blob, dict) else None
    return name if isinstance(name, str) else None


def remove_model_files(root, model: str) -> tuple[int, Path]:
    """Delete ``model``'s weights files under ``root``; (how many, the folder they were in).

    Each model has its own folder (``path_token``); still, a file goes only when it names
    ``model``, or names no model (a head saved before heads did) while no file there names
    another one: a file copied into the wrong folder is not someone else's to delete."""
    folder = model_dir(root, model)
    files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    owners = {f: file_model(f) for f in files}
    shared = any(name not in (None, model) for name in owners.values())
    gone = [f for f, name in owners.items() if name == model or (name is None and not shared)]
    for f in gone:
        f.unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return len(gone), folder


def read_part_file(root, model: str, file: str, part: int) -> tuple[dict[str, torch.Tensor], str, float, Path]:
    """A part's tensors from one of ``model``'s files under ``root`` (what ``dff-ros export``
    gathers): ``(tensors, run_id, saved_at, path)``. WeightsError names what is wrong."""
    path = model_dir(root, model) / file
    if not SAVED_FILE.fullmatch(file):
        raise WeightsError(f"{file!r} is not a weights file name (layer<i>-<module>-<hash>.pt or head-<hash>.pt)")
    if not path.is_file():
        raise WeightsError(f"no {file} of {model!r} in {root}")
    try:
        blob = load_weights(path)
        tensors = saved_part_tensors(blob)
        if "index" in blob and int(blob["index"]) != part:
            raise ValueError(f"it holds layer {blob['index']}, not part {part}")
    except Exception as e:   # unreadable, pickled code, another format
        raise WeightsError(f"{path}: {e}") from None
    return tensors, str(blob.get("run_id", "")), path.stat().st_mtime, path


# ---------------------------------------------------------------- run state

def run_state_path(summary_dir, model: str) -> Path:
    return Path(summary_dir) / f"{path_token(model)}.run-state.pt"


def save_run_state(path, *, run_id: str, config: dict, state: dict) -> Path:
    return save_atomic({"format": RUN_STATE_FORMAT, "run_id": run_id, "config": config, **state}, path)


def read_run_state(path) -> dict:
    """A run state file; WeightsError if it is not one (the message names the file)."""
    path = Path(path)
    try:
        state = load_weights(path)
    except Exception as e:  # a file this version cannot read
        raise WeightsError(f"{path}: unreadable run state ({e})") from None
    if not isinstance(state, dict) or state.get("format") != RUN_STATE_FORMAT:
        raise WeightsError(f"{path}: not a run state")
    return state
