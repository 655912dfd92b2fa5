"""The shapes task's programmatic GenEval-like score behind the reward interface (see
`progrpo_fast.tasks.reward` for the formula): in [0, 1], 1 for an image that matches its caption."""
from __future__ import annotations

import torch

from progrpo_fast.tasks.reward import ShapesReward

from .base import Reward


class ShapesScore(Reward):
    """Wraps ShapesReward; keyword arguments go to it (thresholds, penalty)."""

    name = "shapes"

    def __init__(self, **kwargs):
        self.scorer = ShapesReward(**kwargs)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.scorer(images, prompts)
