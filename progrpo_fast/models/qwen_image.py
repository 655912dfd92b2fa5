"""Qwen-Image (QwenImageTransformer2DModel, flow matching) as a Denoiser.

Latents stay unpacked (B, C, H, W) in the sampler, so pooling and pruning see images; they are
packed into 2x2 patches (B, HW/4, 4C) only for the network, as in the FLUX adapter. Guidance is
Qwen-Image's true CFG: the negative prompt (default " ", the pipeline's usage) runs as its own
forward pass (its Qwen2.5-VL embeddings have their own length and mask), then
    v = v_neg + s (v_pos - v_neg),  and with ``norm_rescale``  v <- v ||v_pos|| / ||v||
per packed token (the norm over its 4C values), exactly as QwenImagePipeline. The VAE is the 3-D
causal Qwen-Image VAE, decoding one frame.
"""
from __future__ import annotations

import torch
from diffusers import QwenImagePipeline

from progrpo_fast.models.base import PackedLatentDenoiser
from progrpo_fast.models.wan import decode_normalized_latents


class QwenImageDenoiser(PackedLatentDenoiser):
    """Wraps a QwenImagePipeline you hold (or ``QwenImageDenoiser.from_pretrained(local_dir)``).

    guidance_scale: the true-CFG scale (the pipeline's ``true_cfg_scale``; <= 1 disables CFG).
    resolution: image side in pixels (None: 1024). max_sequence_length: text tokens kept (<= 1024).
    negative_prompt: the CFG negative. norm_rescale: rescale the guided velocity to the positive
    one's per-token norm (the pipeline always does; False gives plain CFG)."""

    kind = "flow"
    pipeline_class = QwenImagePipeline

    def __init__(self, pipe, guidance_scale: float = 4.0, resolution: int | None = None, max_sequence_length: int = 512,
                 negative_prompt: str = " ", norm_rescale: bool = True):
        self.network = pipe.transformer
        if self.network.config.guidance_embeds:
            raise ValueError("this QwenImage transformer has guidance embeddings (a guidance-distilled variant); QwenImageDenoiser "
                             "drives the published Qwen-Image, which guides by true CFG")
        super().__init__(pipe, guidance_scale)
        if not isinstance(max_sequence_length, int) or not 1 <= max_sequence_length <= 1024:
            raise ValueError(f"max_sequence_length must be an int in [1, 1024] (QwenImagePipeline's limit), got {max_sequence_length!r}")
        self.resolution = resolution or pipe.default_sample_size * pipe.vae_scale_factor
        self.max_sequence_length, self.negative_prompt, self.norm_rescale = max_sequence_length, negative_prompt, bool(norm_rescale)

    @torch.no_grad()
    def encode(self, prompts):
        """prompt_embeds (P, L, D) and, when some prompt is padded, prompt_embeds_mask (P, L);
        under CFG the same for the negative prompt (its own length L')."""

        def embed(texts, prefix):
            embeds, mask = self.pipe.encode_prompt(prompt=texts, device=self.device, max_sequence_length=self.max_sequence_length)
            return {f"{prefix}prompt_embeds": embeds, **({} if mask is None else {f"{prefix}prompt_embeds_mask": mask})}

        cond = embed(prompts, "")
        if self.cfg:
            cond.update(embed([self.negative_prompt] * len(prompts), "negative_"))
        return cond

    def _velocity(self, packed, timestep, cond, prefix: str) -> torch.Tensor:
        side = self.latent_shape()[1] // 2
        return self.network(
            hidden_states=packed, timestep=timestep.expand(packed.shape[0]).to(packed.dtype) / 1000,
            encoder_hidden_states=cond[prefix + "prompt_embeds"], encoder_hidden_states_mask=cond.get(prefix + "prompt_embeds_mask"),
            img_shapes=[[(1, side, side)]] * packed.shape[0], return_dict=False,
        )[0].float()

    def predict(self, latents, timestep, cond):
        batch, channels, height, width = latents.shape
        packed = self.pipe._pack_latents(latents.to(self.dtype), batch, channels, height, width)
        v = self._velocity(packed, timestep, cond, "")
        if self.cfg:
            positive, negative = v, self._velocity(packed, timestep, cond, "negative_")
            v = negative + self.guidance_scale * (positive - negative)
            if self.norm_rescale:
                v = v * (positive.norm(dim=-1, keepdim=True) / v.norm(dim=-1, keepdim=True))
        pixels = self.resolution
        return self.pipe._unpack_latents(v, pixels, pixels, self.pipe.vae_scale_factor)[:, :, 0]

    def decode(self, latents):
        """(B, C, H, W) -> fp32 images (B, 3, H', W') in [0, 1] (the VAE's single frame)."""
        return decode_normalized_latents(self.pipe.vae, latents.unsqueeze(2))[:, :, 0]
