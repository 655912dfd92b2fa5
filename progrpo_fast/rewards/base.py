"""The reward interface, its input and output checks, and the weighted sum of several rewards.

A reward is a callable ``reward(images, prompts) -> (B,) float32`` with a ``name``: images are
(B, 3, H, W) floating point in [0, 1], prompts a list of B strings, and the result lies on the
images' device.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


def check_inputs(images, prompts, name: str = "reward", video: bool = False) -> None:
    """Raises ValueError unless images is a (B, 3, H, W) floating tensor in [0, 1] with B >= 1
    (with ``video`` also videos (B, 3, F, H, W)) and prompts a list of B strings. Syncs the host
    once (reads min and max back)."""
    ranks = (4, 5) if video else (4,)
    if not isinstance(images, torch.Tensor) or images.dim() not in ranks or images.shape[1] != 3 or images.shape[0] == 0:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        want = "(B, 3, H, W) or (B, 3, F, H, W)" if video else "(B, 3, H, W)"
        raise ValueError(f"{name}: images must be a {want} tensor with B >= 1, got {got}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: images must be floating point in [0, 1], got {images.dtype}")
    low, high = torch.aminmax(images.detach())
    low, high = float(low), float(high)
    if not (0.0 <= low and high <= 1.0):  # also false for NaN
        raise ValueError(f"{name}: images must lie in [0, 1], got values in [{low}, {high}] (NaN/inf count as outside)")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name}: prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{name}: got {len(prompts)} prompts for {images.shape[0]} images; pass one prompt per image")


def check_rewards(values, batch: int, name: str) -> torch.Tensor:
    """Returns ``values`` if it is a finite floating (batch,) tensor; otherwise raises ValueError
    naming the reward and what it returned."""
    if not isinstance(values, torch.Tensor):
        raise ValueError(f"reward {name!r} returned a {type(values).__name__}, expected a tensor of shape ({batch},)")
    if tuple(values.shape) != (batch,):
        raise ValueError(f"reward {name!r} returned shape {tuple(values.shape)} for {batch} images, expected ({batch},)")
    if not values.is_floating_point():
        raise ValueError(f"reward {name!r} returned dtype {values.dtype}, expected a floating point tensor")
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:8]
        raise ValueError(f"reward {name!r} returned {int(bad.sum())} non-finite value(s) of {batch}: rows {rows.tolist()} "
                         f"are {values[rows].tolist()}")
    return values


class Reward:
    """Base class: ``__call__`` checks the inputs and returns ``score(images, prompts)`` as
    float32 on the images' device. Subclasses set ``name`` and implement ``score``; video rewards
    (``progrpo_fast.rewards.video``) set ``accepts_video`` and take (B, 3, F, H, W)."""

    name = "reward"
    accepts_video = False

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_inputs(images, prompts, self.name, video=self.accepts_video)
        return self.score(images, list(prompts)).to(images.device, torch.float32)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class WeightedReward:
    """R = sum_r w_r * R_r. ``components`` returns each R_r (checked: finite, shape (B,)), for
    per-reward advantage aggregation; ``weights`` maps each name to w_r."""

    def __init__(self, weights: Mapping[str, float], rewards: Mapping[str, object]):
        if not weights:
            raise ValueError("WeightedReward needs at least one reward")
        if set(weights) != set(rewards):
            raise ValueError(f"weights name {sorted(weights)} but rewards are {sorted(rewards)}; give one weight per reward")
        for name, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"weight of reward {name!r} must be a finite number, got {weight!r}")
        self.weights = {name: float(weight) for name, weight in weights.items()}
        self.rewards = dict(rewards)
        self.name = " + ".join(f"{weight:g} * {name}" for name, weight in self.weights.items())

    def components(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        check_inputs(images, prompts, "WeightedReward", video=True)  # each reward checks its own input kind
        batch = images.shape[0]
        return {name: check_rewards(reward(images, prompts), batch, name).to(images.device, torch.float32)
                for name, reward in self.rewards.items()}

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        components = self.components(images, prompts)
        return sum(self.weights[name] * value for name, value in components.items())
