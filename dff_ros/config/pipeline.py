"""Pipeline YAML (what the launcher and the master read), the layer-type YAML, and the
distribution planner (which server hosts which layer)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from dff_ros.config.files import load_yaml
from dff_ros.config.schema import INT_LIMIT, ConfigError, read_yaml
from dff_ros.ff.layers import LAYER_TYPES
from dff_ros.parts.names import VARIANTS
from dff_ros.pff.plan import MAX_NODES

MAX_SECONDS = 7 * 24 * 3600.0   # the longest wait or timeout a pipeline may set (a week)

TRANSPORTS = ("activations", "parameters")
MESSAGE_TYPES = ("dff_ros/msg/TrainingBatch", "dff_ros/msg/InferenceBatch")
PATHS = ("train", "infer")


# ---------------------------------------------------------------- layer types

def load_layer_types(path: str | os.PathLike) -> dict[str, dict[str, dict[str, str]]]:
    source = os.fspath(path)
    raw = read_yaml(source)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(source, "<root>", "must map layer type names to their train/infer messages")
    for name, entry in raw.items():
        if name not in LAYER_TYPES:
            raise ConfigError(source, str(name), f"unknown layer type (known: {', '.join(sorted(LAYER_TYPES))})")
        if not isinstance(entry, dict) or set(entry) != set(PATHS):
            raise ConfigError(source, str(name), "must have exactly the keys train and infer")
        for path_kind in PATHS:
            io = entry[path_kind]
            if not isinstance(io, dict) or set(io) != {"input", "output"}:
                raise ConfigError(source, f"{name}.{path_kind}", "must be {input: <msg type>, output: <msg type>}")
            for k, v in io.items():
                if v not in MESSAGE_TYPES:
                    raise ConfigError(source, f"{name}.{path_kind}.{k}",
                                      f"unknown message type {v!r} (known: {', '.join(MESSAGE_TYPES)})")
    return raw


def check_model_layer_types(config, layer_types: Mapping, source: str) -> None:
    """Every layer's type is known and reads what its source writes (the master's data counts
    as the source's output type of the first layer)."""
    for spec in config.layers:
        if spec.module not in layer_types:
            raise ConfigError(source, spec.module, f"model {config.name!r} layer {spec.index} uses a type this "
                                                   "file does not describe")
        if spec.source >= 0:
            up = layer_types[config.layers[spec.source].module]
            for kind in PATHS:
                if up[kind]["output"] != layer_types[spec.module][kind]["input"]:
                    raise ConfigError(source, f"{spec.module}.{kind}.input",
                                      f"layer {spec.index} reads {layer_types[spec.module][kind]['input']} but "
                                      f"layer {spec.source} writes {up[kind]['output']}")


# ---------------------------------------------------------------- pipeline file

@dataclass(frozen=True)
class PipelineConfig:
    """The pipeline YAML: which model runs where and how (transport, servers, placement, timeouts);
    every key is a master ROS parameter."""
    model: str                              # model YAML
    layer_types: str                        # layer-type YAML
    servers: int = 2                        # servers the launcher starts / the master waits for
    transport: str = "activations"          # activations: DFF pipeline; parameters: PFF parameter passing
    pff_variant: str = "all_layers"         # parameters: single_layer | all_layers | federated
    param_history: int = 4                  # parameters: versions per part kept for late joiners
    placement: Any = "round_robin"          # round_robin, or {layer index: server name}
    data_root: str | None = None
    weights_dir: str | None = None
    summary_dir: str = "runs"
    chunk_rows: int = 1000                  # rows per message in chapters mode and for inference
    window: int = 8                         # chunks (stream) / chapters in flight
    restore_weights: bool | None = None     # null: only to evaluate (train: false); true: also to train on from
    train: bool = True                      # false: restore and evaluate only
    keep_layers: bool = False               # leave the layers hosted after the run
    server_threads: int = 1
    server_solo_threads: int = 0            # parameters: threads for a server whose peers have no work (0: auto)
    wait_servers_seconds: float = 60.0
    service_timeout_seconds: float = 30.0
    stall_seconds: float = 300.0
    heartbeat_timeout_seconds: float = 10.0   # a hosting server silent this long is lost
    recover: bool = True                    # a lost server: DFF chapters, its layers move; PFF, a spare takes its share
    source: str = "<dict>"

    @property
    def restores(self) -> bool:
        """Whether the servers load saved weights: asked for, or (null) to evaluate them."""
        return (not self.train) if self.restore_weights is None else self.restore_weights


# What each key means: docs/reference.md's table and the master's ROS parameter descriptions
# (test/test_pipeline_config.py checks that the document lists exactly these).
HELP = {
    "model": "model YAML (layers and training, see the README's Model config)",
    "layer_types": "layer-type YAML: which layer modules servers may build",
    "servers": "servers the launcher starts (role all); servers the master waits for",
    "transport": "`activations`: DFF, layers pass activations down a pipeline; `parameters`: PFF, nodes pass "
                 "layer parameters",
    "pff_variant": "PFF: `single_layer` \\| `all_layers` \\| `federated`",
    "param_history": "PFF: versions per part kept (transient local) for nodes that join late",
    "placement": "or `{0: server_1, 1: server_3}`: which server hosts which layer",
    "data_root": "dataset folder; null: `$DFF_DATA_ROOT`, else `~/.cache/dff_ros/data` (downloaded, md5-checked)",
    "weights_dir": "where weights are kept; null: `$DFF_WEIGHTS_DIR`, else `~/.local/share/dff_ros/weights`",
    "summary_dir": "run summaries, plots and the run state of a running DFF run",
    "chunk_rows": "rows per message (chapters schedule, inference)",
    "window": "chunks (stream) or chapters (chapters) in flight",
    "restore_weights": "null: servers load the saved weights of the same model and layer spec only to evaluate "
                       "them (`train: false`); true: also to train on from them (DFF); false: never. Only weights "
                       "of a layer that trained every chapter load, and every load is logged with its file and run",
    "train": "false: evaluate restored weights only",
    "keep_layers": "leave the layers hosted when the master exits",
    "server_threads": "torch threads per server",
    "server_solo_threads": "threads of a server while the others have no work (PFF: the first task, the last "
                           "chapters; DFF chapters: the first layer's first chapter, the last layer once the "
                           "layers above are done); 0: the cores the servers started here share",
    "wait_servers_seconds": "how long the master waits for `servers` servers",
    "service_timeout_seconds": "per service call",
    "stall_seconds": "no result this long: the run stops with a message",
    "heartbeat_timeout_seconds": ("a server hosting layers that is silent this long, and does not answer "
                                  "`list_layers` within 2 s, is lost"),
    "recover": "a lost server's work moves on: DFF (both schedules), its layers to live servers; PFF, its share "
               "to a spare server (false: stop)",
}


def reference_table() -> str:
    """docs/reference.md's table of pipeline keys, from the dataclass and ``HELP``."""
    def shown(v):
        if v is dataclasses.MISSING:
            return "(required)"
        if v is None:
            return "null"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return f"`{v}`" if isinstance(v, str) else str(v)

    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{f.name}` | {shown(f.default)} | {HELP[f.name]} |" for f in dataclasses.fields(PipelineConfig)
             if f.name != "source"]
    return "\n".join(rows) + "\n"


def parameter_values(cfg: PipelineConfig) -> dict[str, Any]:
    """The config as ROS parameter values: null stays None (a typed, unset parameter), the
    placement mapping becomes its YAML text."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(PipelineConfig) if f.name != "source"}
    if not isinstance(out["placement"], str):
        out["placement"] = yaml.safe_dump(out["placement"], default_flow_style=True).strip()
    return out


PARAMETER_TYPES = {"data_root": str, "weights_dir": str, "restore_weights": bool}   # keys that may be null


def from_parameter_values(values: Mapping[str, Any], source: str) -> PipelineConfig:
    """``parameter_values`` back, validated like the YAML (a bad ``-p key:=value`` names the key)."""
    raw = dict(values)
    if isinstance(raw.get("placement"), str) and raw["placement"] != "round_robin":
        try:
            raw["placement"] = load_yaml(raw["placement"])
        except yaml.YAMLError as e:
            raise ConfigError(source, "placement", f"not YAML: {e}") from None
    return parse_pipeline_config(raw, source)


def server_arguments(cfg: PipelineConfig, servers_here: int) -> list[str]:
    """The server node's command-line arguments for this pipeline (the launcher and the launch
    file start the same servers): its threads, and the weights and data folders when set."""
    out = ["--threads", str(cfg.server_threads),
           "--solo-threads", str(solo_threads(cfg.server_solo_threads, servers_here, cfg.server_threads))]
    if cfg.weights_dir:
        out += ["--weights-dir", cfg.weights_dir]
    if cfg.data_root:   # PFF servers read their own data
        out += ["--data-root", cfg.data_root]
    return out


def solo_threads(configured: int, servers_here: int, threads: int) -> int:
    """Torch threads for a PFF server while the other nodes have no work: ``configured``, or
    (0) the cores that the ``servers_here`` servers started on this machine share."""
    return configured or max(threads, min(os.cpu_count() or 1, servers_here * threads))


def load_pipeline_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Read the pipeline YAML; relative model/layer_types/summary paths are resolved against it."""
    source = os.fspath(path)
    raw = read_yaml(source)
    if not isinstance(raw, dict):
        raise ConfigError(source, "<root>", "must be a mapping")
    raw = {**raw, **(overrides or {})}
    return parse_pipeline_config(raw, source, base=Path(source).parent)


def parse_pipeline_config(raw: Mapping, source: str, base: Path | None = None) -> PipelineConfig:
    fields = {f.name: f for f in dataclasses.fields(PipelineConfig) if f.name != "source"}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(source, unknown[0], f"unknown key (known: {', '.join(sorted(fields))})")
    for required in ("model", "layer_types"):
        if not isinstance(raw.get(required), str) or not raw[required]:
            raise ConfigError(source, required, "must be a path to a YAML file")
    values = {k: raw.get(k, f.default) for k, f in fields.items()}

    def resolve(p):  # relative to the pipeline file, so it works from the repo and from share/
        p = os.path.expanduser(p)
        return p if base is None or os.path.isabs(p) else str((base / p).resolve())

    for k in ("model", "layer_types"):
        values[k] = resolve(values[k])
    if values["transport"] not in TRANSPORTS:
        raise ConfigError(source, "transport", f"must be one of {', '.join(TRANSPORTS)}, got {values['transport']!r}")
    if values["pff_variant"] not in VARIANTS:
        raise ConfigError(source, "pff_variant", f"must be one of {', '.join(VARIANTS)}, got {values['pff_variant']!r}")
    for k, most in (("servers", MAX_NODES), ("chunk_rows", INT_LIMIT), ("window", INT_LIMIT),
                    ("server_threads", 1024), ("param_history", 1024)):
        v = values[k]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= most:
            raise ConfigError(source, k, f"must be an integer 1..{most:,}, got {v!r}")
    v = values["server_solo_threads"]
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1024:
        raise ConfigError(source, "server_solo_threads", f"must be an integer 0..1024 (0: auto), got {v!r}")
    for k in ("wait_servers_seconds", "service_timeout_seconds", "stall_seconds", "heartbeat_timeout_seconds"):
        v = values[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_SECONDS:
            raise ConfigError(source, k, f"must be a number of seconds in (0, {MAX_SECONDS:g}], got {v!r}")
        values[k] = float(v)
    for k in ("train", "keep_layers", "recover"):
        if not isinstance(values[k], bool):
            raise ConfigError(source, k, "must be true or false")
    if values["restore_weights"] is not None and not isinstance(values["restore_weights"], bool):
        raise ConfigError(source, "restore_weights", "must be true, false or null (null: only when train is false)")
    if values["restore_weights"] and values["train"] and values["transport"] == "parameters":
        raise ConfigError(source, "restore_weights", "PFF trains every part from scratch; training on from saved "
                                                     "weights needs transport: activations")
    for k in ("data_root", "weights_dir"):
        if values[k] is not None and not isinstance(values[k], str):
            raise ConfigError(source, k, "must be a path or null")
    p = values["placement"]
    if p != "round_robin":
        if not isinstance(p, dict) or not all(isinstance(i, int) and not isinstance(i, bool) and isinstance(s, str)
                                              for i, s in p.items()):
            raise ConfigError(source, "placement", "must be round_robin or a mapping {layer index: server name}")
    return PipelineConfig(**values, source=source)


# ---------------------------------------------------------------- planner

def place_layers(n_layers: int, servers: list[str], placement: Any = "round_robin",
                source: str = "<placement>") -> list[str]:
    """Server for each layer: round robin over the servers in name order, or as placed."""
    if not servers:
        raise ConfigError(source, "servers", "no server is running")
    ordered = sorted(servers, key=lambda s: (len(s), s))  # server_2 before server_10
    if placement == "round_robin":
        return [ordered[i % len(ordered)] for i in range(n_layers)]
    where = []
    for i in range(n_layers):
        if i not in placement:
            raise ConfigError(source, f"placement.{i}", f"layer {i} has no server (placement names layers "
                                                       f"{sorted(placement)})")
        if placement[i] not in servers:
            raise ConfigError(source, f"placement.{i}", f"server {placement[i]!r} is not running "
                                                       f"(running: {', '.join(ordered)})")
        where.append(placement[i])
    extra = sorted(set(placement) - set(range(n_layers)))
    if extra:
        raise ConfigError(source, f"placement.{extra[0]}", f"the model has only {n_layers} layers")
    return where
