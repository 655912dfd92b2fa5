"""Writes a random-weight CLIPModel folder at PickScore_v1's size (CLIP ViT-H/14: vision 32 x 1280,
text 24 x 1024, projection 1024; 0.94e9 parameters, the 49k-token embedding aside) with a word-level tokenizer, loadable as
``reward.paths.pickscore=FOLDER``. Weights do not change the time, so GPU throughput runs of the
reward proxy use it where the real PickScore cannot be downloaded.

    python scripts/random_pickscore.py /tmp/pickscore-random [--tiny] [--device cuda]

--tiny writes a 2-layer, 64-wide model of the same layout (for dry runs).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def clip_config(tiny: bool):
    from transformers import CLIPConfig

    from progrpo_fast.models.tiny import SPECIALS, WORDS

    vocab = len(SPECIALS) + len(WORDS)
    if tiny:
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=14, image_size=56)
        projection = 32
    else:
        text = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
        vision = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14, image_size=224)
        projection = 1024
    text.update(vocab_size=vocab, max_position_embeddings=77, pad_token_id=0, bos_token_id=2, eos_token_id=3, hidden_act="gelu")
    return CLIPConfig(text_config=text, vision_config={**vision, "hidden_act": "gelu"}, projection_dim=projection)


def main() -> None:
    from transformers import CLIPModel

    from progrpo_fast.models.tiny import word_level_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model of the same layout")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the random init runs")
    args = parser.parse_args()
    torch.manual_seed(0)
    with torch.device(args.device):
        model = CLIPModel(clip_config(args.tiny)).eval()
    model.to(torch.float16 if not args.tiny else torch.float32).save_pretrained(args.out)
    word_level_tokenizer(max_length=77).save_pretrained(args.out)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}e9 parameters)")


if __name__ == "__main__":
    main()
