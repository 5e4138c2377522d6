"""The project's topic names (plain strings, no ROS import): where each kind of message goes.

    /dff/status                              every hosted layer's and PFF share's LayerStatus
    /dff/server_claims                       servers claiming their names (ServerClaim)
    /dff/<model>/input|layer_<i>|output/train|infer    the DFF activation chain
    /dff/<model>/checkpoints                 DFF layers' checkpoints after each chapter
    /dff/<model>/params/layer_<i>|head       PFF parameter versions; /dff/<model>/negatives
    /dff/<model>/tasks                       PFF task reports
    /dff/<model>/progress                    the master's RunProgress
"""
from __future__ import annotations

import re

from dff_ros.parts.names import NEGATIVES

STATUS_TOPIC = "/dff/status"
CLAIMS_TOPIC = "/dff/server_claims"


def topic_token(name: str) -> str:
    """A model name as one valid ROS name token: [A-Za-z0-9_], not starting with a digit."""
    token = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "model"
    return token if not token[0].isdigit() else f"m_{token}"


def layer_topics(model: str, index: int, last_index: int) -> dict[str, str]:
    base = f"/dff/{topic_token(model)}"
    src = f"{base}/input" if index == 0 else f"{base}/layer_{index - 1}"
    dst = f"{base}/output" if index == last_index else f"{base}/layer_{index}"
    return {"train_input": f"{src}/train", "infer_input": f"{src}/infer",
            "train_output": f"{dst}/train", "infer_output": f"{dst}/infer"}


def params_topic(model: str, part: int, num_layers: int) -> str:
    """Where versions of one part go: /dff/<model>/params/layer_<i>, or .../head (part L), and
    adaptive negative labels (part NEGATIVES) /dff/<model>/negatives."""
    if part == NEGATIVES:
        return f"/dff/{topic_token(model)}/negatives"
    return f"/dff/{topic_token(model)}/params/" + ("head" if part == num_layers else f"layer_{part}")


def progress_topic(model: str) -> str:
    """The master's RunProgress (``params_qos(1)``: the latest for late listeners)."""
    return f"/dff/{topic_token(model)}/progress"


def checkpoints_topic(model: str) -> str:
    """DFF layer checkpoints (``params_qos``): each hosted layer's state after every chapter it
    trains (weights and optimizer, a few MB: ~1 % of a chapter's activations). The master keeps
    the newest per layer for the server that takes over a lost server's layer."""
    return f"/dff/{topic_token(model)}/checkpoints"


def tasks_topic(model: str) -> str:
    return f"/dff/{topic_token(model)}/tasks"
