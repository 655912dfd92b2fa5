"""The model interface the sampler and trainer need: a denoiser with its text conditioning.

Adapters over diffusers pipelines implement it (``progrpo_fast.models.sd3`` etc.). Conditioning is
a dict of tensors whose first dimension is the row (prompt or trajectory), so the sampler can
repeat it per trajectory and compact it in place with the other per-row state; CFG's negative
embeddings are rows of the same dict, which keeps each CFG pair together through pruning.
"""
from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["Denoiser", "decode_rows", "repeat_rows"]


class Denoiser(Protocol):
    kind: str  # "flow" (predicts v = eps - x0, sigma from 1 to 0) or "diffusion" (predicts eps)
    device: torch.device
    dtype: torch.dtype

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per-prompt conditioning, each tensor (P, ...), CFG negatives included."""

    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one latent."""

    def schedule(self, num_steps: int) -> dict[str, torch.Tensor]:
        """Step schedule: "timesteps" (T,) fed to the network, and "sigmas" (T+1,) for flow models
        or "alphas", "alphas_prev" (T,) for diffusion models, fp32 on the device."""

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """fp32 network output (B, C, H, W) for fp32 latents, guidance applied."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, H, W) -> fp32 images (B, 3, H', W') in [0, 1]."""


def decode_rows(model: Denoiser, latents: torch.Tensor, rows: int | None) -> torch.Tensor:
    """model.decode in calls of at most ``rows`` latents (None: one call): the same images,
    with the decoder's activation memory capped (sampler.forward_rows)."""
    if rows is None or latents.shape[0] <= rows:
        return model.decode(latents)
    return torch.cat([model.decode(latents[start : start + rows]) for start in range(0, latents.shape[0], rows)])


def repeat_rows(cond: dict[str, torch.Tensor], repeats: int) -> dict[str, torch.Tensor]:
    """Per-prompt conditioning -> per-trajectory rows (each prompt's rows consecutive)."""
    return {name: value.repeat_interleave(repeats, 0) for name, value in cond.items()}
