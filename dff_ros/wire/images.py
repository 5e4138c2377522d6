"""sensor_msgs/Image <-> the model's input: a float32 row of C*H*W values in [0, 1] (channel-major,
RGB order for colour models; what dff_ros.data hands the trainer).

Works on any object with the Image fields (height, width, encoding, is_bigendian, step, data),
so it is tested without ROS. Images the model cannot take raise ImageError saying why. An image
of another size is refused unless the caller asks for ``fit="resize"`` (scaled, aspect ratio not
kept) or ``fit="crop"`` (the centre cut to the model's aspect ratio, then scaled): a wrongly
fitted camera frame would be classified with confidence, so nothing is fitted by default.
"""
from __future__ import annotations

import numpy as np
import torch

# encoding -> (channels, numpy dtype, scale to [0, 1])
ENCODINGS = {
    "mono8": (1, np.uint8, 255.0), "8UC1": (1, np.uint8, 255.0),
    "mono16": (1, np.uint16, 65535.0), "16UC1": (1, np.uint16, 65535.0),
    "32FC1": (1, np.float32, 1.0),
    "rgb8": (3, np.uint8, 255.0), "bgr8": (3, np.uint8, 255.0),
    "rgba8": (4, np.uint8, 255.0), "bgra8": (4, np.uint8, 255.0),
}
LUMA = {"rgb": (0.299, 0.587, 0.114), "bgr": (0.114, 0.587, 0.299)}   # ITU-R BT.601


class ImageError(ValueError):
    """An image the model cannot classify; the message says what is wrong."""


FITS = ("refuse", "resize", "crop")


def image_to_row(msg, shape: tuple[int, int, int], fit: str = "refuse") -> torch.Tensor:
    """[C*H*W] float32 in [0, 1] for a model of images ``shape`` = (C, H, W): a grey model takes
    colour images as grey (BT.601 luma); a colour model takes rgb8/bgr8/rgba8/bgra8 only.
    ``fit``: what to do with another size (see the module's doc)."""
    model_channels, want_h, want_w = shape
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if model_channels not in (1, 3):
        raise ImageError(f"the model takes {model_channels}-channel images; only 1 (grey) or 3 (RGB) come from "
                         "sensor_msgs/Image")
    if msg.encoding not in ENCODINGS:
        raise ImageError(f"encoding {msg.encoding!r} is not supported (use one of {', '.join(ENCODINGS)})")
    height, width = msg.height, msg.width
    if (height, width) != (want_h, want_w) and fit == "refuse":
        raise ImageError(f"image is {height}x{width} (HxW), the model takes {want_h}x{want_w}: resize or crop "
                         "it before publishing, or start the classifier with fit:=resize or fit:=crop")
    if height == 0 or width == 0:
        raise ImageError(f"image is {height}x{width} (HxW): empty")
    channels, dtype, scale = ENCODINGS[msg.encoding]
    if model_channels == 3 and channels == 1:
        raise ImageError(f"{msg.encoding} is grey, the model takes colour images (rgb8, bgr8, rgba8, bgra8)")
    item = np.dtype(dtype).itemsize
    row_bytes = width * channels * item
    if msg.step < row_bytes:
        raise ImageError(f"step {msg.step} is shorter than a row of {row_bytes} bytes")
    data = bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray, memoryview, np.ndarray)) else msg.data
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size < msg.step * height:
        raise ImageError(f"{buf.size} data bytes for {height} rows of step {msg.step}")
    rows = buf[:msg.step * height].reshape(height, msg.step)[:, :row_bytes]
    order = ">" if msg.is_bigendian else "<"
    pixels = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order) if item > 1 else dtype)
    pixels = pixels.reshape(height, width, channels).astype(np.float32) / scale
    if model_channels == 3:
        rgb = pixels[:, :, :3] if msg.encoding.startswith("rgb") else pixels[:, :, 2::-1]
        pixels = rgb.transpose(2, 0, 1)   # channel-major, as the data's rows
    elif channels > 1:
        weights = np.asarray(LUMA[msg.encoding[:3]], dtype=np.float32)
        pixels = pixels[:, :, :3] @ weights
    out = torch.from_numpy(np.ascontiguousarray(pixels))
    if not torch.isfinite(out).all():
        raise ImageError("image holds NaN or infinite values")
    if (height, width) != (want_h, want_w):
        out = _fitted(out.reshape(-1, height, width), want_h, want_w, fit)
    return out.reshape(-1).clamp_(0.0, 1.0)


def _fitted(image: torch.Tensor, h: int, w: int, fit: str) -> torch.Tensor:
    """[C, H0, W0] -> [C, h, w]: scaled (antialiased bilinear), after a centre crop to h:w for "crop"."""
    if fit == "crop":
        _, h0, w0 = image.shape
        ch, cw = min(h0, round(w0 * h / w)), min(w0, round(h0 * w / h))
        top, left = (h0 - ch) // 2, (w0 - cw) // 2
        image = image[:, top:top + ch, left:left + cw]
    return torch.nn.functional.interpolate(image.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False,
                                           antialias=True).squeeze(0)


def row_to_image(row: torch.Tensor, shape: tuple[int, int, int]) -> tuple[str, bytes, int]:
    """A [C*H*W] row in [0, 1] as (encoding, bytes, step): mono8 for one channel, rgb8 for three
    (what a camera driver would send)."""
    c, h, w = shape
    pixels = (row.reshape(c, h, w) * 255.0).round().clamp(0, 255).to(torch.uint8)
    if c == 1:
        return "mono8", pixels.numpy().tobytes(), w
    return "rgb8", pixels.permute(1, 2, 0).contiguous().numpy().tobytes(), 3 * w
