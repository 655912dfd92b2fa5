"""Shared pieces of the model rewards: differentiable CLIP-style preprocessing in torch, the MLP
score head of LAION's aesthetic predictor and ImageReward, weight-file loading, and the base
class that places a model on the images' device."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from progrpo_fast.ops.dtypes import DTYPES

from .base import Reward

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's; open_clip, BLIP and ImageReward use the same
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(images: torch.Tensor, size: int, fit: str = "crop") -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, size, size) normalised by CLIP's mean/std, in torch
    (differentiable, no PIL round trip). Resizing is bicubic with antialiasing, clamped to [0, 1].

    fit="crop": shorter side to `size`, then centre crop (CLIPImageProcessor; torchvision
        Resize(size) + CenterCrop(size) as in CLIP, BLIP and ImageReward).
    fit="pad": longer side to `size`, then pad with black to a square (open_clip's ResizeMaxSize,
        HPSv2's evaluation transform).
    For square images both are a plain resize to size x size.
    """
    height, width = images.shape[-2:]
    if fit not in ("crop", "pad"):
        raise ValueError(f"fit must be 'crop' or 'pad', got {fit!r}")
    if fit == "crop":  # int() like torchvision / CLIPImageProcessor
        new_h, new_w = (size, int(size * width / height)) if height <= width else (int(size * height / width), size)
    else:  # round() like open_clip's ResizeMaxSize
        scale = size / max(height, width)
        new_h, new_w = round(height * scale), round(width * scale)
    if (new_h, new_w) != (height, width):
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    if fit == "crop":
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        images = images[..., top:top + size, left:left + size]
    else:
        pad_h, pad_w = size - new_h, size - new_w
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    mean = images.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


class MLPHead(nn.Module):
    """The score head of LAION's aesthetic predictor v2 and of ImageReward, activations left out as
    in both public checkpoints (so it is affine in x):
        Linear(d, 1024) - Dropout(0.2) - Linear(1024, 128) - Dropout(0.2) - Linear(128, 64)
        - Dropout(0.1) - Linear(64, 16) - Linear(16, 1)
    State-dict keys layers.{0,2,4,6,7}.{weight,bias}, as the public files. (B, d) -> (B,)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)

    @classmethod
    def from_file(cls, path) -> MLPHead:
        """Loads a head state dict from a .pth/.pt (torch.save) or .safetensors file."""
        state = load_state_dict_file(require_path(path, "score head file"))
        if "layers.0.weight" not in state:
            raise ValueError(f"{path} is not an MLP score head: expected keys layers.0.weight ... layers.7.bias, got {sorted(state)[:6]}")
        head = cls(state["layers.0.weight"].shape[1])
        head.load_state_dict(state)
        return head


def require_path(path, what: str) -> Path:
    """Path(path) with ~ expanded; FileNotFoundError naming `what` when it does not exist."""
    if path is None:
        raise ValueError(f"no path given for the {what}")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist (rewards load local weights only, never from a hub)")
    return resolved


def load_state_dict_file(path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch.save file (loaded with weights_only=True)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # what AutoTokenizer.from_pretrained needs


def load_tokenizer(folder: Path, tokenizer_path, what: str, hint: str):
    """AutoTokenizer from `tokenizer_path` if given, else from the first of `folder` and
    `folder`/tokenizer that holds tokenizer files; ValueError with `hint` when none does."""
    from transformers import AutoTokenizer

    candidates = [require_path(tokenizer_path, f"{what} tokenizer folder")] if tokenizer_path else [folder, folder / "tokenizer"]
    for candidate in candidates:
        if candidate.is_dir() and any((candidate / name).is_file() for name in TOKENIZER_FILES):
            return AutoTokenizer.from_pretrained(str(candidate), local_files_only=True)
    looked = ", ".join(repr(str(candidate)) for candidate in candidates)
    raise ValueError(f"{what}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {looked}; {hint}")


class ModelReward(Reward):
    """Base of the rewards that run a network. ``self.model`` (one nn.Module holding every weight)
    is frozen and runs in ``dtype`` on ``device``, or, when device is None, on the device of the
    images it is called with (moved there on the first call). Gradients flow to the images when
    the caller enables them; the trainer calls rewards under torch.no_grad."""

    def __init__(self, model: nn.Module, device=None, dtype: torch.dtype | str = torch.float32):
        dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype or one of {sorted(DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.model = model.eval().requires_grad_(False).to(device=self.device, dtype=dtype)

    def place(self, images: torch.Tensor) -> torch.Tensor:
        """Moves the model to the target device if needed; returns the images there in fp32 (the
        preprocessing runs in fp32; callers cast the model inputs to ``self.dtype``)."""
        target = self.device or images.device
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        if next(self.model.parameters()).device != target:
            self.model.to(target)
        return images.to(target, torch.float32)
