"""Reward functions: reward(images (B, 3, H, W) fp32 in [0, 1], prompts list[str]) -> (B,) fp32
on the images' device, each with a ``name``; `build_reward(name, **kwargs)` makes one by name,
`WeightedReward` sums several, `check_rewards` validates what a reward returned.

Model rewards load local weights only (``path=``, see each class); importing this package does
not import transformers, and the modules with a command line (hps, imagereward, http) load on
first use, so that ``python -m progrpo_fast.rewards.http`` runs them fresh. Names:
    jpeg_compressibility, jpeg_incompressibility   -/+ JPEG size in kB (DDPO)
    shapes                                          the shapes task's GenEval-like score
    clipscore, pickscore, aesthetic                 CLIP-based (clip_rewards)
    hpsv2                                           HPSv2.1 (hps)
    imagereward                                     ImageReward (imagereward)
    http                                            a reward served by another process (http)
    temporal_consistency                            1 - mean frame-to-frame pixel change of videos (video)
    moving_shapes                                   the moving-shape video task's score (tasks.shapes_video)
Image rewards score videos frame by frame through ``video.FrameReward``.
"""
from __future__ import annotations

import importlib

from .base import Reward, WeightedReward, check_inputs, check_rewards
from .clip_rewards import AestheticScore, CLIPScore, PickScore
from .jpeg import JpegCompressibility, JpegIncompressibility
from .modeling import MLPHead, ModelReward
from .shapes import ShapesScore
from .video import FrameReward, TemporalConsistency

# name -> module relative to this package (".tasks.shapes_video" is progrpo_fast.tasks.shapes_video)
_LAZY = {"HPSv2": "hps", "ImageReward": "imagereward", "HTTPReward": "http", "RewardServer": "http", "serve_reward": "http",
         "MovingShapesReward": ".tasks.shapes_video"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


REWARDS = {  # name -> class name in this package
    "jpeg_compressibility": "JpegCompressibility",
    "jpeg_incompressibility": "JpegIncompressibility",
    "shapes": "ShapesScore",
    "pickscore": "PickScore",
    "hpsv2": "HPSv2",
    "imagereward": "ImageReward",
    "clipscore": "CLIPScore",
    "aesthetic": "AestheticScore",
    "http": "HTTPReward",
    "temporal_consistency": "TemporalConsistency",
    "moving_shapes": "MovingShapesReward",
}
MODEL_REWARDS = ("pickscore", "hpsv2", "imagereward", "clipscore", "aesthetic")


def build_reward(name: str, **kwargs):
    """The reward called `name`, built with `kwargs`: ``path`` (and optionally ``tokenizer_path``,
    ``device``, ``dtype``) for the model rewards, ``url`` for "http", the scorer's options for
    "jpeg_*" and "shapes"."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(REWARDS)}")
    if name in MODEL_REWARDS:
        if kwargs.get("path") is None:
            raise ValueError(f"reward {name!r} loads a local model: give its path (config: reward.paths.{name}=/path/to/model)")
        if name == "aesthetic":
            kwargs["clip_path"] = kwargs.pop("path")
    elif "path" in kwargs:
        raise ValueError(f"reward {name!r} has no model weights and takes no path (got path={kwargs['path']!r})")
    if name == "http" and not kwargs.get("url"):
        raise ValueError("reward 'http' needs the server's url (config: reward.http_url=http://127.0.0.1:PORT)")
    reward_class = globals().get(REWARDS[name]) or __getattr__(REWARDS[name])
    return reward_class(**kwargs)


__all__ = [
    "REWARDS", "MODEL_REWARDS", "AestheticScore", "CLIPScore", "FrameReward", "HPSv2", "HTTPReward", "ImageReward", "JpegCompressibility",
    "JpegIncompressibility", "MLPHead", "ModelReward", "MovingShapesReward", "PickScore", "Reward", "RewardServer", "ShapesScore",
    "TemporalConsistency", "WeightedReward",
    "build_reward", "check_inputs", "check_rewards", "serve_reward",
]
