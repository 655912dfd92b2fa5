"""Reward functions: reward(images (B, 3, H, W) fp32 in [0, 1], prompts list[str]) -> (B,) fp32
on the images' device, each with a ``name``; `build_reward(name, **kwargs)` makes one by name,
`WeightedReward` sums several, `check_rewards` validates what a reward returned.
This package knows no task: the tasks' rewards (``shapes``, ``moving_shapes``, in progrpo_fast.tasks)
join these names in `progrpo_fast.train.reward_registry`, whose ``build_reward`` a config's
reward.weights go through.

Model rewards load local weights only (``path=``, see each class); importing this package does
not import transformers (nor the HTTP libraries), and the modules with a command line (hps,
imagereward, service) load on first use, so that ``python -m progrpo_fast.rewards.service`` runs
them fresh. Names:
    jpeg_compressibility, jpeg_incompressibility   -/+ JPEG size in kB (DDPO)
    clipscore, pickscore, aesthetic                 CLIP-based (clip_rewards)
    hpsv2                                           HPSv2.1 (hps)
    imagereward                                     ImageReward (imagereward)
    http                                            a reward service on this or another node (http; service serves one)
    vlm_judge                                       a VLM's rating, mapped to [0, 1], from an OpenAI-compatible server (vlm)
    temporal_consistency                            1 - mean frame-to-frame pixel change of videos (video)
Image rewards score videos frame by frame through ``video.FrameReward``.
"""
from __future__ import annotations

import importlib

from .base import Reward, WeightedReward, check_inputs, check_rewards
from .clip_rewards import AestheticScore, CLIPScore, PickScore
from .jpeg import JpegCompressibility, JpegIncompressibility
from .modeling import MLPHead, ModelReward
from .video import FrameReward, TemporalConsistency

# name -> module of this package
_LAZY = {"HPSv2": "hps", "ImageReward": "imagereward", "HTTPReward": "http", "RewardServer": "service", "serve_reward": "service",
         "VLMJudge": "vlm"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


REWARDS = {  # name -> class name in this package
    "jpeg_compressibility": "JpegCompressibility",
    "jpeg_incompressibility": "JpegIncompressibility",
    "pickscore": "PickScore",
    "hpsv2": "HPSv2",
    "imagereward": "ImageReward",
    "clipscore": "CLIPScore",
    "aesthetic": "AestheticScore",
    "http": "HTTPReward",
    "vlm_judge": "VLMJudge",
    "temporal_consistency": "TemporalConsistency",
}
MODEL_REWARDS = ("pickscore", "hpsv2", "imagereward", "clipscore", "aesthetic")
SERVICE_REWARDS = {  # name -> (what it needs, the config keys that give it)
    "http": (("url",), "reward.http_url=http://HOST:PORT"),
    "vlm_judge": (("url", "model"), "reward.vlm_url=http://HOST:PORT and reward.vlm_model=NAME"),
}


def build_reward(name: str, *, registry: dict | None = None, **kwargs):
    """The reward called `name`, built with `kwargs`: ``path`` (and optionally ``tokenizer_path``,
    ``device``, ``dtype``) for the model rewards, ``url`` (and the client options) for "http",
    ``url`` and ``model`` for "vlm_judge", the scorer's options for
    "jpeg_*". ``registry``: name -> class name in this package or a Reward class (default
    REWARDS; progrpo_fast.train.reward_registry passes one with the tasks' rewards too)."""
    registry = REWARDS if registry is None else registry
    if name not in registry:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(registry)}")
    if name in MODEL_REWARDS:
        if kwargs.get("path") is None:
            raise ValueError(f"reward {name!r} loads a local model: give its path (config: reward.paths.{name}=/path/to/model)")
        if name == "aesthetic":
            kwargs["clip_path"] = kwargs.pop("path")
    elif "path" in kwargs:
        raise ValueError(f"reward {name!r} has no model weights and takes no path (got path={kwargs['path']!r})")
    if name in SERVICE_REWARDS:
        needs, keys = SERVICE_REWARDS[name]
        if not all(kwargs.get(need) for need in needs):
            raise ValueError(f"reward {name!r} needs {' and '.join(needs)} (config: {keys})")
    entry = registry[name]
    reward_class = entry if isinstance(entry, type) else globals().get(entry) or __getattr__(entry)
    return reward_class(**kwargs)


__all__ = [
    "REWARDS", "MODEL_REWARDS", "SERVICE_REWARDS", "AestheticScore", "CLIPScore", "FrameReward", "HPSv2", "HTTPReward", "ImageReward",
    "JpegCompressibility", "JpegIncompressibility", "MLPHead", "ModelReward", "PickScore", "Reward", "RewardServer",
    "TemporalConsistency", "VLMJudge", "WeightedReward",
    "build_reward", "check_inputs", "check_rewards", "serve_reward",
]
