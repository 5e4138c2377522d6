"""Model config: schema, defaults and validation in one place.

The same schema drives the single-process reference trainer and the distributed master.
A config is YAML (see ``config/models/*.yaml``)::

    name: mnist_default
    dataset: {name: MNIST}       # or {name: cam, format: image_folder, path: cam.tar.gz} (dff_ros/data/config.py)
    model:                       # YOLOv5-like rows: [from, module, args]
      - [-1, FFDense, [1000]]
      - [-1, FFDense, [1000]]
    train: {epochs: 20, splits: 20, batch_size: 64, ...}

Every error names the file, the key and the problem (``ConfigError``).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from dff_ros.config.files import MAX_CONFIG_BYTES, load_yaml
from dff_ros.data.config import DatasetConfig, DatasetConfigError, dataset_config
from dff_ros.data.info import DataInfo
from dff_ros.ff.layers import LAYER_TYPES

NEGATIVE_STRATEGIES = ("adaptive", "random", "fixed", "hybrid")
# Integer settings beyond these are mistakes (or attacks: a 2^62 batch size allocates until the
# process dies), not configurations: counts of rows and epochs fit an int32, threads a large host.
INT_LIMIT = 2 ** 31 - 1
INT_LIMITS = {"threads": 1024, "augment_crop": 1024, "seed": 2 ** 63 - 1}
CLASSIFIERS_BY_ALGORITHM = {
    "ff": ("goodness", "softmax"),
    "pon": ("pon_last", "pon_all"),
    "cwc": ("cwc_all", "cwc_last"),
}
SCHEDULES = ("stream", "chapters")
GOODNESS = ("sum", "mean")
FF_LOSSES = ("threshold", "symmetric")
SCORING_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "sgd")


class ConfigError(ValueError):
    """A config problem, worded as ``<file>: <key>: <problem>``."""

    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")


@dataclass(frozen=True)
class LayerSpec:
    """One row of the model list, resolved: the absolute index of the layer feeding it and the
    shapes of one sample's activations in and out (``(width,)`` for a dense layer, ``(C, H, W)``
    for a convolutional one; a batch adds a leading dimension)."""

    index: int
    source: int  # index of the layer feeding this one; -1 means the (label-overlaid) input
    module: str
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()

    @property
    def in_features(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        return math.prod(self.out_shape)

    def build(self):
        return LAYER_TYPES[self.module].from_shape(self.in_shape, *self.args, **dict(self.kwargs))


@dataclass(frozen=True)
class TrainConfig:
    """The model YAML's ``train`` section: how the layers learn (epochs, chapters, objective,
    negatives, classifiers, schedule)."""
    algorithm: str = "ff"            # ff: positive/negative goodness; pon: per-layer softmax (PFF 4.4); cwc: class groups
    epochs: int = 20
    splits: int = 20                 # S; chapter length C = epochs / splits
    batch_size: int = 64
    # PFF 5.1 uses Adam 0.01 / 1e-4; with RMS-normalised inputs and sum goodness 0.01 kills
    # units and 0.003 stalls; 0.001 measured best (README benchmarks)
    lr: float = 0.001                # FF layers
    head_lr: float = 0.01            # softmax / PON heads
    optimizer: str = "adam"
    cooldown: bool = True            # linear lr decay over the second half of training
    # theta in softplus(theta - g_pos) + softplus(g_neg - theta); null: Hinton's choice, theta =
    # the layer's width for sum goodness (1 for mean), i.e. a mean squared activity of 1
    threshold: float | None = None
    goodness: str = "sum"            # sum | mean of squared activities
    # threshold: Hinton's, above; symmetric: softplus(-4 (g_pos - g_neg) / theta) (Trifecta's
    # symmetric loss, a = 4 for mean goodness): positive above negative, no level to reach
    ff_loss: str = "threshold"
    peer_normalization: float = 0.03  # weight of the peer-normalisation loss (0 = off)
    negatives: str = "random"        # adaptive | random | fixed (labels) | hybrid (images, unsupervised)
    # adaptive: score chapter j's negatives with the network after chapter j - lag; null: 1 in
    # one process, the layer count in a DFF chapters pipeline (1 for stream), N (the node count)
    # in PFF, so no layer or node waits for another's network
    negatives_lag: int | None = None
    # adaptive: the dtype of the goodness scoring that picks them (bfloat16: its matmuls 2.4x
    # faster on a Zen 4 EPYC with AVX512_BF16); the test classifier stays float32
    negatives_dtype: str = "float32"
    classifiers: tuple = ("goodness", "softmax")
    schedule: str = "chapters"       # chapters: layer by layer (PFF); stream: each batch through all layers (DFF)
    seed: int = 0
    threads: int = 2
    eval_batch_size: int = 1000
    augment_crop: int = 0            # shift images by up to this many pixels (a crop of the padded image), per chapter
    augment_flip: bool = False       # mirror half the images left-right, drawn anew per chapter
    train_subset: int = 0            # 0 = whole training set; >0 = first n samples (tests, smoke runs)
    test_subset: int = 0

    @property
    def chapter_epochs(self) -> int:
        return self.epochs // self.splits

    @property
    def overlay(self) -> bool:
        """Labels are overlaid on the images (all but unsupervised FF's hybrid negatives)."""
        return self.negatives != "hybrid"

    @property
    def layer_scores(self) -> bool:
        """Each layer trains on its own class scores (pon, cwc), on the neutral-label pass."""
        return self.algorithm in ("pon", "cwc")


# What each train key means: docs/reference.md's table (test/test_config.py keeps it in step).
TRAIN_HELP = {
    "algorithm": "`ff`: positive/negative goodness; `pon`: per-layer softmax heads (PFF 4.4); `cwc`: channel-wise "
                 "competitive, each layer's channels in one group per class, cross-entropy on the groups' goodness "
                 "(CwC, AAAI 2024; no negatives, one pass)",
    "epochs": "E, passes over the training set",
    "splits": "S: chapters of C = E/S epochs (must divide `epochs`); negatives are chosen anew per chapter",
    "batch_size": "rows per update",
    "lr": "FF layers' learning rate",
    "head_lr": "softmax / PON heads' learning rate",
    "optimizer": "`adam` \\| `sgd` (momentum 0.9)",
    "cooldown": "linear learning-rate decay over the second half of training (PFF 5.1)",
    "threshold": "theta; null: the layer's width for sum goodness (1 for mean)",
    "goodness": "`sum` \\| `mean` of squared activities",
    "ff_loss": "ff: `threshold` (Hinton: softplus(theta - g_pos) + softplus(g_neg - theta)) \\| `symmetric` "
               "(Trifecta: softplus(-4 (g_pos - g_neg) / theta), positive goodness above negative)",
    "peer_normalization": "weight of the peer-normalisation loss (0: off)",
    "negatives": "`adaptive` \\| `random` \\| `fixed` (negative labels overlaid) \\| `hybrid` (unsupervised: no "
                 "labels overlaid; negatives are two images mixed by a blurred random mask; only the softmax head "
                 "classifies); ff only: pon and cwc train without negatives (`fixed` or `adaptive` there is refused)",
    "negatives_lag": "adaptive: chapter j's negatives are scored after chapter j - lag; null: 1 in one process, "
                     "the layer count in a DFF chapters pipeline (1 for stream), the node count in PFF",
    "negatives_dtype": "adaptive: `float32` \\| `bfloat16`, the dtype of the goodness scoring that picks the "
                       "negatives (bfloat16: its matmuls 2.4x faster on a Zen 4 EPYC with AVX512_BF16; "
                       "not measured on a CPU without bf16 instructions); testing stays float32; unused by other negatives",
    "classifiers": "ff: `goodness`, `softmax`; pon: `pon_last`, `pon_all`; cwc: `cwc_all` (every layer's groups), "
                   "`cwc_last`",
    "schedule": "`chapters`: layer by layer (PFF); `stream`: each minibatch through all layers (DFF)",
    "seed": "seeds the layers, the minibatch order and the negatives",
    "threads": "torch threads of the single-process trainer (`dff-ros train`); servers take `server_threads`",
    "eval_batch_size": "rows per forward pass when testing",
    "augment_crop": "0: off; P: each chapter trains on a copy of the images shifted by up to P pixels (a random "
                    "crop of the image padded with P zero pixels), drawn anew per chapter",
    "augment_flip": "each chapter mirrors a random half of the images left-right (not for digits)",
    "train_subset": "0: every training image; N: the first N (quick runs, tests)",
    "test_subset": "0: every test image; N: the first N",
}


def train_reference_table() -> str:
    """docs/reference.md's table of the model YAML's train keys, from TrainConfig and TRAIN_HELP."""
    def shown(v):
        if v is None:
            return "null"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, tuple):
            return "[" + ", ".join(v) + "]"
        return f"`{v}`" if isinstance(v, str) else str(v)

    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `train.{f.name}` | {shown(f.default)} | {TRAIN_HELP[f.name]} |" for f in dataclasses.fields(TrainConfig)]
    return "\n".join(rows) + "\n"


@dataclass(frozen=True)
class ModelConfig:
    """A validated model YAML: its name, resolved layer specs, training settings, dataset and
    what the data holds (image shape, classes: read from the data, or from the weights file)."""
    name: str
    layers: tuple[LayerSpec, ...]
    train: TrainConfig
    dataset: DatasetConfig
    data: DataInfo
    source: str = "<dict>"

    @property
    def input_features(self) -> int:
        return self.data.features

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def check_data(self, info: DataInfo, where: str) -> None:
        """ConfigError unless the loaded data (``info``, from ``where``) is what the model was built for."""
        if info != self.data:
            raise ConfigError(self.source, "dataset",
                              f"{where} holds images {list(info.image_shape)} of {info.num_classes} classes "
                              f"({', '.join(info.classes[:12])}), but the model was built for images "
                              f"{list(self.data.image_shape)} of {self.data.num_classes} classes "
                              f"({', '.join(self.data.classes[:12])})")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "dataset": self.dataset.to_dict(),
            "data": self.data.to_dict(),
            "model": [[-1 if l.source == l.index - 1 else l.source, l.module,
                       dict(l.kwargs) if l.kwargs else list(l.args)] for l in self.layers],
            "train": {k: (list(v) if isinstance(v, tuple) else v)
                      for k, v in dataclasses.asdict(self.train).items()},
        }


# ---------------------------------------------------------------- loading + validation

def read_yaml(source: str) -> Any:
    """Parsed YAML of a file; missing files, syntax errors, aliases, deep nesting and files larger
    than any config become ConfigErrors."""
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)   # (a pipe, e.g. <(...), has no size to ask)
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError(source, "<file>", f"larger than any config ({MAX_CONFIG_BYTES:,} characters at most)")
        return load_yaml(text)
    except FileNotFoundError:
        raise ConfigError(source, "<file>", "file not found") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise ConfigError(source, "<file>", f"not a YAML text file ({type(e).__name__})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, "<yaml>", f"{where}{getattr(e, 'problem', None) or e}") from None


def load_model_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None, *,
                      data_root: str | None = None, allow_download: bool = True) -> ModelConfig:
    """Read and validate a model YAML. ``overrides`` replace keys of ``train``. The dataset is
    described from its files (``data_root`` over the YAML's ``dataset.root``), downloaded if
    missing and allowed: DatasetMissing says what to do when it cannot be."""
    source = os.fspath(path)
    raw = read_yaml(source)
    if overrides:
        if not isinstance(raw, dict):
            raise ConfigError(source, "<root>", "must be a mapping")
        raw = {**raw, "train": {**(raw.get("train") or {}), **overrides}}
    return parse_model_config(raw, source, data_root=data_root, allow_download=allow_download)


def parse_model_config(raw: Any, source: str = "<dict>", *, data: DataInfo | None = None,
                       data_root: str | None = None, allow_download: bool = True) -> ModelConfig:
    """A model config from its mapping. What the data holds comes from ``data``, else the
    mapping's ``data`` (a weights file's), else the dataset's files (see load_model_config)."""
    if not isinstance(raw, dict):
        raise ConfigError(source, "<root>", f"must be a mapping, got {type(raw).__name__}")
    _reject_unknown(raw, {"name", "dataset", "data", "model", "train"}, "", source)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(source, "name", "must be a non-empty string")
    try:
        dataset = dataset_config(raw.get("dataset"))
    except DatasetConfigError as e:
        raise ConfigError(source, f"dataset.{e.key}".rstrip("."), e.problem) from None
    if data is None and raw.get("data") is not None:
        data = _validate_data(raw["data"], source)
    if data is None:
        from dff_ros.data.datasets import describe
        data = describe(dataset, data_root, allow_download=allow_download)
    layers = validate_model_rows(raw.get("model"), data.image_shape, source)
    train = validate_train(raw.get("train") or {}, source)
    if train.negatives == "hybrid" and (train.algorithm != "ff" or set(train.classifiers) != {"softmax"}):
        raise ConfigError(source, "train.negatives", "hybrid negatives train FF without labels: use algorithm ff "
                                                     "with classifiers [softmax] (the head is the only one that "
                                                     "sees labels)")
    if train.layer_scores and train.negatives in ("fixed", "adaptive"):   # it would be ignored
        raise ConfigError(source, "train.negatives", f"{train.algorithm} trains without negatives (one pass with "
                                                     f"the neutral label): remove negatives, or use algorithm ff")
    if train.algorithm == "ff" and "goodness" in train.classifiers and len(layers) < 2:
        raise ConfigError(source, "train.classifiers",
                          "the goodness classifier skips the first layer, so it needs at least 2 layers")
    if train.algorithm == "ff" and "softmax" in train.classifiers and len(layers) < 2:
        raise ConfigError(source, "train.classifiers",
                          "the softmax head reads all layers but the first, so it needs at least 2 layers")
    for spec in layers:
        if train.schedule == "stream" and LAYER_TYPES[spec.module].batch_statistics(*spec.args, **dict(spec.kwargs)):
            raise ConfigError(source, "train.schedule",
                              f"layer {spec.index} normalises by batch statistics (norm: batch), which are "
                              f"recomputed over each chapter's inputs once trained: use the chapters schedule")
    if train.algorithm == "cwc":
        for spec in layers:
            if spec.out_shape[0] % data.num_classes:
                raise ConfigError(source, f"model[{spec.index}].args",
                                  f"cwc splits each layer's {'channels' if len(spec.out_shape) > 1 else 'units'} into "
                                  f"one group per class: {spec.out_shape[0]} do not split into {data.num_classes}")
    return ModelConfig(name=name, layers=layers, train=train, dataset=dataset, data=data, source=source)


def _reject_unknown(section: Mapping, known: set, prefix: str, source: str) -> None:
    unknown = sorted(set(section) - known)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(source, key, f"unknown key (known: {', '.join(sorted(known))})")


def _validate_data(raw: Any, source: str) -> DataInfo:
    """A config's ``data`` (written with the weights): {image_shape: [C, H, W], classes: [...]}."""
    shape, classes = (raw.get("image_shape"), raw.get("classes")) if isinstance(raw, dict) else (None, None)
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)
            and isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        raise ConfigError(source, "data", "must be {image_shape: [C, H, W], classes: [names, at least 2]}")
    return DataInfo(tuple(shape), tuple(classes))


def validate_model_rows(rows: Any, input_shape: int | tuple[int, ...], source: str) -> tuple[LayerSpec, ...]:
    """The model list's rows as LayerSpecs; ``input_shape``: one input sample's (a width for flat inputs)."""
    input_shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    if not isinstance(rows, list) or not rows:
        raise ConfigError(source, "model", "must be a non-empty list of [from, module, args] rows")
    layers: list[LayerSpec] = []
    for i, row in enumerate(rows):
        key = f"model[{i}]"
        if not isinstance(row, list) or len(row) != 3:
            raise ConfigError(source, key, f"must be a [from, module, args] row, got {row!r}")
        src, module, args = row
        if isinstance(src, bool) or not isinstance(src, int):
            raise ConfigError(source, f"{key}.from", f"must be an integer layer index, got {src!r}")
        resolved = i + src if src < 0 else src
        if i == 0 and src != -1:
            raise ConfigError(source, f"{key}.from", "the first layer reads the input: use -1")
        if i > 0 and not 0 <= resolved < i:
            raise ConfigError(source, f"{key}.from", f"{src} does not name an earlier layer (0..{i - 1})")
        if i == 0:
            resolved = -1
        if module not in LAYER_TYPES:
            raise ConfigError(source, f"{key}.module",
                              f"unknown layer type {module!r} (known: {', '.join(sorted(LAYER_TYPES))})")
        if isinstance(args, dict):
            pos, kw = (), dict(args)
        elif isinstance(args, list):
            pos, kw = tuple(args), {}
        else:
            raise ConfigError(source, f"{key}.args", f"must be a list or mapping, got {args!r}")
        in_shape = input_shape if resolved < 0 else layers[resolved].out_shape
        cls = LAYER_TYPES[module]
        if resolved < 0 and not cls.shape_args:   # a flat layer reads the image as one row
            in_shape = (math.prod(in_shape),)
        try:
            out_shape = cls.check_args(in_shape, *pos, **kw)
        except (TypeError, ValueError) as e:
            raise ConfigError(source, f"{key}.args", f"{module}{list(pos) or kw}: {e}") from None
        layers.append(LayerSpec(index=i, source=resolved, module=module, args=pos, kwargs=kw,
                                in_shape=tuple(in_shape), out_shape=tuple(out_shape)))
    return tuple(layers)


def _check(cond: bool, source: str, key: str, problem: str) -> None:
    if not cond:
        raise ConfigError(source, key, problem)


def validate_train(raw: Any, source: str) -> TrainConfig:
    if not isinstance(raw, dict):
        raise ConfigError(source, "train", "must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    _reject_unknown(raw, set(fields), "train.", source)
    values = {name: raw.get(name, f.default) for name, f in fields.items()}
    k = lambda name: f"train.{name}"  # noqa: E731

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v):   # finite: nan or inf would train nothing and say nothing
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def at_most(name, v):
        return v <= INT_LIMITS.get(name, INT_LIMIT)

    for name in ("epochs", "splits", "batch_size", "threads", "eval_batch_size"):
        _check(is_int(values[name]) and 0 < values[name] and at_most(name, values[name]), source, k(name),
               f"must be a positive integer up to {INT_LIMITS.get(name, INT_LIMIT):,}, got {values[name]!r}")
    for name in ("seed", "train_subset", "test_subset", "augment_crop"):
        _check(is_int(values[name]) and 0 <= values[name] and at_most(name, values[name]), source, k(name),
               f"must be a non-negative integer up to {INT_LIMITS.get(name, INT_LIMIT):,}, got {values[name]!r}")
    for name in ("lr", "head_lr"):
        _check(is_num(values[name]) and values[name] > 0, source, k(name),
               f"must be a positive (finite) number, got {values[name]!r}")
    _check(values["threshold"] is None or is_num(values["threshold"]), source, k("threshold"),
           f"must be a finite number or null (= layer width for sum goodness), got {values['threshold']!r}")
    _check(values["negatives_lag"] is None or (is_int(values["negatives_lag"]) and 0 < values["negatives_lag"]
                                                and at_most("negatives_lag", values["negatives_lag"])),
           source, k("negatives_lag"), f"must be a positive integer up to {INT_LIMIT:,} or null (auto), "
           f"got {values['negatives_lag']!r}")
    _check(is_num(values["peer_normalization"]) and values["peer_normalization"] >= 0, source,
           k("peer_normalization"), f"must be a finite number >= 0, got {values['peer_normalization']!r}")
    for name in ("cooldown", "augment_flip"):
        _check(isinstance(values[name], bool), source, k(name), "must be true or false")
    for name, choices in (("algorithm", tuple(CLASSIFIERS_BY_ALGORITHM)), ("optimizer", OPTIMIZERS),
                          ("goodness", GOODNESS), ("ff_loss", FF_LOSSES), ("negatives", NEGATIVE_STRATEGIES),
                          ("schedule", SCHEDULES), ("negatives_dtype", SCORING_DTYPES)):
        _check(values[name] in choices, source, k(name),
               f"must be one of {', '.join(choices)}, got {values[name]!r}")
    _check(values["epochs"] % values["splits"] == 0, source, k("splits"),
           f"must divide epochs ({values['epochs']}) so every chapter has C = epochs/splits whole epochs")
    classifiers = values["classifiers"]
    if isinstance(classifiers, str):
        classifiers = [classifiers]
    allowed = CLASSIFIERS_BY_ALGORITHM[values["algorithm"]]
    _check(isinstance(classifiers, (list, tuple)) and len(classifiers) > 0, source, k("classifiers"),
           "must be a non-empty list")
    for c in classifiers:
        _check(c in allowed, source, k("classifiers"),
               f"{c!r} is not a classifier of algorithm {values['algorithm']!r} (use {', '.join(allowed)})")
    values["classifiers"] = tuple(dict.fromkeys(classifiers))
    if values["threshold"] is not None:
        values["threshold"] = float(values["threshold"])
    values["lr"], values["head_lr"] = float(values["lr"]), float(values["head_lr"])
    return TrainConfig(**values)
