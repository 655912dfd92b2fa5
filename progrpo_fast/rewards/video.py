"""Rewards for videos (B, 3, F, H, W) in [0, 1]: any image reward applied per frame, and a
temporal-consistency term.

- ``FrameReward(image_reward, frame_stride)``: R = mean over the sampled frames f = 0, s, 2s, ...
  (s = frame_stride, < F) of image_reward(video[:, :, f]), one batched call per sampled frame.
- ``TemporalConsistency``: 1 - mean over consecutive frames of the mean absolute pixel change,
  1 - (1 / ((F - 1) 3 H W)) sum_t |x_{t+1} - x_t|, in [0, 1] (1: a still video; VBench's
  temporal-flickering score up to its 255 scale). It also lowers for motion, so weight it lightly
  next to rewards that ask for movement.
"""
from __future__ import annotations

import torch

from .base import Reward


def check_video(videos: torch.Tensor, name: str) -> None:
    if videos.dim() != 5:
        raise ValueError(f"{name}: videos must be (B, 3, F, H, W), got shape {tuple(videos.shape)}; image rewards take (B, 3, H, W)")


class FrameReward(Reward):
    """An image reward applied to every ``frame_stride``-th frame of each video, averaged."""

    accepts_video = True

    def __init__(self, image_reward, frame_stride: int = 4):
        if isinstance(frame_stride, bool) or not isinstance(frame_stride, int) or frame_stride < 1:
            raise ValueError(f"frame_stride must be an int >= 1, got {frame_stride!r}")
        if getattr(image_reward, "accepts_video", False):
            raise ValueError(f"{image_reward!r} already scores videos; FrameReward wraps image rewards")
        self.image_reward, self.frame_stride = image_reward, frame_stride
        self.name = getattr(image_reward, "name", "frames")

    def frames(self, num_frames: int) -> list[int]:
        """The sampled frame indices 0, s, 2s, ... < num_frames."""
        return list(range(0, num_frames, self.frame_stride))

    def score(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_video(videos, self.name)
        per_frame = [self.image_reward(videos[:, :, f], prompts).float().to(videos.device) for f in self.frames(videos.shape[2])]
        return torch.stack(per_frame).mean(0)


class TemporalConsistency(Reward):
    """1 - mean |x_{t+1} - x_t| over consecutive frames and pixels (see the module doc)."""

    name = "temporal_consistency"
    accepts_video = True

    def score(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_video(videos, self.name)
        if videos.shape[2] < 2:
            raise ValueError(f"{self.name}: a video needs at least 2 frames, got {videos.shape[2]}")
        return 1 - (videos[:, :, 1:].float() - videos[:, :, :-1].float()).abs().mean(dim=(1, 2, 3, 4))
