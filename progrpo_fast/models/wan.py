"""Wan2.1 / Wan2.2 text-to-video (WanTransformer3DModel, flow matching) as a Denoiser.

Latents are videos (B, C, F, H, W): F = (frames - 1) / 4 + 1 latent frames of the 3-D causal
Wan VAE (temporal compression 4, so frames = 4k + 1), H and W the pixel size over its spatial
compression. Conditioning is UMT5 text padded to ``max_sequence_length``; CFG pairs the empty (or
given) negative prompt with each prompt in one [negative; positive] network batch, as the stock
pipeline's two calls compute. Wan2.2-TI2V-5B's per-token timesteps (``expand_timesteps``) are
fed as the pipeline does; the two-expert Wan2.2-A14B (``transformer_2``) is refused, since the
trainer trains one network.
"""
from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

from progrpo_fast.models.base import PipelineDenoiser
from progrpo_fast.models.schedules import flow_sigmas


def flow_match_euler(scheduler) -> FlowMatchEulerDiscreteScheduler:
    """``scheduler`` when it is a FlowMatchEulerDiscreteScheduler, else one of the same flow
    (Wan ships UniPC with ``flow_shift``: the Euler scheduler with shift = flow_shift)."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return scheduler
    config = scheduler.config
    if not config.get("use_flow_sigmas", False) and "flow_shift" not in config:
        raise ValueError(f"{type(scheduler).__name__} is not a flow-matching scheduler (no use_flow_sigmas / flow_shift); "
                         "load the pipeline with a FlowMatchEulerDiscreteScheduler")
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.get("num_train_timesteps", 1000),
                                           shift=config.get("flow_shift") or 1.0)


@torch.no_grad()
def decode_normalized_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Video latents (B, C, F, H, W) of a Wan / Qwen-Image VAE (normalised per channel:
    z = (x - latents_mean) / latents_std) -> fp32 videos (B, 3, F', H', W') in [0, 1]."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=latents.device, dtype=torch.float32).view(shape)
    std = torch.tensor(vae.config.latents_std, device=latents.device, dtype=torch.float32).view(shape)
    video = vae.decode((latents.float() * std + mean).to(vae.dtype), return_dict=False)[0]
    return (video.float() / 2 + 0.5).clamp(0, 1)


class WanDenoiser(PipelineDenoiser):
    """Wraps a WanPipeline you hold (or ``WanDenoiser.from_pretrained(local_dir)``).

    guidance_scale: CFG scale (Wan's default 5.0; <= 1 disables CFG). num_frames: pixel frames,
    4k + 1. height, width: pixels (None: 480 x 832, the pipeline's default), multiples of the VAE's
    spatial compression times the patch size. max_sequence_length: UMT5 tokens (Wan: 512).
    negative_prompt: the CFG negative (the pipeline's default: empty)."""

    kind = "flow"
    pipeline_class = WanPipeline

    def __init__(self, pipe, guidance_scale: float = 5.0, num_frames: int = 81, height: int | None = None, width: int | None = None,
                 max_sequence_length: int = 512, negative_prompt: str = ""):
        if pipe.transformer is None or getattr(pipe, "transformer_2", None) is not None:
            raise ValueError("WanDenoiser trains one network: pass a single-transformer WanPipeline (Wan2.1, Wan2.2-TI2V-5B); "
                             "the two-expert Wan2.2-A14B (transformer_2) is not supported")
        self.network = pipe.transformer
        super().__init__(pipe, guidance_scale)
        pipe.scheduler = flow_match_euler(pipe.scheduler)
        temporal, spatial = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % temporal:
            raise ValueError(f"num_frames must be {temporal}k + 1 (the Wan VAE compresses time {temporal}x, causally), got {num_frames!r}")
        _, patch_h, patch_w = self.network.config.patch_size
        self.height, self.width = height or 480, width or 832
        for name, value, patch in (("height", self.height, patch_h), ("width", self.width, patch_w)):
            if value % (spatial * patch):
                raise ValueError(f"{name} must be a multiple of {spatial * patch} (VAE compression {spatial} x patch {patch}), got {value}")
        self.num_frames, self.max_sequence_length, self.negative_prompt = num_frames, max_sequence_length, negative_prompt

    @torch.no_grad()
    def encode(self, prompts):
        embeds, negative = self.pipe.encode_prompt(
            prompt=prompts, negative_prompt=[self.negative_prompt] * len(prompts) if self.cfg else None,
            do_classifier_free_guidance=self.cfg, max_sequence_length=self.max_sequence_length, device=self.device,
        )
        cond = {"prompt_embeds": embeds.to(self.dtype)}
        if self.cfg:
            cond["negative_prompt_embeds"] = negative.to(self.dtype)
        return cond

    def latent_shape(self):
        pipe = self.pipe
        frames = (self.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        spatial = pipe.vae_scale_factor_spatial
        return (self.network.config.in_channels, frames, self.height // spatial, self.width // spatial)

    def schedule(self, num_steps):
        sigmas = flow_sigmas(self.pipe.scheduler, num_steps, device=self.device)
        return {"sigmas": sigmas, "timesteps": self.pipe.scheduler.timesteps.to(self.device)}

    def predict(self, latents, timestep, cond):
        hidden = self.doubled(latents)
        if self.pipe.config.expand_timesteps:  # Wan2.2-TI2V: one timestep per patch token
            patch_t, patch_h, patch_w = self.network.config.patch_size
            tokens = (latents.shape[2] // patch_t) * (latents.shape[3] // patch_h) * (latents.shape[4] // patch_w)
            timesteps = timestep.expand(hidden.shape[0], tokens)
        else:
            timesteps = timestep.expand(hidden.shape[0])
        out = self.network(hidden_states=hidden, timestep=timesteps, encoder_hidden_states=self.pair(cond, "prompt_embeds"),
                           return_dict=False)[0]
        return self.guide(out)

    def decode(self, latents):
        """(B, C, F, H, W) -> fp32 videos (B, 3, frames, height, width) in [0, 1]."""
        return decode_normalized_latents(self.pipe.vae, latents)
