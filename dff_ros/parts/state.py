"""A part's trainable state as flat named tensors, the payload of a parameters message.

    layer.weight, layer.bias     the FF layer (FF, PON)
    head.weight, head.bias       the softmax head, or a PON layer's own head
    running_mean                 peer-normalisation statistics
    optim.<param>.<key>          optimizer state (Adam moments, step), only when the next
                                 chapter of this part is trained on another node
"""
from __future__ import annotations

import torch
from torch import nn

MODULES = ("layer", "head")


def learner_modules(learner) -> dict[str, nn.Module]:
    return {k: getattr(learner, k) for k in MODULES if isinstance(getattr(learner, k, None), nn.Module)}


def part_state(learner, *, optimizer: bool) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, module in learner_modules(learner).items():
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value.detach().clone()  # a snapshot: training goes on in place
    if getattr(learner, "running_mean", None) is not None:
        out["running_mean"] = learner.running_mean.detach().clone()
    if optimizer:
        for pid, slots in learner.optimizer.state_dict()["state"].items():
            for key, value in slots.items():
                out[f"optim.{pid}.{key}"] = value.clone() if torch.is_tensor(value) else torch.tensor(value)
    return out


def nonfinite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the float tensors holding NaN or inf (a part state that would poison a layer)."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_part_state(learner, tensors: dict[str, torch.Tensor]) -> None:
    """Load what ``part_state`` produced. Tensors are copied: received ones may be views of a
    message buffer. ValueError: tensors that do not fit, or hold NaN or inf."""
    bad = nonfinite(tensors)
    if bad:
        raise ValueError(f"NaN or infinite values in {', '.join(bad[:5])}")
    for name, module in learner_modules(learner).items():
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sub)
        except RuntimeError as e:
            raise ValueError(f"{name}: {e}") from None
    if "running_mean" in tensors:
        learner.running_mean = tensors["running_mean"].clone()
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, slot = key.split(".", 2)
            slots.setdefault(int(pid), {})[slot] = value.clone()
    if slots:
        sd = learner.optimizer.state_dict()
        if set(slots) != set(range(sum(len(g["params"]) for g in sd["param_groups"]))):
            raise ValueError(f"optimizer state for parameters {sorted(slots)} does not fit this learner")
        sd["state"] = slots
        learner.optimizer.load_state_dict(sd)


def nbytes_of(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())

