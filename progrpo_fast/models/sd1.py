"""Stable Diffusion 1.x (UNet2DConditionModel, epsilon prediction) with DDIM as a Denoiser."""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from progrpo_fast.models.base import PipelineDenoiser
from progrpo_fast.models.schedules import ddim_alphas


class SD1Denoiser(PipelineDenoiser):
    """Wraps a StableDiffusionPipeline; its scheduler is replaced by a DDIMScheduler of the same
    noise schedule (no sample clipping), as DDPO/DanceGRPO sample."""

    kind = "diffusion"
    pipeline_class = StableDiffusionPipeline

    def __init__(self, pipe, guidance_scale: float = 7.5, resolution: int | None = None):
        self.network = pipe.unet
        super().__init__(pipe, guidance_scale)
        if not isinstance(pipe.scheduler, DDIMScheduler) or pipe.scheduler.config.clip_sample or pipe.scheduler.config.thresholding:
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, thresholding=False)
        self.resolution = resolution or self.network.config.sample_size * pipe.vae_scale_factor

    @torch.no_grad()
    def encode(self, prompts):
        embeds, negative = self.pipe.encode_prompt(prompts, self.device, 1, self.cfg,
                                                   negative_prompt=[""] * len(prompts) if self.cfg else None)
        return {"prompt_embeds": embeds, **({"negative_prompt_embeds": negative} if self.cfg else {})}

    def latent_shape(self):
        side = self.resolution // self.pipe.vae_scale_factor
        return (self.network.config.in_channels, side, side)

    def schedule(self, num_steps):
        alphas, alphas_prev = ddim_alphas(self.pipe.scheduler, num_steps, device=self.device)
        return {"alphas": alphas, "alphas_prev": alphas_prev, "timesteps": self.pipe.scheduler.timesteps.to(self.device)}

    def predict(self, latents, timestep, cond):
        hidden = self.doubled(latents)
        out = self.network(hidden, timestep, encoder_hidden_states=self.pair(cond, "prompt_embeds"), return_dict=False)[0]
        return self.guide(out)
