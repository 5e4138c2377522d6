"""FF layer types, registered by name so model configs can refer to them."""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from dff_ros.ff.overlay import blank_labels, overlay, overlay_neutral

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
    """Scale each row (sample) to unit root-mean-square length.

    Hinton's normalisation: the next layer sees only the *direction* of the activity
    vector, so a layer cannot pass its goodness (the length) on. RMS rather than plain L2
    keeps the scale independent of width, so one threshold fits layers of any size.
    eps sits inside the square root: an all-zero row (every unit dead) then has a finite
    gradient instead of 0/0 (PON backpropagates through this).
    """
    if x.dim() != 2:   # an N-d activation: over all of a sample's values
        return x * torch.rsqrt(x.pow(2).flatten(1).mean(dim=1) + eps).view(-1, *[1] * (x.dim() - 1))
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


class _OverlaidLinear(torch.autograd.Function):
    """(blank + m) @ W.T for P passes of label-pixel contents ``mix`` ([P*N, C], m padded with
    zeros) over the same ``blank`` [N, D]: blank @ W.T once, plus mix @ W[:, :C].T. Its own
    backward sums the passes' gradients before the one big matmul, and adds the label columns'
    share in place: autograd would also build a zero-filled full-size gradient for the slice."""

    @staticmethod
    def forward(ctx, blank, mix, weight):
        ctx.save_for_backward(blank, mix)
        n, c = blank.shape[0], mix.shape[1]
        z = mix @ weight[:, :c].t()                                    # [P*N, out]
        z.view(mix.shape[0] // max(n, 1), n, z.shape[1]).add_((blank @ weight.t()).unsqueeze(0))
        return z

    @staticmethod
    def backward(ctx, grad):
        blank, mix = ctx.saved_tensors
        n, c = blank.shape[0], mix.shape[1]
        grad_weight = grad.view(grad.shape[0] // max(n, 1), n, grad.shape[1]).sum(dim=0).t() @ blank
        grad_weight[:, :c] += grad.t() @ mix
        return None, None, grad_weight


class FFLayer(nn.Module):
    """A layer trained by its own local objective; input is the raw previous activity.

    A layer type works on one sample's activations of some shape: a flat one (``shape_args =
    False``, the default) is built as ``cls(in_features, *args)`` on the flattened input and
    says its output width with ``output_features``; an N-d one (``shape_args = True``, e.g. a
    convolution on ``(C, H, W)``) is built as ``cls(in_shape, *args)`` and says its output
    shape with ``output_shape``."""

    type_name = "FFLayer"
    shape_args = False
    out_features: int

    @classmethod
    def output_features(cls, in_features: int, *args, **kwargs) -> int:
        """Output width for the given constructor args, without building the layer."""
        raise NotImplementedError

    @classmethod
    def output_shape(cls, in_shape: tuple[int, ...], *args, **kwargs) -> tuple[int, ...]:
        """One sample's output shape for ``in_shape`` and the constructor args."""
        return (cls.output_features(math.prod(in_shape), *args, **kwargs),)

    @classmethod
    def check_args(cls, in_shape: tuple[int, ...], *args, **kwargs) -> tuple[int, ...]:
        """The output shape, once the args fit the constructor (TypeError / ValueError if not)."""
        first = tuple(in_shape) if cls.shape_args else math.prod(in_shape)
        inspect.signature(cls).bind(first, *args, **kwargs)
        return tuple(cls.output_shape(tuple(in_shape), *args, **kwargs))

    @classmethod
    def batch_statistics(cls, *args, **kwargs) -> bool:
        """Whether a layer of these args normalises by batch statistics (a BatchNorm)."""
        return False

    @classmethod
    def from_shape(cls, in_shape: tuple[int, ...], *args, **kwargs) -> "FFLayer":
        return cls(tuple(in_shape) if cls.shape_args else math.prod(in_shape), *args, **kwargs)


@register_layer("FFDense")
class FFDense(FFLayer):
    """Length-normalise, Linear, ReLU (full-gradient backward). ``center``: subtract each row's
    mean first (for natural images, whose rows share a large mean that would dominate their
    direction)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, center: bool = False):
        super().__init__()
        self.output_features(in_features, out_features, bias, center)
        self.in_features, self.out_features, self.center = in_features, out_features, center
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    @classmethod
    def output_features(cls, in_features: int, out_features: int, bias: bool = True, center: bool = False) -> int:
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name, v in (("bias", bias), ("center", center)):
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be true or false, got {v!r}")
        return out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:   # an N-d layer's activations: one flat row per sample
            x = x.flatten(1)
        if self.center:
            x = x - x.mean(dim=1, keepdim=True)
        return _ReLUFullGrad.apply(self.linear(length_normalize(x)))

    def forward_overlaid(self, blank: torch.Tensor, passes, num_classes: int, eps: float = 1e-8) -> torch.Tensor:
        """``forward`` of the label overlays of ``blank`` (images, label pixels zeroed), one pass
        per entry of ``passes`` (labels [N], or None for the neutral overlay), rows concatenated
        in that order: [len(passes)*N, out], at the cost of one matmul over the images.

        An overlay is blank + m (m: one-hot, or 1/C everywhere for neutral, in the label
        pixels), so W.normalise(blank + m) = (W.blank + W_labels.m) * s, s = rsqrt(mean
        square), and W.blank is shared by every pass.
        """
        if self.center:   # the factored form has no centering: overlay each pass and run forward
            return self(torch.cat([overlay_neutral(blank, num_classes) if labels is None
                                   else overlay(blank, labels, num_classes) for labels in passes]))
        n, d = blank.shape
        mix = torch.cat([torch.full((n, num_classes), 1.0 / num_classes, dtype=blank.dtype) if labels is None
                         else F.one_hot(labels, num_classes).to(blank.dtype) for labels in passes])
        square = blank.pow(2).sum(dim=1, keepdim=True).repeat(len(passes), 1) + mix.pow(2).sum(dim=1, keepdim=True)
        z = _OverlaidLinear.apply(blank, mix, self.linear.weight) * torch.rsqrt(square / d + eps)
        if self.linear.bias is not None:
            z = z + self.linear.bias
        return _ReLUFullGrad.apply(z)

    def forward_label_candidates(self, images: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Output for every image with every one-hot label overlaid, [N*num_classes, out]
        (row n*C + c has label c), at the cost of one matmul per image instead of C."""
        n = images.shape[0]
        passes = [torch.full((n,), c, dtype=torch.long) for c in range(num_classes)]
        z = self.forward_overlaid(blank_labels(images, num_classes), passes, num_classes)   # [C*N, out]
        return z.view(num_classes, n, -1).transpose(0, 1).reshape(n * num_classes, -1)


NORMS = ("length", "batch")


@register_layer("FFConv")
class FFConv(FFLayer):
    """A convolution with 'same' padding (``kernel`` x ``kernel``), ReLU (full-gradient backward),
    then ``pool`` x ``pool`` max-pooling (1: none). ``norm``: ``length`` length-normalises the
    input (over all of a sample's values, as FFDense: the layer sees only its direction);
    ``batch`` puts a BatchNorm after the convolution instead (batch statistics while its
    learner trains it, running statistics otherwise: the learners switch the mode).

    ``depth`` > 1 makes a block (SFF's): ``depth`` such convolutions, each with its norm and a
    plain ReLU, trained together by backprop inside the block against the block's one local
    objective on its (pooled) output; nothing crosses blocks. The last convolution keeps the
    names ``conv``/``norm`` (a depth-1 layer's weights file is unchanged).

    Reads ``(C, H, W)`` activations; as the first layer it reads the label-overlaid image rows
    (one flat row per image, channel-major) as the data's ``(C, H, W)``."""
    shape_args = True

    def __init__(self, in_shape: tuple, channels: int, kernel: int = 3, pool: int = 2, norm: str = "length",
                 bias: bool = True, depth: int = 1):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.out_shape = self.output_shape(self.in_shape, channels, kernel, pool, norm, bias, depth)
        self.out_features = math.prod(self.out_shape)
        widths = [self.in_shape[0]] + [channels] * depth
        self.inner = nn.ModuleList(self._conv(widths[i], channels, kernel, norm, bias) for i in range(depth - 1))
        self.conv, self.norm = self._conv(widths[-2], channels, kernel, norm, bias)
        self.pool, self.normalize = pool, norm == "length"

    @staticmethod
    def _conv(c_in: int, c_out: int, kernel: int, norm: str, bias: bool) -> nn.ModuleList:
        return nn.ModuleList([nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias),
                              nn.BatchNorm2d(c_out) if norm == "batch" else nn.Identity()])

    @classmethod
    def output_shape(cls, in_shape, channels, kernel=3, pool=2, norm="length", bias=True,
                     depth=1) -> tuple[int, int, int]:
        if len(in_shape) != 3:
            raise ValueError(f"needs (C, H, W) activations, got {list(in_shape)}: put FFConv layers before "
                             f"dense ones")
        for name, v in (("channels", channels), ("kernel", kernel), ("pool", pool), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd ('same' padding), got {kernel}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be true or false, got {bias!r}")
        _, h, w = in_shape
        if h < pool or w < pool:
            raise ValueError(f"a {h}x{w} input is smaller than pool {pool}")
        return (channels, h // pool, w // pool)

    @classmethod
    def batch_statistics(cls, *args, **kwargs) -> bool:
        return inspect.signature(cls).bind((1, 1, 1), *args, **kwargs).arguments.get("norm") == "batch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(len(x), *self.in_shape)
        for conv, norm in self.inner:
            x = F.relu(norm(conv(length_normalize(x) if self.normalize else x)))
        z = self.norm(self.conv(length_normalize(x) if self.normalize else x))
        z = _ReLUFullGrad.apply(z)
        return F.max_pool2d(z, self.pool) if self.pool > 1 else z
