"""FLUX.1 (FluxTransformer2DModel, flow matching) as a Denoiser.

Latents stay unpacked (B, C, H, W) in the sampler, so pooling and pruning see images; they are
packed into 2x2 patches only for the network. ``guidance_scale`` is FLUX-dev's distilled guidance
(fed to the network when it has guidance embeddings); ``true_cfg_scale`` > 1 adds classic CFG with
the empty negative prompt."""
from __future__ import annotations

import torch
from diffusers import FluxPipeline

from progrpo_fast.models.base import PackedLatentDenoiser


class FluxDenoiser(PackedLatentDenoiser):
    kind = "flow"
    pipeline_class = FluxPipeline

    def __init__(self, pipe, guidance_scale: float = 3.5, true_cfg_scale: float = 1.0, resolution: int | None = None,
                 max_sequence_length: int = 512):
        self.network = pipe.transformer
        super().__init__(pipe, true_cfg_scale)
        self.distilled_guidance = float(guidance_scale)
        self.resolution = resolution or pipe.default_sample_size * pipe.vae_scale_factor
        self.max_sequence_length = max_sequence_length
        side = self.latent_shape()[1]
        self.image_ids = pipe._prepare_latent_image_ids(1, side // 2, side // 2, self.device, self.dtype)

    @torch.no_grad()
    def encode(self, prompts):
        def embed(texts):
            embeds, pooled, _ = self.pipe.encode_prompt(prompt=texts, prompt_2=None, device=self.device,
                                                        max_sequence_length=self.max_sequence_length)
            return embeds, pooled

        embeds, pooled = embed(prompts)
        cond = {"prompt_embeds": embeds, "pooled_projections": pooled}
        if self.cfg:
            negative, negative_pooled = embed([""] * len(prompts))
            cond.update(negative_prompt_embeds=negative, negative_pooled_projections=negative_pooled)
        return cond

    def predict(self, latents, timestep, cond):
        batch, channels, height, width = latents.shape
        hidden = self.pipe._pack_latents(self.doubled(latents), batch * (2 if self.cfg else 1), channels, height, width)
        guidance = None
        if self.network.config.guidance_embeds:
            guidance = torch.full((hidden.shape[0],), self.distilled_guidance, device=self.device, dtype=torch.float32)
        embeds = self.pair(cond, "prompt_embeds")
        out = self.network(
            hidden_states=hidden, timestep=(timestep / 1000).expand(hidden.shape[0]), guidance=guidance,
            pooled_projections=self.pair(cond, "pooled_projections"), encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype), img_ids=self.image_ids,
            return_dict=False,
        )[0]
        pixels = height * self.pipe.vae_scale_factor
        return self.guide(self.pipe._unpack_latents(out, pixels, width * self.pipe.vae_scale_factor, self.pipe.vae_scale_factor))
