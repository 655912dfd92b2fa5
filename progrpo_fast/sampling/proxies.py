"""Proxies: what a checkpoint looks at to choose each group's survivors.

Every proxy sees the one-step clean estimates x0_hat of the current rows (already computed by the
previous step, no extra network evaluation) and returns flat survivor rows, ascending.

- ``latent``: pooled x0_hat features, total-variance selection, fused in ``ops.prune_select``.
- ``reward``: the paper's: decode x0_hat, score with the reward, exact scalar OVF.
- ``probe``: a ridge-regression probe from pooled x0_hat features to the final reward, fitted
  online on earlier rollouts' survivors (one probe per checkpoint step); ``latent`` until fitted.
- ``random``: a uniformly random subset (the control).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from progrpo_fast import ops
from progrpo_fast.sampling.sde import keyed_noise


@dataclass
class Checkpoint:
    """What a proxy sees at a checkpoint: x0_hat (rows, C, H, W), each row's prompt and
    trajectory id, the rows per group before and after, the step, the rollout's seed and a
    decode function (latents -> images in [0, 1])."""

    step: int
    x0_hat: torch.Tensor
    prompts: list[str]
    trajectory_ids: torch.Tensor
    group_size: int
    keep: int
    seed: int
    decode: object


@dataclass
class Selection:
    """Survivor rows (P*keep,), ascending; scalar proxy scores per row (None for vector proxies);
    proxy variance of each whole group and of its kept subset (P,)."""

    index: torch.Tensor
    scores: torch.Tensor | None
    variance_all: torch.Tensor
    variance_kept: torch.Tensor


def select_by_scores(scores: torch.Tensor, ckpt: Checkpoint) -> Selection:
    index, var_all, var_kept = ops.prune_select(scores, ckpt.group_size, ckpt.keep, return_variance=True)
    return Selection(index, scores, var_all, var_kept)


class LatentProxy:
    name = "latent"

    def __init__(self, grid: int = 4):
        self.grid = grid

    def __call__(self, ckpt: Checkpoint) -> Selection:
        index, var_all, var_kept = ops.prune_select(
            ckpt.x0_hat, ckpt.group_size, ckpt.keep, self.grid, return_variance=True, check_finite=False
        )
        return Selection(index, None, var_all, var_kept)


class RewardProxy:
    """reward_fn(images (B, 3, H, W) in [0, 1], prompts) -> (B,) rewards."""

    name = "reward"

    def __init__(self, reward_fn, batch_size: int | None = None):
        self.reward_fn, self.batch_size = reward_fn, batch_size

    def __call__(self, ckpt: Checkpoint) -> Selection:
        rows = ckpt.x0_hat.shape[0]
        size = self.batch_size or rows
        scores = []
        for start in range(0, rows, size):
            images = ckpt.decode(ckpt.x0_hat[start : start + size])
            scores.append(torch.as_tensor(self.reward_fn(images, ckpt.prompts[start : start + size]), dtype=torch.float32, device=ckpt.x0_hat.device))
        return select_by_scores(torch.cat(scores), ckpt)


class RandomProxy:
    name = "random"

    def __call__(self, ckpt: Checkpoint) -> Selection:
        noise = keyed_noise(ckpt.seed, ckpt.trajectory_ids, ckpt.step + (1 << 20), (ckpt.trajectory_ids.shape[0], 1))
        order = noise.view(-1, ckpt.group_size).argsort(dim=1)[:, : ckpt.keep].sort(dim=1).values
        offsets = torch.arange(order.shape[0], device=order.device)[:, None] * ckpt.group_size
        index = (order + offsets).flatten()
        var_all = ops.group_variance(noise, ckpt.group_size)
        return Selection(index, noise[:, 0], var_all, ops.group_variance(noise[index], ckpt.keep))


@dataclass
class _RidgeProbe:
    """reward ~ [features, 1] @ weights, fitted by ridge regression on a bounded buffer."""

    features: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    weights: torch.Tensor | None = None

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([features, torch.ones_like(features[:, :1])], 1) @ self.weights.to(features.device)


class ProbeProxy:
    """Linear probe from pooled x0_hat features (grid x grid mean pool) to the final reward.

    ``observe(trajectory_ids, final_rewards)`` after each rollout pairs the survivors' checkpoint
    features with their true final rewards, reports the Spearman correlation of the current probe's
    predictions with them (before refitting: an out-of-sample figure), and refits
    w = (X^T X + ridge I)^-1 X^T y on the last ``buffer_size`` pairs. Until ``min_samples`` pairs
    exist the probe selects like the latent proxy."""

    name = "probe"

    def __init__(self, grid: int = 4, ridge: float = 1.0, min_samples: int = 64, buffer_size: int = 4096):
        self.grid, self.ridge, self.min_samples, self.buffer_size = grid, ridge, min_samples, buffer_size
        self.probes: dict[int, _RidgeProbe] = {}
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # step -> (trajectory ids, features)
        self.spearman: dict[int, float] = {}

    def __call__(self, ckpt: Checkpoint) -> Selection:
        features = ops.pool_latents(ckpt.x0_hat, self.grid, check_finite=False)
        self.pending[ckpt.step] = (ckpt.trajectory_ids.clone(), features)
        probe = self.probes.get(ckpt.step)
        if probe is None or probe.weights is None:
            index, var_all, var_kept = ops.prune_select(features, ckpt.group_size, ckpt.keep, return_variance=True, check_finite=False)
            return Selection(index, None, var_all, var_kept)
        return select_by_scores(probe.predict(features), ckpt)

    def observe(self, trajectory_ids: torch.Tensor, final_rewards: torch.Tensor) -> dict[int, float]:
        """Adds (checkpoint features, final reward) pairs of the survivors; returns the Spearman
        correlation per checkpoint step of the probe that made this rollout's choices."""
        report = {}
        for step, (ids, features) in self.pending.items():
            row_of = {int(t): r for r, t in enumerate(ids.tolist())}
            rows = torch.tensor([row_of[int(t)] for t in trajectory_ids.tolist()], device=features.device)
            x, y = features[rows].double().cpu(), final_rewards.double().cpu()
            probe = self.probes.setdefault(step, _RidgeProbe())
            if probe.weights is not None and y.numel() > 2:
                report[step] = self.spearman[step] = spearman(probe.predict(x.float()).double(), y)
            probe.features.append(x)
            probe.rewards.append(y)
            stacked_x, stacked_y = torch.cat(probe.features)[-self.buffer_size :], torch.cat(probe.rewards)[-self.buffer_size :]
            probe.features, probe.rewards = [stacked_x], [stacked_y]
            if stacked_y.numel() >= self.min_samples:
                design = torch.cat([stacked_x, torch.ones_like(stacked_x[:, :1])], 1)
                gram = design.T @ design + self.ridge * torch.eye(design.shape[1], dtype=design.dtype)
                probe.weights = torch.linalg.solve(gram, design.T @ stacked_y).float()
        self.pending.clear()
        return report

    def state_dict(self) -> dict:
        return {step: {"features": p.features, "rewards": p.rewards, "weights": p.weights} for step, p in self.probes.items()}

    def load_state_dict(self, state: dict) -> None:
        self.probes = {int(step): _RidgeProbe(**value) for step, value in state.items()}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (average ranks on ties)."""

    def ranks(v: torch.Tensor) -> torch.Tensor:
        order = v.argsort()
        r = torch.empty_like(v, dtype=torch.float64)
        r[order] = torch.arange(v.numel(), dtype=torch.float64)
        for value in v.unique():  # average ranks of ties
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.square().sum() * rb.square().sum()).sqrt()
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


PROXIES = {"latent": LatentProxy, "reward": RewardProxy, "probe": ProbeProxy, "random": RandomProxy}
