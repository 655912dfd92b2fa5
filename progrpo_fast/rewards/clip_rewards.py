"""CLIP-based rewards over transformers' CLIPModel, loaded from local folders (save_pretrained
layout: config.json + weights, tokenizer files beside them or in `tokenizer_path`).

With e_I, e_T the L2-normalised projected image and text embeddings and cos = <e_I, e_T>:
    CLIPScore       = max(100 * cos, 0)         (torchmetrics' CLIPScore; Hessel et al.'s CLIP-S
                                                 = 2.5 * max(cos, 0) is the same up to a factor 40)
    PickScore       = exp(logit_scale) * cos    (PickScore_v1: a fine-tuned CLIP ViT-H/14,
                                                 exp(logit_scale) ~ 100; Flow-GRPO divides it by 26)
    AestheticScore  = MLP(e_I)                  (LAION aesthetic predictor v2: the MLP head on the
                                                 L2-normalised CLIP ViT-L/14 image embedding)
Images are resized and normalised in torch (`clip_pixels`) at the model's image size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .modeling import MLPHead, ModelReward, clip_pixels, load_tokenizer, require_path


def load_clip_model(path, what: str):
    """CLIPModel.from_pretrained(path) from a local folder only."""
    from transformers import CLIPModel

    folder = require_path(path, f"{what} model folder")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{what}: {str(folder)!r} must be a transformers CLIPModel folder (config.json + weights), "
                         "as written by CLIPModel.save_pretrained")
    return CLIPModel.from_pretrained(str(folder), local_files_only=True)


class ClipReward(ModelReward):
    """Base of the CLIP rewards: L2-normalised image/text embeddings of ``self.model.clip``.

    path: a CLIPModel folder; tokenizer_path: a folder with its tokenizer (default: path, then
    path/tokenizer); device: None follows the images; dtype: torch dtype or "fp32"/"bf16"/"fp16".
    fit: how images reach the square input ("crop" or "pad", see `clip_pixels`)."""

    fit = "crop"
    tokenizer_hint = ("pass tokenizer_path= a folder with the model's CLIP tokenizer (for PickScore_v1: the processor "
                      "files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K)")

    def __init__(self, path, tokenizer_path=None, device=None, dtype=torch.float32):
        folder = require_path(path, f"{self.name} model folder")
        self.setup(load_clip_model(folder, self.name), load_tokenizer(folder, tokenizer_path, self.name, self.tokenizer_hint),
                   device, dtype)

    def setup(self, clip, tokenizer, device, dtype, head: nn.Module | None = None) -> None:
        modules = nn.Module()
        modules.clip = clip
        if head is not None:
            modules.head = head
        super().__init__(modules, device=device, dtype=dtype)
        if tokenizer is not None and tokenizer.pad_token is None:  # padding never changes CLIP's causal text features
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        clip = self.model.clip
        pixels = clip_pixels(self.place(images), clip.vision_model.config.image_size, self.fit).to(self.dtype)
        return F.normalize(clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output).float(), dim=-1)

    def text_embeddings(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """Each distinct prompt is encoded once (a group repeats its prompt G times)."""
        clip = self.model.clip
        unique = list(dict.fromkeys(prompts))
        tokens = self.tokenizer(unique, padding=True, truncation=True, max_length=clip.text_model.config.max_position_embeddings,
                                return_tensors="pt")
        pooled = clip.text_model(input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)).pooler_output
        embeddings = F.normalize(clip.text_projection(pooled).float(), dim=-1)
        row = {prompt: i for i, prompt in enumerate(unique)}
        return embeddings[torch.tensor([row[prompt] for prompt in prompts], device=device)]

    def cosine(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image = self.image_embeddings(images)
        return (image * self.text_embeddings(prompts, image.device)).sum(-1)


class CLIPScore(ClipReward):
    """max(100 * cos(e_I, e_T), 0) of any CLIPModel (e.g. openai/clip-vit-large-patch14)."""

    name = "clipscore"

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (100 * self.cosine(images, prompts)).clamp(min=0)


class PickScore(ClipReward):
    """exp(logit_scale) * cos(e_I, e_T) of the PickScore_v1 CLIPModel (ViT-H/14)."""

    name = "pickscore"

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.model.clip.logit_scale.exp().float() * self.cosine(images, prompts)


class AestheticScore(ClipReward):
    """LAION aesthetic predictor v2: MLPHead(e_I) on the L2-normalised CLIP ViT-L/14 image
    embedding; the prompt is not used.

    clip_path: a CLIPModel folder of openai/clip-vit-large-patch14.
    head_path: the head's state dict (.pth or .safetensors), e.g. the public
        sac+logos+ava1-l14-linearMSE.pth; default: the first of HEAD_FILES found in clip_path."""

    name = "aesthetic"
    HEAD_FILES = ("sac+logos+ava1-l14-linearMSE.pth", "aesthetic_head.safetensors", "aesthetic_head.pth")

    def __init__(self, clip_path, head_path=None, device=None, dtype=torch.float32):
        folder = require_path(clip_path, "aesthetic CLIP model folder")
        if head_path is None:
            found = [folder / name for name in self.HEAD_FILES if (folder / name).is_file()]
            if not found:
                raise ValueError(f"aesthetic: no head file in {str(folder)!r}; put one of {self.HEAD_FILES} there or pass head_path=")
            head_path = found[0]
        clip, head = load_clip_model(folder, self.name), MLPHead.from_file(head_path)
        width = clip.config.projection_dim
        if head.layers[0].in_features != width:
            raise ValueError(f"aesthetic: head {str(head_path)!r} takes {head.layers[0].in_features}-d embeddings but the CLIP "
                             f"model in {str(folder)!r} gives {width}-d ones (the public head needs CLIP ViT-L/14, 768-d)")
        self.setup(clip, None, device, dtype, head=head)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        embeddings = self.image_embeddings(images)
        return self.model.head(embeddings.to(self.dtype)).float()
