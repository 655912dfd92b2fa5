"""Stable Diffusion 3 / 3.5 (SD3Transformer2DModel, flow matching) as a Denoiser."""
from __future__ import annotations

import torch
from diffusers import StableDiffusion3Pipeline

from progrpo_fast.models.base import PipelineDenoiser
from progrpo_fast.models.schedules import flow_sigmas


class SD3Denoiser(PipelineDenoiser):
    """Wraps a StableDiffusion3Pipeline you hold (or ``SD3Denoiser.from_pretrained(local_dir)``).
    resolution: image side in pixels; max_sequence_length: T5 tokens (fewer is faster)."""

    kind = "flow"
    pipeline_class = StableDiffusion3Pipeline

    def __init__(self, pipe, guidance_scale: float = 4.5, resolution: int | None = None, max_sequence_length: int = 256):
        self.network = pipe.transformer
        super().__init__(pipe, guidance_scale)
        self.resolution = resolution or pipe.default_sample_size * pipe.vae_scale_factor
        self.max_sequence_length = max_sequence_length

    @torch.no_grad()
    def encode(self, prompts):
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=self.cfg,
            negative_prompt=[""] * len(prompts) if self.cfg else None, max_sequence_length=self.max_sequence_length,
        )
        cond = {"prompt_embeds": embeds, "pooled_projections": pooled}
        if self.cfg:
            cond.update(negative_prompt_embeds=negative, negative_pooled_projections=negative_pooled)
        return cond

    def latent_shape(self):
        side = self.resolution // self.pipe.vae_scale_factor
        return (self.network.config.in_channels, side, side)

    def schedule(self, num_steps):
        sigmas = flow_sigmas(self.pipe.scheduler, num_steps, device=self.device)
        return {"sigmas": sigmas, "timesteps": self.pipe.scheduler.timesteps.to(self.device)}

    def predict(self, latents, timestep, cond):
        hidden = self.doubled(latents)
        out = self.network(
            hidden_states=hidden, timestep=timestep.expand(hidden.shape[0]), encoder_hidden_states=self.pair(cond, "prompt_embeds"),
            pooled_projections=self.pair(cond, "pooled_projections"), return_dict=False,
        )[0]
        return self.guide(out)
