"""The reward names a config's reward.weights may use: the task-free rewards of
progrpo_fast.rewards and the tasks' own (the shapes task's ``shapes`` score and the moving-shape
video task's ``moving_shapes``). Joined here, at the training layer, so that rewards never import tasks."""
from __future__ import annotations

from progrpo_fast import rewards
from progrpo_fast.tasks.reward import ShapesScore
from progrpo_fast.tasks.shapes_video import MovingShapesReward

TASK_REWARDS = {"shapes": ShapesScore, "moving_shapes": MovingShapesReward}
REWARDS = {**rewards.REWARDS, **TASK_REWARDS}  # name -> class name in progrpo_fast.rewards or a Reward class


def build_reward(name: str, **kwargs):
    """progrpo_fast.rewards.build_reward over every name of REWARDS (the tasks' rewards included)."""
    return rewards.build_reward(name, registry=REWARDS, **kwargs)


__all__ = ["REWARDS", "TASK_REWARDS", "build_reward"]
