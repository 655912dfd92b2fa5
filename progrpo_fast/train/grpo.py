"""GRPO objective pieces (Flow-GRPO conventions): group advantages, the clipped policy loss and
the KL penalty to the reference model, all in fp32."""
from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, *, std: str = "group", clip: float = 5.0, eps: float = 1e-4) -> torch.Tensor:
    """rewards (n,) of consecutive groups -> A_i = clip((R_i - mu_G) / (sigma_G + eps), -clip, clip).
    std: "group" (each group's std) or "global" (the batch's std); population std (1/G)."""
    if rewards.dim() != 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards must be (n,) with n divisible by group_size={group_size}, got {tuple(rewards.shape)}")
    if std not in ("group", "global"):
        raise ValueError(f"std must be 'group' or 'global', got {std!r}")
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(1, keepdim=True)
    scale = grouped.std(1, unbiased=False, keepdim=True) if std == "group" else rewards.float().std(unbiased=False)
    return (centred / (scale + eps)).clamp(-clip, clip).flatten()


def weighted_group_advantages(rewards: dict[str, torch.Tensor], weights: dict[str, float], group_size: int, **kwargs) -> torch.Tensor:
    """Per-reward advantage aggregation: sum_r w_r * A(R_r), each reward normalised in its group
    before weighting (so rewards on different scales count by their weights alone)."""
    return sum(weights[name] * group_advantages(value, group_size, **kwargs) for name, value in rewards.items())


def policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float):
    """Clipped surrogate, mean over rows of max(-A r, -A clip(r, 1-eps, 1+eps)), r = exp(logp - logp_old).
    Returns (loss, ratio, clip fraction)."""
    ratio = torch.exp(log_prob.float() - old_log_prob.float())
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    clip_fraction = ((ratio - 1).abs() > clip_range).float().mean()
    return loss, ratio.detach(), clip_fraction.detach()


def kl_to_reference(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(ref, std^2)) per row = mean over elements of ||mean - ref||^2 / (2 std^2)
    (averaged over the latent's elements like the log-probs); rows with std == 0 give 0."""
    std = std.float()
    safe = torch.where(std > 0, std, torch.ones_like(std))
    kl = (mean.float() - reference_mean.float()).square() / (2 * safe.square())
    kl = torch.where(std > 0, kl, torch.zeros_like(kl))
    return kl.flatten(1).mean(1)
