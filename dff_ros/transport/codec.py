"""Pipeline chunks <-> dff_ros messages, and config <-> service requests."""
from __future__ import annotations

import hashlib
import json

import torch

from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rclpy.parameter import parameter_value_to_python

from dff_ros.ff.learners import Activities
from dff_ros.msg import InferenceBatch, LayerParameters, LayerSpec as LayerSpecMsg, TrainingBatch
from dff_ros.pff.plan import NEGATIVES
from dff_ros.pff.store import Parameters
from dff_ros.pipeline.chunks import ChunkError, InferChunk, TrainChunk
from dff_ros.transport.tensors import TensorDecodeError, from_msg, to_msg


def _stamp(msg, node, run_id: str, model: str, layer: int) -> None:
    if node is not None:
        msg.header.stamp = node.get_clock().now().to_msg()
    msg.header.frame_id = model
    msg.run_id, msg.model, msg.layer = run_id, model, layer


def train_to_msg(c: TrainChunk, *, run_id: str, model: str, layer: int, node=None) -> TrainingBatch:
    m = TrainingBatch()
    _stamp(m, node, run_id, model, layer)
    m.chapter, m.epoch, m.seq, m.count, m.attempt = c.chapter, c.epoch, c.seq, c.count, c.attempt
    to_msg(c.images, m.images)
    to_msg(c.labels, m.labels)
    to_msg(c.neg_labels, m.neg_labels)
    if c.acts is not None:
        to_msg(c.acts.pos, m.pos)
        to_msg(c.acts.neg, m.neg)
        to_msg(c.acts.neutral, m.neutral)
    to_msg(c.features, m.features)
    return m


def _decode(msg, fields: dict[str, torch.dtype | None]) -> dict:
    try:
        return {f: from_msg(getattr(msg, f), expect_dtype=dt, name=f) for f, dt in fields.items()}
    except TensorDecodeError as e:
        raise ChunkError(str(e)) from None


def train_from_msg(m: TrainingBatch) -> TrainChunk:
    t = _decode(m, {"images": None, "labels": torch.int64, "neg_labels": torch.int64, "pos": torch.float32,
                    "neg": torch.float32, "neutral": torch.float32, "features": torch.float32})
    if t["labels"] is None:
        raise ChunkError("labels missing")
    acts = None
    if t["pos"] is not None or t["neg"] is not None or t["neutral"] is not None:
        acts = Activities(t["pos"], t["neg"], t["neutral"], t["labels"])
    return TrainChunk(m.chapter, m.epoch, m.seq, m.count, t["labels"], images=t["images"],
                      neg_labels=t["neg_labels"], acts=acts, features=t["features"], attempt=m.attempt)


def infer_to_msg(c: InferChunk, *, run_id: str, model: str, layer: int, node=None) -> InferenceBatch:
    m = InferenceBatch()
    _stamp(m, node, run_id, model, layer)
    m.seq, m.count = c.seq, c.count
    for f in ("images", "labels", "candidates", "goodness", "neutral", "features"):
        to_msg(getattr(c, f), getattr(m, f))
    return m


def infer_from_msg(m: InferenceBatch) -> InferChunk:
    t = _decode(m, {"images": None, "labels": torch.int64, "candidates": torch.float32,
                    "goodness": torch.float32, "neutral": torch.float32, "features": torch.float32})
    return InferChunk(m.seq, m.count, **t)


# ---------------------------------------------------------------- PFF parameters

def params_to_msg(p: Parameters, *, run_id: str, model: str, node_name: str, node=None) -> LayerParameters:
    m = LayerParameters()
    if node is not None:
        m.header.stamp = node.get_clock().now().to_msg()
    m.header.frame_id = model
    m.run_id, m.model, m.node = run_id, model, node_name
    m.part, m.chapter, m.version = p.part, p.version - 1, p.version
    m.names = list(p.tensors)
    m.tensors = [to_msg(t) for t in p.tensors.values()]
    metrics = {k: float(v) for k, v in p.meta.items() if isinstance(v, (int, float)) and k not in ("part", "chapter")}
    metrics.update({f"input_{k}": float(v) for k, v in p.meta.get("inputs", {}).items()})
    m.metric_names, m.metric_values = list(metrics), list(metrics.values())
    return m


def params_from_msg(m: LayerParameters) -> Parameters:
    """Raises ChunkError for a message that does not describe a parameter version."""
    if len(m.names) != len(m.tensors) or len(set(m.names)) != len(m.names):
        raise ChunkError(f"{len(m.names)} names for {len(m.tensors)} tensors (or a name twice)")
    if len(m.metric_names) != len(m.metric_values):
        raise ChunkError("metric names and values differ in number")
    if m.part < NEGATIVES or m.version != m.chapter + 1:
        raise ChunkError(f"part {m.part}, chapter {m.chapter}, version {m.version}: not a trained version "
                         f"(or the negative labels, part {NEGATIVES}, for a chapter)")
    try:
        tensors = {n: from_msg(t, name=n) for n, t in zip(m.names, m.tensors)}
    except TensorDecodeError as e:
        raise ChunkError(str(e)) from None
    if any(t is None for t in tensors.values()):
        raise ChunkError("an absent tensor in a parameters message")
    meta: dict = {"node_name": m.node, "part": m.part, "chapter": m.chapter, "inputs": {}}
    for k, v in zip(m.metric_names, m.metric_values):
        if k.startswith("input_") and k[6:].isdigit():
            meta["inputs"][int(k[6:])] = int(v)
        else:
            meta[k] = v
    return Parameters(m.part, m.version, tensors, meta)


# ---------------------------------------------------------------- parameters, specs

def to_parameter_value(v) -> ParameterValue:
    pv = ParameterValue()
    if isinstance(v, bool):
        pv.type, pv.bool_value = ParameterType.PARAMETER_BOOL, v
    elif isinstance(v, int):
        pv.type, pv.integer_value = ParameterType.PARAMETER_INTEGER, v
    elif isinstance(v, float):
        pv.type, pv.double_value = ParameterType.PARAMETER_DOUBLE, v
    elif isinstance(v, str):
        pv.type, pv.string_value = ParameterType.PARAMETER_STRING, v
    elif isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        pv.type, pv.string_array_value = ParameterType.PARAMETER_STRING_ARRAY, list(v)
    elif v is None:
        pv.type = ParameterType.PARAMETER_NOT_SET
    else:
        raise TypeError(f"cannot send {v!r} as a ROS parameter value")
    return pv


def to_parameters(values: dict) -> list[Parameter]:
    return [Parameter(name=k, value=to_parameter_value(v)) for k, v in values.items()]


def from_parameters(params) -> dict:
    return {p.name: parameter_value_to_python(p.value) for p in params}


def spec_to_msg(spec, topics: dict[str, str], last: bool) -> LayerSpecMsg:
    m = LayerSpecMsg()
    m.index, m.source, m.module = spec.index, spec.source, spec.module
    m.args = [to_parameter_value(a) for a in spec.args]
    m.kwargs = to_parameters(dict(spec.kwargs))
    m.in_features, m.out_features = spec.in_features, spec.out_features
    m.train_input, m.train_output = topics["train_input"], topics["train_output"]
    m.infer_input, m.infer_output = topics["infer_input"], topics["infer_output"]
    m.last = last
    return m


def spec_hash(model: str, spec, train: dict) -> str:
    """Weights key: the layer's shape-defining spec plus what changes what it learns."""
    keyed = {"model": model, "index": spec.index, "source": spec.source, "module": spec.module,
             "args": list(spec.args), "kwargs": dict(spec.kwargs), "in": spec.in_features,
             "out": spec.out_features, "goodness": train.get("goodness"), "algorithm": train.get("algorithm")}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:12]
