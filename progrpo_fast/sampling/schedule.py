"""Expand-and-prune schedules: how many trajectories per prompt run at each denoising step.

Semantics: pruning at checkpoint t happens BEFORE step t runs, i.e. after step t - 1 has produced
the latent that step t starts from. Steps 0 .. t_1 - 1 run with group_size_max rows per prompt,
steps t_j .. t_{j+1} - 1 with keep[j - 1] rows, and steps t_last .. num_steps - 1 with keep[-1]
(the final group size K, on which advantages are computed). Checkpoints lie in
[1, num_steps - 1): at least one step runs before the first pruning and two after the last.

String form (CLI, logs): ``"G_MAX:T1=K1,T2=K2@NUM_STEPS"``, e.g. ``"48:5=24,7=12@10"``; a naive
(unpruned) schedule is ``"G@NUM_STEPS"``, e.g. ``"24@10"``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from progrpo_fast.ops._checks import is_int

__all__ = ["PruneSchedule"]

MAX_SIZE = 2**31 - 1  # rows and steps index int32 buffers in the kernels
_STRING_FORM = re.compile(r"^\s*(\d+)\s*(?::\s*(\d+\s*=\s*\d+(?:\s*,\s*\d+\s*=\s*\d+)*))?\s*@\s*(\d+)\s*$")


@dataclass(frozen=True)
class PruneSchedule:
    """group_size_max: G_max rows per prompt at step 0; checkpoints: ascending step indices at
    which to prune (before that step runs); keep: rows per prompt kept at each checkpoint, strictly
    decreasing; num_steps: denoising steps in total."""

    group_size_max: int
    checkpoints: tuple[int, ...]
    keep: tuple[int, ...]
    num_steps: int

    def __post_init__(self):
        object.__setattr__(self, "checkpoints", tuple(self.checkpoints))
        object.__setattr__(self, "keep", tuple(self.keep))
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the offending field and what is expected."""
        for name in ("num_steps", "group_size_max"):
            value = getattr(self, name)
            if is_int(value) and value > MAX_SIZE:
                raise ValueError(f"{name} must be <= {MAX_SIZE} (a tensor dimension), got {value}")
        if not is_int(self.num_steps) or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {self.num_steps!r}")
        if not is_int(self.group_size_max) or self.group_size_max < 1:
            raise ValueError(f"group_size_max must be a positive int, got {self.group_size_max!r}")
        if len(self.checkpoints) != len(self.keep):
            raise ValueError("checkpoints and keep must have the same length (one keep count per checkpoint), "
                             f"got {len(self.checkpoints)} and {len(self.keep)}")
        for t in self.checkpoints:
            if not is_int(t) or not 1 <= t < self.num_steps - 1:
                raise ValueError(f"checkpoints must be ints in [1, num_steps - 1) = [1, {self.num_steps - 1}), "
                                 f"got {t!r} in {self.checkpoints}")
        if any(a >= b for a, b in zip(self.checkpoints, self.checkpoints[1:])):
            raise ValueError(f"checkpoints must be strictly ascending, got {self.checkpoints}")
        previous = self.group_size_max
        for k in self.keep:
            if not is_int(k) or not 1 <= k < previous:  # k < previous <= MAX_SIZE
                raise ValueError("keep must be strictly decreasing ints, each >= 1 and < the group size before it "
                                 f"(starting from group_size_max={self.group_size_max}), got {k!r} in {self.keep}")
            previous = k

    @property
    def final_group_size(self) -> int:
        """K: rows per prompt that finish the rollout (and get advantages and a backward pass)."""
        return self.keep[-1] if self.keep else self.group_size_max

    @property
    def is_naive(self) -> bool:
        """True when nothing is pruned (plain GRPO with group size group_size_max)."""
        return not self.checkpoints

    def keep_at(self, step: int) -> int | None:
        """Rows per prompt to keep before ``step`` runs, or None when ``step`` is no checkpoint."""
        return dict(zip(self.checkpoints, self.keep)).get(step)

    def sizes(self) -> list[int]:
        """Rows per prompt at each of the num_steps steps (pruning applied before checkpoint steps)."""
        sizes, size = [], self.group_size_max
        for step in range(self.num_steps):
            size = self.keep_at(step) or size
            sizes.append(size)
        return sizes

    def trajectory_steps(self, num_prompts: int = 1) -> int:
        """Model evaluations (row-steps) of one rollout of num_prompts prompts: num_prompts * sum(sizes())."""
        if not is_int(num_prompts) or num_prompts < 0:
            raise ValueError(f"num_prompts must be a non-negative int, got {num_prompts!r}")
        return num_prompts * sum(self.sizes())

    def __str__(self) -> str:
        prunes = ",".join(f"{t}={k}" for t, k in zip(self.checkpoints, self.keep))
        return f"{self.group_size_max}{':' + prunes if prunes else ''}@{self.num_steps}"

    @classmethod
    def from_string(cls, text: str) -> PruneSchedule:
        """Parses ``"G_MAX:T1=K1,T2=K2@NUM_STEPS"`` (or ``"G@NUM_STEPS"`` for no pruning)."""
        match = _STRING_FORM.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"prune schedule {text!r} must look like 'G_MAX:T1=K1,T2=K2@NUM_STEPS' (e.g. '48:5=24,7=12@10') "
                             "or 'G@NUM_STEPS' (e.g. '24@10')")
        group_size_max, prunes, num_steps = match.groups()
        pairs = [tuple(int(n) for n in pair.split("=")) for pair in prunes.split(",")] if prunes else []
        return cls(int(group_size_max), tuple(t for t, _ in pairs), tuple(k for _, k in pairs), int(num_steps))

    @classmethod
    def naive(cls, group_size: int, num_steps: int) -> PruneSchedule:
        """Plain GRPO: group_size rows per prompt for all num_steps steps."""
        return cls(group_size, (), (), num_steps)

    @classmethod
    def flow(cls) -> PruneSchedule:
        """Paper, SD3.5-M vs Flow-GRPO (G = 24): 48 -> 24 -> 12 at steps {5, 7} of 10."""
        return cls(48, (5, 7), (24, 12), 10)

    @classmethod
    def flash(cls) -> PruneSchedule:
        """Paper's "Flash" variant: 24 -> 16 -> 12 at steps {5, 7} of 10."""
        return cls(24, (5, 7), (16, 12), 10)

    @classmethod
    def diffusion(cls) -> PruneSchedule:
        """Paper, SD1.4 vs DanceGRPO (G = 16, 50 steps): 48 -> 32 -> 8 at steps {30, 40} of 50."""
        return cls(48, (30, 40), (32, 8), 50)
