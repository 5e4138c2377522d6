"""torch.Tensor <-> dff_ros/Tensor with raw bytes in uint8[].

Filling uint8[] from an ``array.array('B')`` skips rosidl's per-element checks, and a received
uint8[] field arrives as ``array.array('B')``, which ``torch.frombuffer`` wraps without a copy.
The nodes' data path skips rosidl altogether (``dff_ros.wire.cdr``): there a Tensor is a
``Blank`` whose ``data`` is a view of the tensor going out, or of the bytes that came in.
"""
from __future__ import annotations

import array
import warnings

import torch

from dff_ros.msg import Tensor
from dff_ros.wire.cdr import Blank

# A tensor read from received CDR bytes views them read-only. Those bytes belong to that one
# message, so nothing else sees a write; torch's warning about it would only be noise.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)

DTYPES = {name: getattr(torch, name) for name in
          ("float32", "float64", "float16", "bfloat16", "uint8", "int8", "int16", "int32", "int64", "bool")}
MAX_DIMS = 8
MAX_EXTENT = 2 ** 48   # product of the dimensions, zeros counted as 1: torch's strides must fit int64


class TensorDecodeError(ValueError):
    """A tensor message that does not describe a tensor (dropped by the receiver)."""


def to_msg(t: torch.Tensor | None, msg: Tensor | None = None) -> Tensor:
    """Fill (or create) a Tensor message; ``None`` gives the empty (absent) tensor."""
    msg = msg if msg is not None else Tensor()
    if t is None:
        return msg
    t = t.detach().contiguous()
    name = str(t.dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise TypeError(f"dtype {t.dtype} cannot be sent")
    msg.dtype = name
    if isinstance(msg, Blank):   # no copy: cdr.serialize copies the view into the message bytes
        msg.shape = list(t.shape)
        msg.data = memoryview(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
        return msg
    msg.shape = array.array("I", t.shape)
    raw = array.array("B")
    # one copy: tensor memory -> array (bfloat16 has no numpy twin, so view it as bytes in torch)
    raw.frombytes(t.reshape(-1).view(torch.uint8).numpy() if t.element_size() and t.numel() else b"")
    msg.data = raw
    return msg


def from_msg(msg: Tensor, *, expect_dtype: torch.dtype | None = None, name: str = "tensor") -> torch.Tensor | None:
    """Tensor sharing the message's memory, or None when absent. Raises TensorDecodeError."""
    if not msg.dtype:
        if len(msg.data) or len(msg.shape):
            raise TensorDecodeError(f"{name}: data without a dtype")
        return None
    dtype = DTYPES.get(msg.dtype)
    if dtype is None:
        raise TensorDecodeError(f"{name}: unknown dtype {msg.dtype!r}")
    if expect_dtype is not None and dtype != expect_dtype:
        raise TensorDecodeError(f"{name}: dtype {msg.dtype}, expected {str(expect_dtype).removeprefix('torch.')}")
    shape = tuple(int(s) for s in msg.shape)
    if len(shape) > MAX_DIMS:
        raise TensorDecodeError(f"{name}: {len(shape)} dimensions (at most {MAX_DIMS})")
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel, extent = 1, 1
    for s in shape:
        numel, extent = numel * s, extent * max(s, 1)
    if extent > MAX_EXTENT:   # e.g. [0, 2^32-1, 2^32-1]: no bytes, but strides that overflow
        raise TensorDecodeError(f"{name}: shape {list(shape)} is too large for any tensor")
    if numel * itemsize != len(msg.data):
        raise TensorDecodeError(f"{name}: shape {list(shape)} of {msg.dtype} needs {numel * itemsize} bytes, "
                                f"got {len(msg.data)}")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    t = torch.frombuffer(msg.data, dtype=dtype).view(shape)
    # CDR aligns a uint8[] to nothing: an 8-byte dtype may start off its alignment (labels, small)
    return t if t.data_ptr() % itemsize == 0 else t.clone()


def _is_tensor(v) -> bool:
    return isinstance(v, Tensor) or (isinstance(v, Blank) and hasattr(v, "dtype") and hasattr(v, "data"))


def nbytes(msg) -> int:
    """Payload bytes of the Tensor fields of a message or its ``Blank`` (for bandwidth accounting)."""
    fields = (vars(msg).values() if isinstance(msg, Blank)
              else [getattr(msg, f) for f in msg.get_fields_and_field_types()])
    total = 0
    for v in fields:
        if _is_tensor(v):
            total += len(v.data)
        elif isinstance(v, list) and v and _is_tensor(v[0]):
            total += sum(len(t.data) for t in v)
    return total
