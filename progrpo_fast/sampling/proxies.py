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
    """What a proxy sees at a checkpoint: x0_hat (rows, *latent_shape), the call's P prompts and
    each row's index into them, each row's trajectory id, the rows per group before and after,
    the step, the rollout's seed (a 0-dim int64 device tensor) and a decode function (latents ->
    images in [0, 1])."""

    step: int
    x0_hat: torch.Tensor
    prompts: list[str]
    prompt_index: torch.Tensor
    trajectory_ids: torch.Tensor
    group_size: int
    keep: int
    seed: torch.Tensor | int
    decode: object

    @property
    def row_prompts(self) -> list[str]:
        """One prompt per row (reads prompt_index back: syncs the host; capturable proxies must not use it)."""
        return [self.prompts[i] for i in self.prompt_index.tolist()]


@dataclass
class Selection:
    """Survivor rows (P*keep,), ascending; scalar proxy scores per row (None for vector proxies);
    proxy variance of each whole group and of its kept subset (P,); the per-row features the
    proxy looked at (rows, D), when it learns from them after the rollout (else None)."""

    index: torch.Tensor
    scores: torch.Tensor | None
    variance_all: torch.Tensor
    variance_kept: torch.Tensor
    features: torch.Tensor | None = None


def select_by_scores(scores: torch.Tensor, ckpt: Checkpoint, features: torch.Tensor | None = None) -> Selection:
    index, var_all, var_kept = ops.prune_select(scores, ckpt.group_size, ckpt.keep, return_variance=True, check_finite=False)
    return Selection(index, scores, var_all, var_kept, features)


def select_by_features(features: torch.Tensor, ckpt: Checkpoint, grid: int, keep_features: bool = False) -> Selection:
    """Total-variance selection on latents (pooled on a grid x grid grid) or features (rows, D)."""
    index, var_all, var_kept = ops.prune_select(features, ckpt.group_size, ckpt.keep, grid, return_variance=True, check_finite=False)
    return Selection(index, None, var_all, var_kept, features if keep_features else None)


class LatentProxy:
    """Pooled x0_hat features, total-variance selection (one fused op)."""

    name = "latent"
    capturable = True

    def __init__(self, grid: int = 4):
        self.grid = grid

    def __call__(self, ckpt: Checkpoint) -> Selection:
        return select_by_features(ckpt.x0_hat, ckpt, self.grid)

    def graph_key(self):
        return self.grid


class RewardProxy:
    """The paper's proxy: decode x0_hat, score with reward_fn(images (B, 3, H, W) in [0, 1],
    prompts) -> (B,) rewards, exact scalar OVF. Host work (row prompts, the reward model's own
    preprocessing), so it runs between captured CUDA-graph segments, not inside them."""

    name = "reward"
    capturable = False

    def __init__(self, reward_fn, batch_size: int | None = None):
        self.reward_fn, self.batch_size = reward_fn, batch_size

    def __call__(self, ckpt: Checkpoint) -> Selection:
        rows = ckpt.x0_hat.shape[0]
        size = self.batch_size or rows
        prompts = ckpt.row_prompts
        scores = []
        for start in range(0, rows, size):
            images = ckpt.decode(ckpt.x0_hat[start : start + size])
            scores.append(torch.as_tensor(self.reward_fn(images, prompts[start : start + size]), dtype=torch.float32, device=ckpt.x0_hat.device))
        return select_by_scores(torch.cat(scores), ckpt)

    def graph_key(self):
        return None


class RandomProxy:
    """A uniformly random subset per group, keyed by (seed, trajectory id, step) (the control)."""

    name = "random"
    capturable = True

    def __call__(self, ckpt: Checkpoint) -> Selection:
        noise = keyed_noise(ckpt.seed, ckpt.trajectory_ids, ckpt.step + (1 << 20), (ckpt.trajectory_ids.shape[0], 1))
        order = noise.view(-1, ckpt.group_size).argsort(dim=1)[:, : ckpt.keep].sort(dim=1).values
        offsets = torch.arange(order.shape[0], device=order.device)[:, None] * ckpt.group_size
        index = (order + offsets).flatten()
        var_all = ops.group_variance(noise, ckpt.group_size, check_finite=False)
        return Selection(index, noise[:, 0], var_all, ops.group_variance(noise[index], ckpt.keep, check_finite=False))

    def graph_key(self):
        return None


@dataclass
class _RidgeProbe:
    """reward ~ [features, 1] @ weights, fitted by ridge regression on a bounded buffer (CPU,
    fp64). ``weights`` (D + 1,) fp32 lives on the features' device and is refitted in place, so
    a captured CUDA graph that reads it sees every refit."""

    features: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    weights: torch.Tensor | None = None

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        weights = self.weights
        return features @ weights[:-1] + weights[-1]


class ProbeProxy:
    """Linear probe from pooled x0_hat features (grid x grid mean pool) to the final reward.

    ``observe(rollout, final_rewards)`` after each rollout pairs the survivors' checkpoint
    features (kept in the rollout's prune log) with their true final rewards, reports the Spearman
    correlation of the current probe's predictions with them (before refitting: an out-of-sample
    figure), and refits w = (X^T X + ridge I)^-1 X^T y on the last ``buffer_size`` pairs. Until
    ``min_samples`` pairs exist the probe selects like the latent proxy."""

    name = "probe"
    capturable = True

    def __init__(self, grid: int = 4, ridge: float = 1.0, min_samples: int = 64, buffer_size: int = 4096):
        self.grid, self.ridge, self.min_samples, self.buffer_size = grid, ridge, min_samples, buffer_size
        self.probes: dict[int, _RidgeProbe] = {}
        self.spearman: dict[int, float] = {}

    def __call__(self, ckpt: Checkpoint) -> Selection:
        features = ops.pool_latents(ckpt.x0_hat, self.grid, check_finite=False)
        probe = self.probes.get(ckpt.step)
        if probe is None or probe.weights is None:
            return select_by_features(features, ckpt, self.grid, keep_features=True)
        if probe.weights.device != features.device:  # once, on the first (eager, uncaptured) call on this device
            probe.weights = probe.weights.to(features.device)
        return select_by_scores(probe.predict(features), ckpt, features)

    def graph_key(self):
        """The checkpoint steps whose probe is fitted (each switches latent selection to the probe)."""
        return self.grid, tuple(sorted(step for step, probe in self.probes.items() if probe.weights is not None))

    def observe(self, rollout, final_rewards: torch.Tensor) -> dict[int, float]:
        """Adds (checkpoint features, final reward) pairs of the rollout's survivors; returns the
        Spearman correlation per checkpoint step of the probe that made this rollout's choices."""
        report = {}
        survivors = rollout.trajectory_ids.cpu()
        for record in rollout.prune_log:
            if record.kept_features is None:
                continue
            kept = record.kept_ids.flatten().cpu()
            row_of = {int(t): r for r, t in enumerate(kept.tolist())}
            rows = torch.tensor([row_of[int(t)] for t in survivors.tolist()])
            x, y = record.kept_features.cpu()[rows].double(), final_rewards.double().cpu()
            probe = self.probes.setdefault(record.step, _RidgeProbe())
            if probe.weights is not None and y.numel() > 2:
                predicted = probe.predict(x.float().to(probe.weights.device)).double().cpu()
                report[record.step] = self.spearman[record.step] = spearman(predicted, y)
            probe.features.append(x)
            probe.rewards.append(y)
            stacked_x, stacked_y = torch.cat(probe.features)[-self.buffer_size :], torch.cat(probe.rewards)[-self.buffer_size :]
            probe.features, probe.rewards = [stacked_x], [stacked_y]
            if stacked_y.numel() >= self.min_samples:
                design = torch.cat([stacked_x, torch.ones_like(stacked_x[:, :1])], 1)
                gram = design.T @ design + self.ridge * torch.eye(design.shape[1], dtype=design.dtype)
                fitted = torch.linalg.solve(gram, design.T @ stacked_y).float()
                if probe.weights is None:
                    probe.weights = fitted.to(record.kept_features.device)
                else:
                    probe.weights.copy_(fitted)
        return report

    def state_dict(self) -> dict:
        return {step: {"features": p.features, "rewards": p.rewards, "weights": None if p.weights is None else p.weights.cpu()}
                for step, p in self.probes.items()}

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
