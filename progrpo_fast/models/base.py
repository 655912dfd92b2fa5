"""The shared part of the diffusers adapters (``progrpo_fast.models.sd3`` etc.), which implement
``progrpo_fast.sampling.denoiser.Denoiser``: the pipeline, CFG, VAE decoding and the packed-latent
schedule of FLUX / Qwen-Image."""
from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from progrpo_fast.models.pipeline_folder import read_model_index
from progrpo_fast.models.schedules import flow_sigmas


class PipelineDenoiser:
    """Shared part of the diffusers adapters: holds the pipeline, its device and dtype, the
    guidance scale, and decodes latents with the pipeline's VAE."""

    pipeline_class = None  # the diffusers pipeline class an adapter wraps

    def __init__(self, pipe, guidance_scale: float):
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a float >= 0 (<= 1 disables CFG), got {guidance_scale!r}")
        self.pipe = pipe
        self.guidance_scale = float(guidance_scale)
        self.device = pipe._execution_device
        self.dtype = self.network.dtype

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1

    @classmethod
    def from_pretrained(cls, path, *, device="cpu", dtype=torch.float32, **adapter_kwargs):
        """Loads the pipeline from a local diffusers folder (model_index.json + parts)."""
        index = read_model_index(path)
        absent = {name: None for name, value in index.items() if isinstance(value, list) and value[0] is None}  # e.g. SD3 without T5
        pipe = cls.pipeline_class.from_pretrained(str(path), dtype=dtype, local_files_only=True, **absent)
        return cls(pipe.to(device), **adapter_kwargs)

    def guide(self, output: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance on a [negative; positive] batch: u + g (c - u), in fp32."""
        output = output.float()
        if not self.cfg:
            return output
        uncond, cond = output.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)

    def doubled(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.dtype)
        return torch.cat([latents, latents]) if self.cfg else latents

    def pair(self, cond: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        """The network's batch of conditioning ``name``: [negative; positive] under CFG."""
        return torch.cat([cond["negative_" + name], cond[name]]) if self.cfg else cond[name]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        scaled = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
        images = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)


class PackedLatentDenoiser(PipelineDenoiser):
    """FLUX / Qwen-Image: square latents (B, C, H, W) that the network sees packed into 2x2
    patches ((H/2)(W/2) tokens of 4C channels), sampled on their pipelines' schedule: sigmas
    linspace(1, 1/T, T) time-shifted by mu = calculate_shift(tokens) (dynamic shifting).
    Subclasses set ``self.resolution`` (pixels)."""

    def latent_shape(self):
        side = 2 * (self.resolution // (self.pipe.vae_scale_factor * 2))
        return (self.network.config.in_channels // 4, side, side)

    def schedule(self, num_steps):
        tokens = (self.latent_shape()[1] // 2) ** 2
        config = self.pipe.scheduler.config
        mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        sigmas = flow_sigmas(self.pipe.scheduler, num_steps, device=self.device, sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
        return {"sigmas": sigmas, "timesteps": self.pipe.scheduler.timesteps.to(self.device)}
