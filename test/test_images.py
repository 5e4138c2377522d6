"""sensor_msgs/Image decoding for the classifier node (pure: any object with the Image fields)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dff_ros.wire.images import ImageError, image_to_row, row_to_image

G28 = (1, 28, 28)   # a grey 28x28 model


def image(pixels: np.ndarray, encoding: str, *, step=None, bigendian=False, data=None):
    h, w = pixels.shape[:2]
    raw = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<")).tobytes()
    row = len(raw) // h
    if step is not None and step > row:   # padded rows, as some drivers send
        raw = b"".join(raw[r * row:(r + 1) * row] + b"\0" * (step - row) for r in range(h))
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                           step=step or row, data=raw if data is None else data)


def test_mono8_round_trip_and_padded_rows():
    row = torch.rand(28 * 28)
    encoding, data, step = row_to_image(row, G28)
    assert encoding == "mono8"
    got = image_to_row(SimpleNamespace(height=28, width=28, encoding="mono8", is_bigendian=0, step=step,
                                       data=data), G28)
    assert got.shape == (784,) and got.dtype == torch.float32
    assert torch.allclose(got, row, atol=0.5 / 255 + 1e-6)
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    padded = image_to_row(image(pixels, "mono8", step=32), G28)
    assert torch.equal(padded, torch.from_numpy(pixels.reshape(-1).astype(np.float32) / 255))


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_and_float_and_colour(bigendian):
    grey = np.random.default_rng(0).random((28, 28)).astype(np.float32)
    mono16 = image_to_row(image((grey * 65535).round().astype(np.uint16), "mono16", bigendian=bigendian), G28)
    assert torch.allclose(mono16, torch.from_numpy(grey.reshape(-1)), atol=1e-4)
    assert torch.allclose(image_to_row(image(grey, "32FC1"), G28), torch.from_numpy(grey.reshape(-1)))
    rgb = np.stack([grey * 255] * 3, axis=2).round().astype(np.uint8)   # grey in colour: luma = grey
    for enc in ("rgb8", "bgr8"):
        assert torch.allclose(image_to_row(image(rgb, enc), G28), torch.from_numpy(grey.reshape(-1)), atol=0.01)


@pytest.mark.parametrize("what, msg, words", [
    ("wrong size", image(np.zeros((32, 32), np.uint8), "mono8"), "32x32 (HxW), the model takes 28x28: resize or crop"),
    ("unknown encoding", image(np.zeros((28, 28), np.uint8), "yuv422"), "encoding 'yuv422' is not supported"),
    ("short data", image(np.zeros((28, 28), np.uint8), "mono8", data=b"\0" * 100), "100 data bytes"),
    ("step too short", image(np.zeros((28, 28), np.uint8), "mono8", step=10), "step 10 is shorter"),
    ("NaN pixels", image(np.full((28, 28), np.nan, np.float32), "32FC1"), "NaN"),
])
def test_images_the_model_cannot_take_are_named(what, msg, words):
    with pytest.raises(ImageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        image_to_row(msg, G28)


def test_colour_models_take_rgb_and_bgr_channel_major_and_refuse_grey():
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    want = torch.from_numpy(rgb.transpose(2, 0, 1).reshape(-1).astype(np.float32) / 255)
    assert torch.equal(image_to_row(image(rgb, "rgb8"), (3, 5, 7)), want)
    assert torch.equal(image_to_row(image(rgb[:, :, ::-1].copy(), "bgr8"), (3, 5, 7)), want)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 9, np.uint8)], axis=2)
    assert torch.equal(image_to_row(image(rgba, "rgba8"), (3, 5, 7)), want)
    encoding, data, step = row_to_image(want, (3, 5, 7))
    assert encoding == "rgb8" and step == 21 and data == rgb.tobytes()
    with pytest.raises(ImageError, match="mono8 is grey, the model takes colour"):
        image_to_row(image(rgb[:, :, 0].copy(), "mono8"), (3, 5, 7))


def test_other_sizes_are_resized_or_cropped_only_when_asked():
    big = np.zeros((40, 80), np.uint8)
    big[:, 20:60] = 255                              # a white centre square, black bands left and right
    with pytest.raises(ImageError, match="fit:=resize or fit:=crop"):
        image_to_row(image(big, "mono8"), (1, 20, 20))
    cropped = image_to_row(image(big, "mono8"), (1, 20, 20), "crop")      # the centre 40x40: all white
    assert cropped.shape == (400,) and torch.allclose(cropped, torch.ones(400))
    resized = image_to_row(image(big, "mono8"), (1, 20, 20), "resize").view(20, 20)   # squeezed: bands stay
    assert float(resized[:, 0].max()) < 0.05 and float(resized[:, 10].min()) > 0.95
    rgb = np.random.default_rng(2).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    same = image_to_row(image(rgb, "rgb8"), (3, 12, 12), "resize")   # the model's size: untouched
    assert torch.equal(same, image_to_row(image(rgb, "rgb8"), (3, 12, 12)))
    assert image_to_row(image(rgb, "rgb8"), (3, 6, 6), "resize").shape == (3 * 36,)


def test_live_score_counts_accuracy_latency_and_refusals():
    from dff_ros.nodes.image_demo import LiveScore

    s = LiveScore()
    for i, label in enumerate([3, 1, 4, 1]):
        s.note_sent(f"f{i}", label, at=10.0 + i)
    assert s.note_prediction("f0", 3, at=10.5) and s.note_prediction("f1", 7, at=11.1)
    assert s.note_prediction("f2", -1, at=12.2)
    assert not s.note_prediction("f0", 3, at=13.0) and not s.note_prediction("other", 1, at=13.0)
    out = s.summary()
    assert out["answered"] == 3 and out["unanswered"] == 1 and out["refused"] == 1
    assert out["accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert out["latency_ms"]["p50"] == pytest.approx(200.0) and out["latency_ms"]["max"] == pytest.approx(500.0)
