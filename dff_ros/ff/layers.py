"""FF layer types, registered by name so model configs can refer to them."""
from __future__ import annotations

import torch
from torch import nn

LAYER_TYPES: dict[str, type["FFLayer"]] = {}


def register_layer(name: str):
    """Class decorator: make a layer type available to configs as ``name``."""

    def wrap(cls):
        if name in LAYER_TYPES:
            raise ValueError(f"layer type {name!r} registered twice")
        cls.type_name = name
        LAYER_TYPES[name] = cls
        return cls

    return wrap


def length_normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row to unit root-mean-square length.

    Hinton's normalisation: the next layer sees only the *direction* of the activity
    vector, so a layer cannot pass its goodness (the length) on. RMS rather than plain L2
    keeps the scale independent of width, so one threshold fits layers of any size.
    eps sits inside the square root: an all-zero row (every unit dead) then has a finite
    gradient instead of 0/0 (PON backpropagates through this).
    """
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


class _ReLUFullGrad(torch.autograd.Function):
    """ReLU whose backward passes the gradient everywhere (loeweX/Forward-Forward).

    The goodness gradient 2h*dh is zero at h=0 either way, so FF updates are unchanged; only
    the peer-normalisation term can now reach a dead unit and bring it back.
    """

    @staticmethod
    def forward(ctx, z):
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad


class FFLayer(nn.Module):
    """A layer trained by its own local objective; input is the raw previous activity."""

    type_name = "FFLayer"
    out_features: int

    @classmethod
    def output_features(cls, in_features: int, *args, **kwargs) -> int:
        """Output width for the given constructor args, without building the layer."""
        raise NotImplementedError


@register_layer("FFDense")
class FFDense(FFLayer):
    """Length-normalise, Linear, ReLU (full-gradient backward)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.output_features(in_features, out_features, bias)
        self.in_features, self.out_features = in_features, out_features
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    @classmethod
    def output_features(cls, in_features: int, out_features: int, bias: bool = True) -> int:
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be true or false, got {bias!r}")
        return out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReLUFullGrad.apply(self.linear(length_normalize(x)))

    def forward_label_candidates(self, images: torch.Tensor, num_classes: int, eps: float = 1e-8) -> torch.Tensor:
        """Output for every image with every one-hot label overlaid, [N*num_classes, out]
        (row n*C + c has label c), at the cost of one matmul per image instead of C.

        All C overlays of an image have the same length (one 1 among zeroed label pixels), so
        W.normalise(x_m + e_c) = (W.x_m + W[:, c]) / r with r shared across labels.
        """
        x = images.clone()
        x[:, :num_classes] = 0.0
        r = ((x.pow(2).sum(dim=1, keepdim=True) + 1.0) / x.shape[1] + eps).sqrt()
        w = self.linear.weight
        z = (x @ w.t()).unsqueeze(1) + w[:, :num_classes].t().unsqueeze(0)   # [N, C, out]
        z = z / r.unsqueeze(1)
        if self.linear.bias is not None:
            z = z + self.linear.bias
        return z.clamp(min=0).reshape(-1, w.shape[0])
