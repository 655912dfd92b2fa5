"""HPSv2.1 (Human Preference Score v2.1) over transformers' CLIPModel.

    HPS = 100 * cos(e_I, e_T)
with e_I, e_T the L2-normalised projected image and text embeddings of the HPSv2.1 model, a
fine-tuned open_clip ViT-H-14 (`hpsv2.score` returns the cosine itself, HPS / 100, as DanceGRPO
uses it). Images go in as HPSv2's evaluation transform: longer side to 224, black padding to a
square, CLIP mean/std (for square images: a plain resize).

The public checkpoint HPS_v2.1_compressed.pt is torch.save({"state_dict": open_clip state dict}).
open_clip itself is not used: it imports torchvision, whose wheels pin a torch build other than
this project's, so `open_clip_to_transformers` maps the open_clip keys onto CLIPModel's (the same
computation: pre-LN transformer blocks with exact GELU, class-token pooling after ln_post, text
pooling at the end-of-text token = the largest token id, projections x @ proj). `path` may be that
.pt file (converted on load) or a folder written by
    python -m progrpo_fast.rewards.hps --checkpoint HPS_v2.1_compressed.pt --tokenizer TOKENIZER_DIR --out OUT_DIR
The tokenizer is CLIP's BPE (open_clip's vocabulary is OpenAI CLIP's): any transformers CLIP
tokenizer folder, e.g. the tokenizer/ folder of a local Stable Diffusion 1.x; by default it is
looked for in the model folder (or the .pt file's folder) and its tokenizer/ subfolder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .clip_rewards import ClipReward, load_clip_model
from .modeling import load_state_dict_file, load_tokenizer, require_path

_BLOCK_KEYS = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
               ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
_TOP_KEYS = (
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
    ("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
    ("logit_scale", "logit_scale"),
)
_TRANSPOSED_KEYS = (("visual.proj", "visual_projection.weight"), ("text_projection", "text_projection.weight"))
_IGNORED_KEYS = ("attn_mask",)  # open_clip's causal mask buffer (persistent in some versions)


def open_clip_to_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip CLIP state dict (ViT image tower, standard text tower) -> CLIPModel state dict.

    visual.conv1 -> vision_model.embeddings.patch_embedding; visual.class_embedding /
    positional_embedding -> embeddings.class_embedding / position_embedding; ln_pre / ln_post ->
    pre_layrnorm / post_layernorm; resblocks.i.{ln_1, ln_2, attn.out_proj, mlp.c_fc, mlp.c_proj}
    -> layers.i.{layer_norm1, layer_norm2, self_attn.out_proj, mlp.fc1, mlp.fc2};
    attn.in_proj_{weight,bias} split in three -> self_attn.{q,k,v}_proj; visual.proj and
    text_projection (used as x @ P) -> visual_projection.weight / text_projection.weight = P^T;
    token_embedding, positional_embedding, ln_final, logit_scale -> text_model.embeddings.*,
    text_model.final_layer_norm, logit_scale. A leading "module." (DDP) is dropped. Raises
    ValueError on a missing or an unknown key."""
    state = {key.removeprefix("module."): value for key, value in state_dict.items()}
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise ValueError(f"not an open_clip CLIP (ViT) state dict: key {key!r} is missing")
        return state.pop(key)

    for source, target in _TOP_KEYS:
        out[target] = take(source)
    for source, target in _TRANSPOSED_KEYS:
        out[target] = take(source).t().contiguous()
    for source, target in (("visual.transformer", "vision_model.encoder"), ("transformer", "text_model.encoder")):
        layer = 0
        while f"{source}.resblocks.{layer}.ln_1.weight" in state:
            src, dst = f"{source}.resblocks.{layer}.", f"{target}.layers.{layer}."
            for kind in ("weight", "bias"):
                for old, new in _BLOCK_KEYS:
                    out[f"{dst}{new}.{kind}"] = take(f"{src}{old}.{kind}")
                for name, part in zip(("q_proj", "k_proj", "v_proj"), take(f"{src}attn.in_proj_{kind}").chunk(3)):
                    out[f"{dst}self_attn.{name}.{kind}"] = part.contiguous()
            layer += 1
        if layer == 0:
            raise ValueError(f"not an open_clip CLIP (ViT) state dict: no {source}.resblocks.* keys")
    unknown = sorted(key for key in state if key.split(".")[-1] not in _IGNORED_KEYS)
    if unknown:
        raise ValueError(f"open_clip state dict has keys this conversion does not know (not a plain ViT CLIP?): {unknown[:8]}")
    return out


def clip_config_for(state_dict: dict[str, torch.Tensor], vision_heads: int, text_heads: int, hidden_act: str = "gelu"):
    """CLIPConfig of a converted (transformers-keyed) state dict: sizes from the tensor shapes,
    head counts given. Text pooling reads the largest token id (open_clip's argmax pooling; in
    transformers that is the eos_token_id == 2 rule)."""
    from transformers import CLIPConfig

    def count(prefix: str) -> int:
        return len({key.split(".")[3] for key in state_dict if key.startswith(prefix)})

    width, _, patch, _ = state_dict["vision_model.embeddings.patch_embedding.weight"].shape
    grid = round((state_dict["vision_model.embeddings.position_embedding.weight"].shape[0] - 1) ** 0.5)
    vocab, text_width = state_dict["text_model.embeddings.token_embedding.weight"].shape
    vision = dict(hidden_size=width, intermediate_size=state_dict["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                  num_hidden_layers=count("vision_model.encoder.layers."), num_attention_heads=vision_heads,
                  image_size=grid * patch, patch_size=patch, hidden_act=hidden_act, layer_norm_eps=1e-5)
    text = dict(vocab_size=vocab, hidden_size=text_width,
                intermediate_size=state_dict["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                num_hidden_layers=count("text_model.encoder.layers."), num_attention_heads=text_heads,
                max_position_embeddings=state_dict["text_model.embeddings.position_embedding.weight"].shape[0],
                hidden_act=hidden_act, layer_norm_eps=1e-5, pad_token_id=0, bos_token_id=vocab - 2, eos_token_id=2)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state_dict["visual_projection.weight"].shape[0])


def load_open_clip_checkpoint(path, vision_heads: int = 16, text_heads: int = 16, hidden_act: str = "gelu"):
    """CLIPModel from an open_clip checkpoint file (a state dict, or a dict holding one under
    "state_dict" as HPSv2's files do), in fp32."""
    from transformers import CLIPModel

    state = load_state_dict_file(require_path(path, "open_clip checkpoint"))
    state = state.get("state_dict", state)
    converted = {key: value.float() for key, value in open_clip_to_transformers(state).items()}
    model = CLIPModel(clip_config_for(converted, vision_heads, text_heads, hidden_act))
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{path}: converted weights do not fit CLIPModel (missing {missing[:8]}, unexpected {unexpected[:8]})")
    return model.eval()


class HPSv2(ClipReward):
    """100 * cos(e_I, e_T) of the HPSv2.1 model.

    path: HPS_v2.1_compressed.pt (open_clip, converted on load) or a converted CLIPModel folder.
    tokenizer_path: a CLIP tokenizer folder (default: beside the model, or its tokenizer/ subfolder).
    vision_heads, text_heads: attention heads when converting, which a state dict does not store
        (open_clip ViT-H-14: width 1280 / head width 80 = 16 and 16; every other size is read
        from the tensors' shapes)."""

    name = "hpsv2"
    fit = "pad"
    tokenizer_hint = ("pass tokenizer_path= a CLIP tokenizer folder (tokenizer_config.json + vocab.json + merges.txt), "
                      "e.g. the tokenizer/ folder of a local Stable Diffusion 1.x")

    def __init__(self, path, tokenizer_path=None, device=None, dtype=torch.float32, vision_heads: int = 16, text_heads: int = 16):
        path = require_path(path, "hpsv2 checkpoint")
        folder = path if path.is_dir() else path.parent
        clip = load_clip_model(path, self.name) if path.is_dir() else load_open_clip_checkpoint(path, vision_heads, text_heads)
        self.setup(clip, load_tokenizer(folder, tokenizer_path, self.name, self.tokenizer_hint), device, dtype)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return 100 * self.cosine(images, prompts)


def convert_hps_checkpoint(checkpoint, tokenizer_dir, out_dir, vision_heads: int = 16, text_heads: int = 16) -> Path:
    """Writes a CLIPModel folder (config, safetensors weights, tokenizer) that HPSv2(out_dir) loads."""
    tokenizer = load_tokenizer(Path(checkpoint).parent, tokenizer_dir, "hpsv2", HPSv2.tokenizer_hint)
    model = load_open_clip_checkpoint(checkpoint, vision_heads, text_heads)
    out = Path(out_dir).expanduser()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m progrpo_fast.rewards.hps",
                                     description="Convert an HPSv2 open_clip checkpoint to a transformers CLIPModel folder.")
    parser.add_argument("--checkpoint", required=True, help="HPS_v2.1_compressed.pt (or any open_clip ViT CLIP checkpoint)")
    parser.add_argument("--tokenizer", required=True, help="a CLIP tokenizer folder, e.g. <stable-diffusion-v1-4>/tokenizer")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--vision-heads", type=int, default=16)
    parser.add_argument("--text-heads", type=int, default=16)
    args = parser.parse_args(argv)
    out = convert_hps_checkpoint(args.checkpoint, args.tokenizer, args.out, args.vision_heads, args.text_heads)
    print(f"wrote {out}; use it as reward.paths.hpsv2={out}")


if __name__ == "__main__":
    main()
