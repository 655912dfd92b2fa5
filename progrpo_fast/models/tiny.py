"""Tiny random-weight diffusers pipelines (SD3, FLUX, SD1.x, Qwen-Image, Wan) built from configs,
for tests and for timing code paths without downloads, and random-weight pipelines at published
sizes (SD3.5-Medium, Qwen-Image, Wan2.1-T2V-1.3B) for GPU throughput. Word-level tokenizers stand in
for CLIP's, T5's, UMT5's and Qwen2's."""
from __future__ import annotations

import torch

WORDS = ("a an the red green blue yellow circle circles square squares triangle triangles one two three left right of above below "
         "photo cat dog").split()


SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
VIDEO_WORDS = ("moving", "up", "down")  # the moving-shape video captions' words beyond WORDS


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
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=16,
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
    return FluxPipeline(scheduler=scheduler, vae=tiny_vae(seed=seed, shift_factor=0.1),
                        text_encoder=clip_text_encoder(tokenizer, projection=None, seed=seed),
                        tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer, transformer=transformer)


def tiny_sd1_pipeline(seed: int = 0):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = word_level_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=tiny_vae(seed=seed), text_encoder=clip_text_encoder(tokenizer, projection=None, seed=seed),
                                   tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


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
                                            caption_projection_dim=64 * num_attention_heads, pooled_projection_dim=2048,
                                            pos_embed_max_size=384, dual_attention_layers=tuple(dual_attention_layers),
                                            qk_norm="rms_norm").eval()
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
                            use_quant_conv=False, use_post_quant_conv=False).eval()
        clip_l = clip_text_encoder(tokenizer, hidden=768, projection=768, layers=1, seed=seed)
        clip_g = clip_text_encoder(tokenizer, hidden=1280, projection=1280, layers=1, seed=seed + 1)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=clip_l, tokenizer=tokenizer, text_encoder_2=clip_g, tokenizer_2=tokenizer,
                                    text_encoder_3=None, tokenizer_3=None)


QWEN_TEMPLATE_PIECES = ("<|im_start|>", "<|im_end|>", "\n", ",", ":", "system", "user", "assistant", "Describe", "image", "by", "detailing",
                        "color", "shape", "size", "texture", "quantity", "text", "spatial", "relationships", "objects", "and", "background")


def qwen_like_tokenizer(tokens=(*SPECIALS, *WORDS, *QWEN_TEMPLATE_PIECES), max_length: int = 1100):
    """A word-level PreTrainedTokenizerFast that splits like Qwen2's on QwenImagePipeline's prompt
    template: <|im_start|>, <|im_end|>, newlines, ',' and ':' are tokens of their own, spaces
    separate words, nothing is added (no <bos>/<eos>), so the template's system prefix is the 34
    tokens the pipeline drops (``prompt_template_encode_start_idx``); other words map to <unk>."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pad, unk, bos, eos = SPECIALS
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    core = Tokenizer(WordLevel(vocab, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"<\|im_start\|>|<\|im_end\|>|\n|,|:"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=pad, unk_token=unk, model_max_length=max_length)


def qwen_text_encoder(vocab_size: int, hidden: int = 16, layers: int = 2, heads: int = 2, seed: int = 0):
    """A Qwen2_5_VLForConditionalGeneration (QwenImagePipeline's text encoder) with a 1-block
    vision tower; the pipeline reads the text model's last hidden states."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = hidden // heads
    section = head_dim // 2 // 4  # multimodal RoPE sections (t, h, w) summing to head_dim / 2
    text = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": heads, "vocab_size": vocab_size, "rope_theta": 1000000.0,
            "rope_scaling": {"mrope_section": [section, section, head_dim // 2 - 2 * section], "rope_type": "default", "type": "default"}}
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": hidden}
    special = {name: vocab_size - 1 - i
               for i, name in enumerate(("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"))}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, vocab_size=vocab_size, bos_token_id=None, eos_token_id=None,
                              **special)
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwen_image_pipeline(seed: int = 0):
    """QwenImagePipeline: a 2-block QwenImage MMDiT over 2x2-packed 4-channel latents, the 3-D
    causal Qwen-Image VAE (16 px -> 4 px, latents_mean 0 / std 1 replaced by fixed non-trivial
    values so the de-normalisation is exercised) and a tiny Qwen2.5-VL text encoder."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel

    tokenizer = qwen_like_tokenizer()
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
                                              num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False,
                                              axes_dims_rope=(8, 4, 4)).eval()
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
                                 latents_mean=[0.1, -0.2, 0.05, 0.0], latents_std=[1.5, 0.8, 1.2, 1.0]).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256,
                                                shift_terminal=0.02)
    return QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=qwen_text_encoder(len(tokenizer), seed=seed),
                             tokenizer=tokenizer, transformer=transformer)


def tiny_wan_vae(z_dim: int = 4, seed: int = 0):
    """AutoencoderKLWan, 3-D causal: 4x spatial and 4x temporal compression (frames = 4k + 1 ->
    k + 1 latent frames), like Wan2.1's 8x / 4x with one spatial level less."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True],
                            latents_mean=[0.1, -0.2, 0.05, 0.0][:z_dim], latents_std=[1.5, 0.8, 1.2, 1.0][:z_dim],
                            scale_factor_temporal=4, scale_factor_spatial=4).eval()


def tiny_wan_pipeline(seed: int = 0, expand_timesteps: bool = False):
    """WanPipeline (text-to-video): a 2-block Wan transformer (patch (1, 2, 2)), the tiny Wan VAE,
    a 1-layer UMT5 encoder over the word-level tokenizer and a flow-matching Euler scheduler with
    Wan's shift 3. ``expand_timesteps``: Wan2.2-TI2V's per-token timesteps."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = word_level_tokenizer((*SPECIALS, *WORDS, *VIDEO_WORDS), max_length=16)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                                        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                                        qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    umt5 = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                       pad_token_id=tokenizer.pad_token_id)).eval()
    return WanPipeline(tokenizer=tokenizer, text_encoder=umt5, vae=tiny_wan_vae(seed=seed),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer, expand_timesteps=expand_timesteps)


QWEN_IMAGE_TRANSFORMER = {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
                          "num_attention_heads": 24, "joint_attention_dim": 3584, "guidance_embeds": False, "axes_dims_rope": (16, 56, 56)}


def qwen_image_sized_pipeline(seed: int = 0, device="cpu"):
    """A random-weight QwenImagePipeline at Qwen-Image's size, for timing: the published transformer
    config (QWEN_IMAGE_TRANSFORMER, from Qwen/Qwen-Image: 60 MMDiT blocks, 24 heads x 128,
    3584-wide text, 64 packed latent channels, RoPE axes (16, 56, 56); 2.04e10 parameters) and its
    VAE (z_dim 16, 8x down); the text encoder keeps Qwen2.5-VL-7B's width (3584, 28 heads, 4 KV
    heads) with one layer, since text encoding runs once per prompt."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = qwen_like_tokenizer()
    torch.manual_seed(seed)
    with torch.device(device):
        transformer = QwenImageTransformer2DModel(**QWEN_IMAGE_TRANSFORMER).eval()
        vae = AutoencoderKLQwenImage(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                     temperal_downsample=[False, True, True]).eval()
        text = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 1, "num_attention_heads": 28,
                "num_key_value_heads": 4, "vocab_size": len(tokenizer), "rope_theta": 1000000.0,
                "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"}}
        vision = {"depth": 1, "hidden_size": 64, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 3584}
        special = {name: len(tokenizer) - 1 - i
                   for i, name in enumerate(("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"))}
        encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, vocab_size=len(tokenizer),
                                                                      bos_token_id=None, eos_token_id=None, **special)).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=8192, base_shift=0.5,
                                                max_shift=0.9, shift_terminal=0.02, time_shift_type="exponential")
    return QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tokenizer, transformer=transformer)


def wan21_1p3b_sized_pipeline(seed: int = 0, device="cpu"):
    """A random-weight WanPipeline at Wan2.1-T2V-1.3B's size, for timing: the published transformer
    config (Wan-AI/Wan2.1-T2V-1.3B-Diffusers: 30 blocks, 12 heads x 128, FFN 8960, 4096-wide text;
    1.42e9 parameters) and the Wan2.1 VAE (z_dim 16, 8x spatial and 4x causal temporal
    compression); the UMT5 encoder keeps UMT5-XXL's width (4096, 64 heads x 64, FFN 10240) and
    its 512 tokens with one layer."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = word_level_tokenizer(max_length=512)
    torch.manual_seed(seed)
    with torch.device(device):
        transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                                            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                                            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024).eval()
        vae = AutoencoderKLWan(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                               temperal_downsample=[False, True, True]).eval()
        umt5 = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
                                           feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id)).eval()
    return WanPipeline(tokenizer=tokenizer, text_encoder=umt5, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                       transformer=transformer)
