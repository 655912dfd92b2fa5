"""Pure-torch reference implementations: the specification every fast backend is tested against.

These functions take already-validated arguments (see ``progrpo_fast.ops`` for the public, checked
API). Selection runs in float64 so that the reference is exact up to genuine ties.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_latents(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*grid*grid) fp32: adaptive average pool (torch's bin edges
    floor(i*H/g) .. ceil((i+1)*H/g)), flattened channel-major. Videos (B, C, F, H, W) pool all F
    frames into one temporal bin: the 3-D adaptive pool to (1, grid, grid)."""
    if x.dim() == 5:
        return F.adaptive_avg_pool3d(x.float(), (1, grid, grid)).flatten(1)
    return F.adaptive_avg_pool2d(x.float(), grid).flatten(1)


def group_variance(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, ...) -> (B/G,) fp32 total variance per group: (1/G) sum_i ||f_i - mean_G||^2,
    i.e. the trace of the population covariance of the flattened rows."""
    f = x.reshape(x.shape[0] // group_size, group_size, -1).double()
    return (f - f.mean(1, keepdim=True)).square().sum(-1).mean(1).float()


def ovf_select(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(P, N) -> (P, k) int64, ascending: the exact max-variance k-subset of each row.

    Some optimal subset is the i smallest plus the k-i largest values; sort once and score the
    k+1 splits with prefix sums. Ties go to the lowest index (stable sort) and the first split."""
    p, n = scores.shape
    values, order = scores.double().sort(dim=1, stable=True)
    values = values - values.mean(1, keepdim=True)
    zero = values.new_zeros(p, 1)
    s1 = torch.cat([zero, values.cumsum(1)], 1)
    s2 = torch.cat([zero, values.square().cumsum(1)], 1)
    low = torch.arange(k + 1, device=scores.device)  # i smallest ...
    high = n - k + low  # ... plus the values from sorted position n-k+i on
    total = s1[:, low] + s1[:, n:] - s1[:, high]
    total_sq = s2[:, low] + s2[:, n:] - s2[:, high]
    var = total_sq / k - (total / k).square()
    if k == 1:  # every single value has variance 0: take the first split exactly, not by rounding noise
        var = torch.zeros_like(var)
    best = var.argmax(1, keepdim=True)
    pos = torch.arange(n, device=scores.device)
    keep = (pos < best) | (pos >= n - k + best)
    return first_k_ascending(torch.where(keep, order, n), k)


def variance_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """(P, N, D) -> (P, k) int64, ascending: a k-subset of each group with large total variance
    (1/(2k^2)) sum_{i,j in K} ||f_i - f_j||^2.

    D == 1 is the exact scalar OVF. Otherwise greedy max-dispersion: start from the farthest pair
    (first in row-major order on ties; k == 1 keeps its first member), then add the point with the
    largest summed squared distance to the chosen ones (lowest index on ties)."""
    p, n, d = features.shape
    if d == 1:
        return ovf_select(features[..., 0], k)
    if k == n:
        return torch.arange(n, device=features.device).expand(p, n).clone()
    dist2 = pairwise_sq_dists(features)
    upper = torch.ones(n, n, dtype=torch.bool, device=features.device).triu(1)
    flat = dist2.masked_fill(~upper, -1.0).flatten(1).argmax(1)
    rows = torch.arange(p, device=features.device)
    chosen = torch.zeros(p, n, dtype=torch.bool, device=features.device)
    chosen[rows, flat // n] = True
    if k > 1:
        chosen[rows, flat % n] = True
    for _ in range(k - 2):
        gain = (dist2 * chosen[:, None, :]).sum(-1).masked_fill(chosen, -1.0)
        chosen[rows, gain.argmax(1)] = True
    return first_k_ascending(torch.where(chosen, torch.arange(n, device=features.device), n), k)


def first_k_ascending(marked: torch.Tensor, k: int) -> torch.Tensor:
    """(P, N) int64 row indices with the N - k unchosen entries set to N -> (P, k) the chosen
    ones, ascending (a sort, not a data-dependent nonzero: no host sync, graph-capturable)."""
    return marked.sort(dim=1).values[:, :k]


def pairwise_sq_dists(features: torch.Tensor) -> torch.Tensor:
    """(P, N, D) -> (P, N, N) float64 squared distances, computed on group-centred features."""
    f = features.double()
    f = f - f.mean(1, keepdim=True)
    norms = f.square().sum(-1)
    return (norms[:, :, None] + norms[:, None, :] - 2 * f @ f.transpose(1, 2)).clamp_min(0)


def subset_variance(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(P, N, D), (P, k) -> (P,) fp32 total variance of each group's chosen subset."""
    picked = features.gather(1, index[:, :, None].expand(-1, -1, features.shape[2]))
    return group_variance(picked.flatten(0, 1), index.shape[1])


def features_of(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Latents (B, C, H, W) or (B, C, F, H, W) -> pooled features; features (B, D) as fp32;
    scores (B,) -> (B, 1)."""
    if x.dim() >= 4:
        return pool_latents(x, grid)
    return x.float().reshape(x.shape[0], -1)


def prune_select(x: torch.Tensor, group_size: int, k: int, grid: int):
    """Latents/features/scores of a whole batch -> (flat survivor rows (P*k,) ascending,
    total variance of each whole group (P,), total variance of each kept subset (P,))."""
    f = features_of(x, grid)
    groups = f.view(-1, group_size, f.shape[1])
    local = variance_select(groups, k)
    offsets = torch.arange(groups.shape[0], device=x.device)[:, None] * group_size
    return (local + offsets).flatten(), group_variance(f, group_size), subset_variance(groups, local)


def compact_(index: torch.Tensor, tensors) -> None:
    """Moves rows ``index`` (ascending) of every tensor to its front, in place."""
    n = index.numel()
    for t in tensors:
        t[:n] = t.index_select(0, index)
