"""ImageReward (Xu et al. 2023) over transformers' BLIP.

    ImageReward = (MLPHead(h_cls) - 0.16717362830052426) / 1.0333394966054072
h_cls: the first ([CLS]) output of BLIP's text encoder (BERT-base whose layers cross-attend to the
BLIP ViT-L/16 image tokens) on the prompt, tokenised by BERT's uncased WordPiece padded and
truncated to 35 tokens; MLPHead(768) as in `modeling`. Images: shorter side to 224 (bicubic),
centre crop, CLIP mean/std, as ImageReward's transform. This is ImageReward.score of the
public package (its inference path; its pairwise training code read the last token instead).

`path` is a folder: a BlipForImageTextRetrieval (config, weights, tokenizer files) plus
HEAD_FILE, as written by
    python -m progrpo_fast.rewards.imagereward --checkpoint ImageReward.pt --tokenizer BERT_DIR --out OUT_DIR
or the public ImageReward.pt itself, converted on load (tokenizer from `tokenizer_path`, else
beside the file). The conversion (`imagereward_to_transformers`) maps the public keys:
    blip.visual_encoder.{cls_token, pos_embed, patch_embed.proj, blocks.i.{norm1, attn.qkv,
        attn.proj, norm2, mlp.fc1, mlp.fc2}, norm}
        -> vision_model.{embeddings.class_embedding, embeddings.position_embedding,
           embeddings.patch_embedding, encoder.layers.i.{layer_norm1, self_attn.qkv,
           self_attn.projection, layer_norm2, mlp.fc1, mlp.fc2}, post_layernorm}
           (the renames of transformers' own BLIP conversion script)
    blip.text_encoder.*   -> text_encoder.* (transformers' BLIP text model is a port of BLIP's
                             med.py with the same module names; the position_ids buffer is dropped)
    blip.{vision,text}_proj -> {vision,text}_proj (kept, unused by the score)
    mlp.layers.*          -> HEAD_FILE
BlipForImageTextRetrieval's itm_head has no counterpart in ImageReward and keeps its random init;
the score never reads it. The BERT tokenizer is not inside ImageReward.pt: pass a local
bert-base-uncased tokenizer folder; [DEC] (bos) and [ENC] are added as BLIP's init_tokenizer does
(vocabulary 30524). Sizes are read from the tensors; head counts (ViT-L: 16, BERT-base: 12) are
arguments because a state dict does not store them.
"""
from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .modeling import MLPHead, ModelReward, clip_pixels, load_state_dict_file, load_tokenizer, require_path

MEAN, STD = 0.16717362830052426, 1.0333394966054072
MAX_TOKENS = 35
HEAD_FILE = "imagereward_head.safetensors"

_VISION_TOP = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
               "patch_embed.proj.weight": "embeddings.patch_embedding.weight", "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
               "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
_VISION_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)")


def _vision_key(key: str) -> str | None:
    match = _BLOCK_KEY.fullmatch(key)
    if match:
        return f"vision_model.encoder.layers.{match[1]}.{_VISION_BLOCK[match[2]]}.{match[3]}"
    return f"vision_model.{_VISION_TOP[key]}" if key in _VISION_TOP else None


def imagereward_to_transformers(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Public ImageReward state dict -> (BlipForImageTextRetrieval state dict, MLPHead state dict).
    Unknown keys are reported with a warning (the public loader itself loads non-strictly)."""
    blip, head, unknown = {}, {}, []
    for key, value in state_dict.items():
        if key.startswith("mlp."):
            head[key.removeprefix("mlp.")] = value
        elif key.startswith("blip.visual_encoder."):
            target = _vision_key(key.removeprefix("blip.visual_encoder."))
            if target is None:
                unknown.append(key)
            else:
                blip[target] = value
        elif key.startswith("blip.text_encoder."):
            if not key.endswith("position_ids"):
                blip[key.removeprefix("blip.")] = value
        elif key.startswith(("blip.vision_proj.", "blip.text_proj.")):
            blip[key.removeprefix("blip.")] = value
        else:
            unknown.append(key)
    if unknown:
        warnings.warn(f"ImageReward conversion ignored {len(unknown)} unknown key(s): {unknown[:8]}", stacklevel=2)
    if not head or not any(key.startswith("vision_model.") for key in blip) or not any(key.startswith("text_encoder.") for key in blip):
        raise ValueError("not an ImageReward state dict: expected blip.visual_encoder.*, blip.text_encoder.* and mlp.layers.* keys")
    return blip, head


def blip_config_for(state_dict: dict[str, torch.Tensor], vision_heads: int = 16, text_heads: int = 12):
    """BlipConfig of a converted state dict: sizes from the shapes; the rest from ImageReward's
    med_config.json (BERT: GELU, LayerNorm eps 1e-12, 512 positions) and BLIP's ViT (eps 1e-6)."""
    from transformers import BlipConfig

    def count(prefix: str) -> int:
        return len({key[len(prefix):].split(".")[0] for key in state_dict if key.startswith(prefix)})

    width, _, patch, _ = state_dict["vision_model.embeddings.patch_embedding.weight"].shape
    grid = round((state_dict["vision_model.embeddings.position_embedding"].shape[1] - 1) ** 0.5)
    vocab, text_width = state_dict["text_encoder.embeddings.word_embeddings.weight"].shape
    vision = dict(hidden_size=width, intermediate_size=state_dict["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                  num_hidden_layers=count("vision_model.encoder.layers."), num_attention_heads=vision_heads,
                  image_size=grid * patch, patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-6)
    text = dict(vocab_size=vocab, hidden_size=text_width, encoder_hidden_size=width,
                intermediate_size=state_dict["text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0],
                num_hidden_layers=count("text_encoder.encoder.layer."), num_attention_heads=text_heads,
                max_position_embeddings=state_dict["text_encoder.embeddings.position_embeddings.weight"].shape[0],
                hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0, is_decoder=True)
    return BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=state_dict["vision_proj.weight"].shape[0])


def blip_tokenizer(folder: Path, tokenizer_path, vocab_size: int):
    """bert-base-uncased's tokenizer (from tokenizer_path, else folder or folder/tokenizer) with
    BLIP's [DEC] (bos) and [ENC] tokens, checked against the text encoder's vocabulary size."""
    tokenizer = load_tokenizer(folder, tokenizer_path, "imagereward", "pass tokenizer_path= a local bert-base-uncased tokenizer folder")
    if "[DEC]" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if "[ENC]" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tokenizer) != vocab_size:
        raise ValueError(f"imagereward: the tokenizer has {len(tokenizer)} tokens but the text encoder {vocab_size}; "
                         "use bert-base-uncased's tokenizer (30522 tokens + [DEC] + [ENC])")
    return tokenizer


def load_imagereward_checkpoint(path, vision_heads: int = 16, text_heads: int = 12):
    """(BlipForImageTextRetrieval, MLPHead) from the public ImageReward.pt, in fp32."""
    from transformers import BlipForImageTextRetrieval

    blip_state, head_state = imagereward_to_transformers(load_state_dict_file(require_path(path, "ImageReward checkpoint")))
    blip_state = {key: value.float() for key, value in blip_state.items()}
    model = BlipForImageTextRetrieval(blip_config_for(blip_state, vision_heads, text_heads))
    missing, unexpected = model.load_state_dict(blip_state, strict=False)
    missing = [key for key in missing if not key.startswith("itm_head.") and not key.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{path}: converted weights do not fit BlipForImageTextRetrieval "
                         f"(missing {missing[:8]}, unexpected {unexpected[:8]})")
    head = MLPHead(head_state["layers.0.weight"].shape[1])
    head.load_state_dict({key: value.float() for key, value in head_state.items()})
    return model.eval(), head


class ImageReward(ModelReward):
    """(MLPHead(BLIP text encoder [CLS] | image) - mean) / std; see the module docstring.

    path: a converted folder (BLIP + HEAD_FILE + tokenizer) or the public ImageReward.pt.
    tokenizer_path: a bert-base-uncased tokenizer folder (default: path, or the .pt's folder).
    vision_heads, text_heads: attention heads when converting a .pt (ViT-L/16: 16, BERT-base: 12)."""

    name = "imagereward"

    def __init__(self, path, tokenizer_path=None, device=None, dtype=torch.float32, vision_heads: int = 16, text_heads: int = 12):
        from transformers import BlipForImageTextRetrieval

        path = require_path(path, "imagereward model")
        if path.is_dir():
            if not (path / HEAD_FILE).is_file():
                raise ValueError(f"imagereward: {str(path)!r} has no {HEAD_FILE}; convert ImageReward.pt with "
                                 "python -m progrpo_fast.rewards.imagereward --checkpoint ImageReward.pt --tokenizer BERT_DIR --out DIR")
            blip = BlipForImageTextRetrieval.from_pretrained(str(path), local_files_only=True)
            head = MLPHead.from_file(path / HEAD_FILE)
        else:
            blip, head = load_imagereward_checkpoint(path, vision_heads, text_heads)
        self.tokenizer = blip_tokenizer(path if path.is_dir() else path.parent, tokenizer_path, blip.config.text_config.vocab_size)
        modules = nn.Module()
        modules.blip, modules.head = blip, head
        super().__init__(modules, device=device, dtype=dtype)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        blip = self.model.blip
        pixels = clip_pixels(self.place(images), blip.config.vision_config.image_size, "crop").to(self.dtype)
        image_tokens = blip.vision_model(pixel_values=pixels).last_hidden_state
        text = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        hidden = blip.text_encoder(input_ids=text["input_ids"].to(pixels.device), attention_mask=text["attention_mask"].to(pixels.device),
                                   encoder_hidden_states=image_tokens).last_hidden_state[:, 0]
        return (self.model.head(hidden).float() - MEAN) / STD


def convert_imagereward_checkpoint(checkpoint, tokenizer_dir, out_dir, vision_heads: int = 16, text_heads: int = 12) -> Path:
    """Writes the folder ImageReward(out_dir) loads: BLIP (safetensors), tokenizer, HEAD_FILE."""
    from safetensors.torch import save_file

    blip, head = load_imagereward_checkpoint(checkpoint, vision_heads, text_heads)
    tokenizer = blip_tokenizer(Path(checkpoint).parent, tokenizer_dir, blip.config.text_config.vocab_size)
    out = Path(out_dir).expanduser()
    blip.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    save_file({key: value.contiguous() for key, value in head.state_dict().items()}, str(out / HEAD_FILE))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m progrpo_fast.rewards.imagereward",
                                     description="Convert the public ImageReward.pt to a transformers BLIP folder + score head.")
    parser.add_argument("--checkpoint", required=True, help="ImageReward.pt (THUDM/ImageReward)")
    parser.add_argument("--tokenizer", required=True, help="a local bert-base-uncased tokenizer folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--vision-heads", type=int, default=16)
    parser.add_argument("--text-heads", type=int, default=12)
    args = parser.parse_args(argv)
    out = convert_imagereward_checkpoint(args.checkpoint, args.tokenizer, args.out, args.vision_heads, args.text_heads)
    print(f"wrote {out}; use it as reward.paths.imagereward={out}")


if __name__ == "__main__":
    main()
