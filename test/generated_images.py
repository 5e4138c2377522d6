"""Small generated image folders the tests train on (seconds), in the ImageFolder layout."""
from pathlib import Path

import numpy as np
from PIL import Image


def blobs(root: Path, size=(10, 12), channels=3, classes=4, n=(40, 12), seed=0) -> dict:
    """An image folder where each class is a bright square at its own place (learnable in seconds)."""
    rng = np.random.default_rng(seed)
    h, w = size
    for split, count in zip(("train", "test"), n):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                px = rng.integers(0, 60, (h, w, channels), dtype=np.uint8)
                y, x = (c * 3) % (h - 3), (c * 5) % (w - 3)
                px[y:y + 3, x:x + 3] = 250
                Image.fromarray(px[:, :, 0] if channels == 1 else px, "L" if channels == 1 else "RGB").save(
                    folder / f"{i}.png")
    return {"name": root.name, "format": "image_folder", "path": str(root)}
