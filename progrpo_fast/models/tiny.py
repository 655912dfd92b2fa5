"""Tiny random-weight diffusers pipelines (SD3, FLUX, SD1.x) built from configs, for tests and
for timing code paths without downloads. A word-level tokenizer stands in for CLIP's and T5's."""
from __future__ import annotations

import torch

WORDS = "a an the red green blue yellow circle circles square squares triangle triangles one two three left right of above below photo cat dog".split()


SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


def word_level_tokenizer(tokens=(*SPECIALS, *WORDS), max_length: int = 12):
    """A transformers PreTrainedTokenizerFast whose ids are the positions in ``tokens`` (which
    holds <pad>, <unk>, <bos>, <eos> and the words): lower-cased, whitespace split, ``<bos> ... <eos>``
    added, right-padded with <pad>, other words mapped to <unk>; the call and batch_decode API the
    stock diffusers pipelines use."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pad, unk, bos, eos = SPECIALS
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    missing = [s for s in SPECIALS if s not in vocab]
    if missing:
        raise ValueError(f"tokens must include the special tokens {SPECIALS}; missing {missing}")
    core = Tokenizer(WordLevel(vocab, unk_token=unk))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=pad, unk_token=unk, bos_token=bos, eos_token=eos,
                                   model_max_length=max_length)


def clip_text_encoder(tokenizer, hidden: int = 32, projection: int | None = 16, layers: int = 2, seed: int = 0):
    """A tiny CLIPTextModel (projection None) or CLIPTextModelWithProjection whose pooled output
    reads the <eos> position."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                            num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=projection or hidden,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def tiny_vae(latent_channels: int = 4, seed: int = 0, shift_factor: float | None = None):
    """AutoencoderKL 16 px -> 8 px (vae_scale_factor 2)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         block_out_channels=(8, 16), layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4, sample_size=16,
                         scaling_factor=0.5, shift_factor=shift_factor).eval()


def tiny_sd3_pipeline(seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = word_level_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=32,
                                        pos_embed_max_size=8).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(seed=seed, shift_factor=0.1),
        text_encoder=clip_text_encoder(tokenizer, seed=seed), tokenizer=tokenizer,
        text_encoder_2=clip_text_encoder(tokenizer, seed=seed + 1), tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None,
    )


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = word_level_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                         guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4)).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256)
    return FluxPipeline(scheduler=scheduler, vae=tiny_vae(seed=seed, shift_factor=0.1), text_encoder=clip_text_encoder(tokenizer, projection=None, seed=seed),
                        tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer, transformer=transformer)


def tiny_sd1_pipeline(seed: int = 0):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = word_level_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=tiny_vae(seed=seed), text_encoder=clip_text_encoder(tokenizer, projection=None, seed=seed), tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def sd35_medium_sized_pipeline(seed: int = 0, device="cpu", num_layers: int = 24, num_attention_heads: int = 24,
                               dual_attention_layers: tuple[int, ...] = tuple(range(13))):
    """A random-weight StableDiffusion3Pipeline at SD3.5-Medium's size, for timing (weights do not
    change the time): the published transformer config (24 MMDiT-X blocks, 24 heads x 64, dual
    attention in blocks 0-12, 2.2e9 parameters) and SD3's VAE (16 latent channels, 8x down); the
    text side keeps the token count and widths (CLIP-L 768 and CLIP-G 1280 over 77 tokens, T5's
    4096-wide tokens as zeros) with one layer per CLIP encoder, since text encoding runs once per prompt.
    num_layers / num_attention_heads (x 64 wide) / dual_attention_layers give smaller transformers
    of the same family (e.g. 8 blocks of width 768 with no dual attention)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = word_level_tokenizer(max_length=77)
    torch.manual_seed(seed)
    with torch.device(device):
        transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=num_layers,
                                            attention_head_dim=64, num_attention_heads=num_attention_heads, joint_attention_dim=4096,
                                            caption_projection_dim=64 * num_attention_heads, pooled_projection_dim=2048, pos_embed_max_size=384,
                                            dual_attention_layers=tuple(dual_attention_layers), qk_norm="rms_norm").eval()
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=1024,
                            scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False).eval()
        clip_l = clip_text_encoder(tokenizer, hidden=768, projection=768, layers=1, seed=seed)
        clip_g = clip_text_encoder(tokenizer, hidden=1280, projection=1280, layers=1, seed=seed + 1)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=clip_l,
                                    tokenizer=tokenizer, text_encoder_2=clip_g, tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
