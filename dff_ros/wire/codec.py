"""The project's messages <-> plain objects: pipeline chunks, parameter versions, layer specs
and training settings (typed ROS parameters), and what a run asks of the servers and hears from
them (``dff_ros.run.cluster``: host requests and reports, statuses, progress)."""
from __future__ import annotations

import json

import torch

from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rclpy.parameter import parameter_value_to_python

from dff_ros.config.schema import LayerSpec, ModelConfig, validate_model_rows, validate_train
from dff_ros.data.config import DatasetConfigError, dataset_config
from dff_ros.data.info import DataInfo
from dff_ros.ff.learners import Activities
from dff_ros.msg import InferenceBatch, LayerParameters, LayerSpec as LayerSpecMsg, Tensor, TrainingBatch
from dff_ros.parts.names import NEGATIVES
from dff_ros.parts.versions import MalformedVersion, Parameters
from dff_ros.pff.plan import PFFPlan
from dff_ros.pff.worker import check_pff_supported
from dff_ros.pipeline.chunks import ChunkError, InferChunk, TrainChunk
from dff_ros.run.cluster import HostReport, HostRequest, Status
from dff_ros.topics import layer_topics
from dff_ros.wire.cdr import blank
from dff_ros.wire.seal import seal
from dff_ros.wire.tensors import TensorDecodeError, from_msg, to_msg


def _stamp(msg, node, run_id: str, model: str, layer: int) -> None:
    if node is not None:
        msg.header.stamp = node.get_clock().now().to_msg()
    msg.header.frame_id = model
    msg.run_id, msg.model, msg.layer = run_id, model, layer


def train_to_msg(c: TrainChunk, *, run_id: str, model: str, layer: int, node=None, msg=None,
                 key: int = 0) -> TrainingBatch:
    """A TrainingBatch, or, given ``msg=cdr.blank(TrainingBatch)``, that ``Blank`` filled with
    views of the chunk's tensors for ``cdr.serialize`` (the nodes' path); sealed with the run
    key ``key`` (``wire/seal.py``; 0: unsealed). Likewise below."""
    m = TrainingBatch() if msg is None else msg
    _stamp(m, node, run_id, model, layer)
    m.chapter, m.epoch, m.seq, m.count, m.attempt = c.chapter, c.epoch, c.seq, c.count, c.attempt
    to_msg(c.images, m.images)
    to_msg(c.labels, m.labels)
    to_msg(c.neg_labels, m.neg_labels)
    to_msg(c.neg_images, m.neg_images)
    if c.acts is not None:
        to_msg(c.acts.pos, m.pos)
        to_msg(c.acts.neg, m.neg)
        to_msg(c.acts.neutral, m.neutral)
    to_msg(c.features, m.features)
    m.seal = seal(key, m)
    return m


def _decode(msg, fields: dict[str, torch.dtype | None]) -> dict:
    try:
        return {f: from_msg(getattr(msg, f), expect_dtype=dt, name=f) for f, dt in fields.items()}
    except TensorDecodeError as e:
        raise ChunkError(str(e)) from None


def train_from_msg(m: TrainingBatch) -> TrainChunk:
    t = _decode(m, {"images": None, "labels": torch.int64, "neg_labels": torch.int64, "neg_images": None,
                    "pos": torch.float32,
                    "neg": torch.float32, "neutral": torch.float32, "features": torch.float32})
    if t["labels"] is None:
        raise ChunkError("labels missing")
    acts = None
    if t["pos"] is not None or t["neg"] is not None or t["neutral"] is not None:
        acts = Activities(t["pos"], t["neg"], t["neutral"], t["labels"])
    return TrainChunk(m.chapter, m.epoch, m.seq, m.count, t["labels"], images=t["images"],
                      neg_labels=t["neg_labels"], neg_images=t["neg_images"], acts=acts, features=t["features"], attempt=m.attempt)


def infer_to_msg(c: InferChunk, *, run_id: str, model: str, layer: int, node=None, msg=None,
                 key: int = 0) -> InferenceBatch:
    m = InferenceBatch() if msg is None else msg
    _stamp(m, node, run_id, model, layer)
    m.seq, m.count = c.seq, c.count
    for f in ("images", "labels", "candidates", "goodness", "neutral", "features"):
        to_msg(getattr(c, f), getattr(m, f))
    m.seal = seal(key, m)
    return m


def infer_from_msg(m: InferenceBatch) -> InferChunk:
    t = _decode(m, {"images": None, "labels": torch.int64, "candidates": torch.float32,
                    "goodness": torch.float32, "neutral": torch.float32, "features": torch.float32})
    return InferChunk(m.seq, m.count, **t)


# ---------------------------------------------------------------- PFF parameters

def params_to_msg(p: Parameters, *, run_id: str, model: str, node_name: str, node=None,
                  msg=None, key: int = 0) -> LayerParameters:
    m = LayerParameters() if msg is None else msg
    if node is not None:
        m.header.stamp = node.get_clock().now().to_msg()
    m.header.frame_id = model
    m.run_id, m.model, m.node = run_id, model, node_name
    m.part, m.chapter, m.version = p.part, p.version - 1, p.version
    m.names = list(p.tensors)
    m.tensors = [to_msg(t, None if msg is None else blank(Tensor)) for t in p.tensors.values()]
    metrics = {k: float(v) for k, v in p.meta.items() if isinstance(v, (int, float)) and k not in ("part", "chapter")}
    metrics.update({f"input_{k}": float(v) for k, v in p.meta.get("inputs", {}).items()})
    m.metric_names, m.metric_values = list(metrics), list(metrics.values())
    m.seal = seal(key, m)
    return m


def params_from_msg(m: LayerParameters) -> Parameters:
    """Raises MalformedVersion for a message that does not describe a parameter version."""
    if len(m.names) != len(m.tensors) or len(set(m.names)) != len(m.names):
        raise MalformedVersion(f"{len(m.names)} names for {len(m.tensors)} tensors (or a name twice)")
    if len(m.metric_names) != len(m.metric_values):
        raise MalformedVersion("metric names and values differ in number")
    if m.part < NEGATIVES or m.version != m.chapter + 1:
        raise MalformedVersion(f"part {m.part}, chapter {m.chapter}, version {m.version}: not a trained version "
                         f"(or the negative labels, part {NEGATIVES}, for a chapter)")
    try:
        tensors = {n: from_msg(t, name=n) for n, t in zip(m.names, m.tensors)}
    except TensorDecodeError as e:
        raise MalformedVersion(str(e)) from None
    if any(t is None for t in tensors.values()):
        raise MalformedVersion("an absent tensor in a parameters message")
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
    m.in_shape, m.out_shape = list(spec.in_shape), list(spec.out_shape)
    m.train_input, m.train_output = topics["train_input"], topics["train_output"]
    m.infer_input, m.infer_output = topics["infer_input"], topics["infer_output"]
    m.last = last
    return m


# ---------------------------------------------------------------- run <-> cluster

def host_request_to_msg(req, srv_request):
    """A ``dff_ros.run.cluster.HostRequest`` as a CreateLayers request (``srv_request``: an
    empty one, so this module needs no service types)."""
    m, r = req.model, srv_request
    last = len(m.layers) - 1
    r.run_id, r.model, r.num_classes, r.dataset = req.run_id, m.name, m.num_classes, m.dataset.to_json()
    r.run_key = req.run_key
    r.image_shape, r.classes = list(m.data.image_shape), list(m.data.classes)
    # a server trains with its own thread count (its `threads` setting), not the trainer's
    r.train = to_parameters({k: v for k, v in m.to_dict()["train"].items() if k != "threads"})
    if req.plan is None:
        r.restore_weights, r.add_layers = req.restore, req.add
        r.resume_from = [params_to_msg(p, run_id=req.run_id, model=m.name, node_name="") for p in req.resume]
        r.layers = [spec_to_msg(m.layers[i], layer_topics(m.name, i, last), i == last) for i in req.layers]
        return r
    no_topics = dict.fromkeys(("train_input", "train_output", "infer_input", "infer_output"), "")
    r.transport, r.pff_variant, r.node_index = "parameters", req.plan.variant, req.node_index
    r.num_nodes, r.layer_nodes, r.negatives_lag = req.plan.nodes, list(req.plan.layer_nodes), req.plan.negatives_lag
    r.data_root, r.param_history = req.data_root, req.param_history
    r.evaluate_only, r.start_chapter = req.evaluate_only, req.start_chapter
    r.layers = [spec_to_msg(s, no_topics, s.index == last) for s in m.layers]
    return r


def host_report_from_msg(res) -> HostReport:
    return HostReport(res.message, tuple(bool(r) for r in res.weights_restored), tuple(res.restored_from),
                      tuple(res.restored_paths))


STATUS_FIELDS = ("run_id", "model", "server", "layer", "phase", "chapter", "chapters_done", "epoch", "loss",
                 "samples", "busy_seconds", "idle_seconds", "bytes_in", "bytes_out", "dropped", "message")
STATUS_LISTS = ("epoch_loss", "epoch_accuracy", "chapter_start", "chapter_end", "chapter_bytes_out")


def status_from_msg(msg) -> Status:
    return Status(**{f: getattr(msg, f) for f in STATUS_FIELDS}, **{f: list(getattr(msg, f)) for f in STATUS_LISTS})


def status_to_msg(st: Status, msg):
    """A ``Status`` into ``msg`` (an empty LayerStatus)."""
    for f in STATUS_FIELDS:
        setattr(msg, f, getattr(st, f))
    msg.loss, msg.busy_seconds, msg.idle_seconds = float(st.loss), float(st.busy_seconds), float(st.idle_seconds)
    for f in STATUS_LISTS:
        setattr(msg, f, list(getattr(st, f)))
    return msg


def progress_to_msg(report, msg):
    """A ``ProgressReport`` into ``msg`` (an empty RunProgress)."""
    for f in ("run_id", "model", "mode", "phase", "recoveries", "done", "total", "epoch", "chapters_done", "chapters"):
        setattr(msg, f, getattr(report, f))
    msg.fraction, msg.elapsed_seconds, msg.eta_seconds = (float(report.fraction), float(report.elapsed_seconds),
                                                          float(report.eta_seconds))
    msg.loss_names, msg.loss_values = list(report.losses), [float(v) for v in report.losses.values()]
    msg.train_accuracy_values = [float(report.train_accuracy.get(k, float("nan"))) for k in report.losses]
    msg.accuracy_names = list(report.accuracy)
    msg.accuracy_values = [float(v) for v in report.accuracy.values()]
    return msg


MAX_PARAM_HISTORY = 1024   # versions per part a PFF node keeps for late joiners (the pipeline's bound)


def host_request_from_msg(msg):
    """A CreateLayers request, validated once, as the ``HostRequest`` the master built (on a
    server, ``model.layers`` holds the requested layers only), and each requested DFF layer's
    wiring ``{index: {"train_input", "train_output", "infer_input", "infer_output", "last"}}``.
    ConfigError / ValueError say what is wrong."""

    if msg.transport not in ("", "activations", "parameters"):
        raise ValueError(f"transport must be activations or parameters, got {msg.transport!r}")
    pff = msg.transport == "parameters"
    where = f"create_layers({msg.model!r}{', parameters' if pff else ''})"
    if not msg.model.strip():
        raise ValueError("model name is empty")
    if not msg.layers:
        raise ValueError("no layers requested")
    if not 2 <= msg.num_classes <= 1000:
        raise ValueError(f"num_classes must be 2..1000, got {msg.num_classes}")
    train_raw = from_parameters(msg.train)
    if isinstance(train_raw.get("classifiers"), list):   # a string array arrives as a list of str
        train_raw["classifiers"] = list(train_raw["classifiers"])
    train = validate_train(train_raw, where)
    specs = sorted((spec_from_msg(m, where) for m in msg.layers), key=lambda s: s.index)
    indices = [s.index for s in specs]
    if len(set(indices)) != len(indices):
        raise ValueError(f"layer indices {[m.index for m in msg.layers]} name a layer twice")
    try:
        dataset = dataset_config(json.loads(msg.dataset) if msg.dataset.lstrip().startswith("{") else msg.dataset or "MNIST")
    except (ValueError, DatasetConfigError) as e:   # json's errors are ValueErrors
        raise ValueError(f"dataset {msg.dataset[:200]!r}: {e}") from None
    dataset = dataset.with_root(msg.data_root or None)
    classes = tuple(msg.classes) or tuple(str(i) for i in range(msg.num_classes))
    shape = tuple(int(d) for d in msg.image_shape)
    if len(classes) != msg.num_classes:
        raise ValueError(f"num_classes {msg.num_classes}, but {len(classes)} class names")
    if len(shape) != 3 or not all(d > 0 for d in shape):
        raise ValueError(f"image_shape {list(shape)} must be [C, H, W] of positive sizes")
    model = ModelConfig(msg.model, tuple(specs), train, dataset, DataInfo(shape, classes), where)
    if not pff:
        resume = []
        for m in msg.resume_from:
            try:
                p = params_from_msg(m)
            except MalformedVersion as e:
                raise ValueError(f"resume_from: {e}") from None
            if p.part not in indices:
                raise ValueError(f"resume_from: a checkpoint of layer {p.part}, which is not requested")
            resume.append(p)
        wiring = {}
        for m in msg.layers:
            topics = {k: getattr(m, k) for k in ("train_input", "train_output", "infer_input", "infer_output")}
            for key, name in topics.items():
                if not name.startswith("/"):
                    raise ValueError(f"layer {m.index}: {key} must be an absolute topic name, got {name!r}")
            wiring[m.index] = {**topics, "last": bool(m.last)}
        return HostRequest(msg.run_id, model, tuple(indices), restore=bool(msg.restore_weights),
                           add=bool(msg.add_layers), resume=tuple(resume), run_key=int(msg.run_key)), wiring
    if indices != list(range(len(specs))):
        raise ValueError(f"PFF nodes need every layer of the model (0..{len(specs) - 1}), got {indices}")
    check_pff_supported(model)
    head = train.algorithm == "ff" and "softmax" in train.classifiers
    if msg.param_history > MAX_PARAM_HISTORY or msg.negatives_lag > train.splits:
        raise ValueError(f"param_history {msg.param_history} (at most {MAX_PARAM_HISTORY}) or negatives_lag "
                         f"{msg.negatives_lag} (at most train.splits, {train.splits}) out of range")
    plan = PFFPlan(msg.pff_variant, int(msg.num_nodes), len(specs), head, tuple(int(n) for n in msg.layer_nodes),
                   int(msg.negatives_lag))   # the master's plan, as it made it
    if not 0 <= msg.node_index < plan.nodes:
        raise ValueError(f"node_index {msg.node_index} outside 0..{plan.nodes - 1}")
    if msg.start_chapter > train.splits or (msg.start_chapter and msg.evaluate_only):
        raise ValueError(f"start_chapter {msg.start_chapter}: outside 0..{train.splits} (train.splits), "
                         "or given with evaluate_only")
    return HostRequest(msg.run_id, model, tuple(indices), plan=plan, node_index=int(msg.node_index),
                       evaluate_only=bool(msg.evaluate_only), start_chapter=int(msg.start_chapter),
                       data_root=msg.data_root, param_history=int(msg.param_history), run_key=int(msg.run_key)), {}


def spec_from_msg(m, where: str):
    """A LayerSpec message, validated exactly like a model YAML row (names the layer and the problem)."""

    args = [parameter_value_to_python(v) for v in m.args]
    kwargs = from_parameters(m.kwargs)
    in_shape = tuple(int(d) for d in m.in_shape) or (int(m.in_features),)
    if not all(d > 0 for d in in_shape):
        raise ValueError(f"layer {m.index}: in_shape {list(in_shape)} must be positive sizes")
    (spec,) = validate_model_rows([[-1, m.module, kwargs if kwargs else args]], in_shape, f"{where} layer {m.index}")
    if m.index < 0 or m.source >= m.index:
        raise ValueError(f"layer {m.index}: source {m.source} must be an earlier layer or -1")
    out_shape = tuple(int(d) for d in m.out_shape) or (int(m.out_features),)
    if spec.out_shape != out_shape:
        said, made = ((f"out_features {out_shape[0]}", spec.out_features) if len(out_shape) == len(spec.out_shape) == 1
                      else (f"out_shape {list(out_shape)}", list(spec.out_shape)))
        raise ValueError(f"layer {m.index}: {said} does not match {m.module}{list(args)} on {list(in_shape)} ({made})")
    # in_shape as sent: validated as a first row, a flat layer would read it flattened
    return LayerSpec(index=m.index, source=m.source, module=spec.module, args=spec.args, kwargs=spec.kwargs,
                     in_shape=in_shape, out_shape=spec.out_shape)
