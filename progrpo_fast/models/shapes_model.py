"""The built-in tiny text-to-image model: a genuine diffusers ``StableDiffusion3Pipeline``.

Nothing can be downloaded at run time, so progrpo-fast ships its own small model for the
shapes task (``progrpo_fast.tasks.shapes``): every part of a stock SD3 pipeline, shrunk so that
sampling hundreds of 32x32 images per GRPO iteration fits a 2-core CPU.

    part            class                               size
    vae             AutoencoderKL                       32x32x3 <-> 16x16x4 latents
    text_encoder    CLIPTextModelWithProjection         hidden 64, 2 layers, projection 32
    text_encoder_2  CLIPTextModelWithProjection         same config, its own weights
    tokenizer(_2)   PreTrainedTokenizerFast (WordLevel) the task's 20 words, BOS/EOS, 10 tokens
    text_encoder_3  None (the pipeline feeds T5_TOKENS zero tokens instead of T5)
    transformer     SD3Transformer2DModel (MMDiT)       4 joint blocks, width 128, patch 2
    scheduler       FlowMatchEulerDiscreteScheduler     shift SCHEDULER_SHIFT

Per image the transformer sees 64 image tokens (16x16 latent, patch 2) and 10 CLIP + T5_TOKENS
text tokens. Token ids match ``progrpo_fast.tasks.tokenizer.WordTokenizer`` (0 = <pad>,
1 = <unk>, 2..21 = the task's words) plus 22 = <bos> and 23 = <eos>; a caption is encoded as
``<bos> words <eos> <pad>...`` and CLIP's pooled output reads the first <eos>.

Shipped weights live in ``SHAPES_MODEL_DIR`` (``progrpo_fast/assets/shapes-sd3``), written by
``python scripts/pretrain_shapes.py`` (see that script for the recipe, time and rewards).
Use::

    pipe = load_shapes_pipeline()
    images = pipe(prompts, height=RESOLUTION, width=RESOLUTION, num_inference_steps=NUM_STEPS,
                  guidance_scale=GUIDANCE_SCALE, max_sequence_length=T5_TOKENS,
                  output_type="pt").images        # (B, 3, 32, 32) in [0, 1]
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..tasks.shapes import MAX_CAPTION_WORDS
from ..tasks.tokenizer import WordTokenizer
from .tiny import SPECIALS, word_level_tokenizer

SHAPES_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "shapes-sd3"
PRETRAIN_COMMAND = "python scripts/pretrain_shapes.py"

# Sampler defaults for the built-in model.
RESOLUTION = 32  # px, images are RESOLUTION x RESOLUTION RGB
NUM_STEPS = 10  # sampling steps (the Pro-GRPO paper's SD3.5 setting)
GUIDANCE_SCALE = 4.5  # CFG scale (Flow-GRPO's SD3.5 setting); the negative prompt is ""
T5_TOKENS = 1  # max_sequence_length to pass the pipeline: with no T5 it appends this many zero tokens
SCHEDULER_SHIFT = 1.0  # FlowMatchEulerDiscreteScheduler shift

# Architecture.
BOS, EOS = SPECIALS[2:]
TOKENIZER_MAX_LENGTH = MAX_CAPTION_WORDS + 2  # BOS + the longest caption (8 words) + EOS
LATENT_CHANNELS = 4
VAE_CHANNELS = (16, 32)  # one downsampling: 32x32 -> 16x16
LATENT_SIZE = RESOLUTION // 2 ** (len(VAE_CHANNELS) - 1)
CLIP_HIDDEN = 64
CLIP_PROJECTION = 32
TRANSFORMER_LAYERS = 4
TRANSFORMER_HEADS = 4
TRANSFORMER_HEAD_DIM = 32
PATCH_SIZE = 2


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` with the task tokenizer's ids plus <bos>, <eos>:
    ``<bos> words <eos>`` right-padded with <pad> (id 0) to TOKENIZER_MAX_LENGTH."""
    return word_level_tokenizer((*WordTokenizer().vocab, BOS, EOS), TOKENIZER_MAX_LENGTH)


def text_encoder_config():
    """Tiny CLIP text config; pad/bos/eos ids match ``build_tokenizer`` so the pooled output
    reads the first <eos> position (eos_token_id != 2 selects that code path in transformers)."""
    from transformers import CLIPTextConfig

    vocab_size = len(WordTokenizer().vocab) + 2
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=CLIP_HIDDEN, intermediate_size=4 * CLIP_HIDDEN,
        projection_dim=CLIP_PROJECTION, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH, hidden_act="gelu",
        pad_token_id=0, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1)


def build_text_encoder(seed: int = 0):
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(text_encoder_config()).eval()


def vae_config() -> dict:
    n = len(VAE_CHANNELS)
    return dict(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=VAE_CHANNELS, layers_per_block=1, norm_num_groups=8,
        act_fn="silu", sample_size=RESOLUTION, mid_block_add_attention=False,
        use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=1.0, shift_factor=0.0)  # the pretraining script sets both from latent statistics


def build_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**vae_config()).eval()


def transformer_config() -> dict:
    return dict(
        sample_size=LATENT_SIZE, patch_size=PATCH_SIZE, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, num_layers=TRANSFORMER_LAYERS,
        attention_head_dim=TRANSFORMER_HEAD_DIM, num_attention_heads=TRANSFORMER_HEADS,
        joint_attention_dim=2 * CLIP_HIDDEN,  # the two CLIP hidden states concatenated
        caption_projection_dim=TRANSFORMER_HEADS * TRANSFORMER_HEAD_DIM,
        pooled_projection_dim=2 * CLIP_PROJECTION, pos_embed_max_size=LATENT_SIZE // PATCH_SIZE,
        qk_norm="rms_norm")


def build_transformer(seed: int = 0):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(**transformer_config()).eval()


def build_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SCHEDULER_SHIFT)


def build_shapes_pipeline(seed: int = 0):
    """The built-in model's ``StableDiffusion3Pipeline`` with random weights (deterministic in `seed`)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=build_transformer(seed), scheduler=build_scheduler(), vae=build_vae(seed + 1),
        text_encoder=build_text_encoder(seed + 2), tokenizer=build_tokenizer(),
        text_encoder_2=build_text_encoder(seed + 3), tokenizer_2=build_tokenizer(),
        text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_shapes_pipeline(path: str | os.PathLike = SHAPES_MODEL_DIR, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32):
    """Loads the pretrained built-in model (``StableDiffusion3Pipeline.from_pretrained``)."""
    from diffusers import StableDiffusion3Pipeline

    path = Path(path)
    if not (path / "model_index.json").is_file():
        hint = (f"recreate it with `{PRETRAIN_COMMAND}` (about 25 minutes on 2 CPU cores)"
                if path.resolve() == SHAPES_MODEL_DIR else
                f"write one with `{PRETRAIN_COMMAND} --out {path}`")
        raise FileNotFoundError(
            f"no built-in shapes model at {path} (model_index.json missing); {hint}")
    # text_encoder_3/tokenizer_3 are saved as null; from_pretrained wants them passed explicitly
    pipe = StableDiffusion3Pipeline.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                    text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
