"""Augmentation of training images, drawn anew for every chapter: random shifts (a crop of the
image padded by ``crop`` zero pixels on each side) and horizontal mirroring.

Every schedule (the reference trainer, the DFF master, a PFF node) draws the same copy for a
chapter: the draws depend only on the seed and the chapter's number."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def augmented(images: torch.Tensor, shape: tuple[int, int, int], crop: int, flip: bool,
              generator: torch.Generator) -> torch.Tensor:
    """A shifted and mirrored copy of flat image rows [N, C*H*W] (any dtype) of ``shape`` (C, H, W)."""
    n = len(images)
    x = images.reshape(n, *shape)
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mirror.view(n, 1, 1, 1), x.flip(3), x)
    if crop:
        _, h, w = shape
        padded = F.pad(x, (crop, crop, crop, crop))
        offsets = torch.randint(0, 2 * crop + 1, (n, 2), generator=generator)
        out = torch.empty_like(x)
        for dy in range(2 * crop + 1):       # one slice per offset: (2 crop + 1)^2 copies, not N
            for dx in range(2 * crop + 1):
                rows = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().view(-1)
                if len(rows):
                    out[rows] = padded[rows, :, dy:dy + h, dx:dx + w]
        x = out
    return x.reshape(n, -1)


def chapter_images(images: torch.Tensor, config, chapter: int) -> torch.Tensor:
    """The training images of ``chapter`` for a ModelConfig: augmented as its train section
    says (``augment_crop``, ``augment_flip``), else ``images`` themselves."""
    t = config.train
    if not t.augment_crop and not t.augment_flip:
        return images
    generator = torch.Generator().manual_seed((t.seed * 1_000_003 + 777_767) * 100_003 + chapter)
    return augmented(images, config.data.image_shape, t.augment_crop, t.augment_flip, generator)
