"""DDPO's JPEG compressibility rewards (weight-free).

Each image is quantised as uint8 = round(255 * x), encoded as a JPEG at quality 95 by PIL, and
    size_kB = encoded bytes / 1000
    compressibility   = -size_kB
    incompressibility = +size_kB
"""
from __future__ import annotations

import io

import torch
from PIL import Image

from .base import Reward


def jpeg_sizes_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B,) float32 JPEG sizes in kB (1 kB = 1000 bytes), on the CPU."""
    pixels = (images.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegCompressibility(Reward):
    """-size_kB of the quality-95 JPEG: smaller files score higher."""

    name = "jpeg_compressibility"
    sign = -1.0

    def __init__(self, quality: int = 95):
        if not isinstance(quality, int) or not 1 <= quality <= 95:
            raise ValueError(f"quality must be an int in [1, 95], got {quality!r}")
        self.quality = quality

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.sign * jpeg_sizes_kb(images, self.quality)


class JpegIncompressibility(JpegCompressibility):
    """+size_kB of the quality-95 JPEG: larger files score higher."""

    name = "jpeg_incompressibility"
    sign = 1.0
