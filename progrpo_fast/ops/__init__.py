"""Public pruning ops, importable by any sampler.

Every op takes and returns tensors on the caller's device, validates its arguments (ValueError
naming the argument), and dispatches to a backend (see ``progrpo_fast.ops.backends``). Only the value
checks sync the host: pass ``check_finite=False`` (and for ``compact_``, ``check_values=False``)
inside CUDA-graph capture or other sync-free code.
"""
from __future__ import annotations

import torch

from progrpo_fast.ops import _checks, backends

__all__ = ["pool_latents", "group_variance", "ovf_select", "variance_select", "prune_select", "compact_"]


def pool_latents(x: torch.Tensor, grid: int = 4, *, backend: str | None = None, check_finite: bool = True) -> torch.Tensor:
    """Images x (B, C, H, W) or videos (B, C, F, H, W) -> (B, C*grid*grid) fp32 adaptive mean pool
    over a grid x grid spatial grid (torch's bin edges), a video's F frames all in one bin:
    out[b, c, i, j] = (1 / (F kh kw)) sum_{f, h in bin i, w in bin j} x[b, c, f, h, w]."""
    _checks.check_tensor("x", x, ndims=(4, 5))
    _checks.check_grid(grid, x.shape[-2], x.shape[-1])
    if check_finite:
        _checks.check_finite("x", x)
    return backends.choose(x.device, backend).pool_latents(x.contiguous(), grid)


def group_variance(x: torch.Tensor, group_size: int, *, backend: str | None = None, check_finite: bool = True) -> torch.Tensor:
    """x (B, ...) -> (B/group_size,) fp32 total variance (1/G) sum_i ||x_i - mean||^2 of each
    group of consecutive rows."""
    _checks.check_tensor("x", x)
    _checks.check_group("x", x.shape[0], group_size)
    if check_finite:
        _checks.check_finite("x", x)
    return backends.choose(x.device, backend).group_variance(x.contiguous(), group_size)


def ovf_select(scores: torch.Tensor, k: int, *, backend: str | None = None, check_finite: bool = True) -> torch.Tensor:
    """scores (P, N) -> int64 (P, k): the exact max-variance k-subset of each row (Optimal
    Variance Filtering), indices ascending within each row."""
    _checks.check_tensor("scores", scores, ndims=(2,))
    _checks.check_k(k, scores.shape[1])
    if check_finite:
        _checks.check_finite("scores", scores)
    return backends.choose(scores.device, backend).ovf_select(scores.contiguous(), k)


def variance_select(features: torch.Tensor, k: int, *, backend: str | None = None, check_finite: bool = True) -> torch.Tensor:
    """features (P, N, D) -> int64 (P, k): a k-subset of each group with large total variance;
    exact for D = 1, greedy max-dispersion otherwise. Indices ascending within each row."""
    _checks.check_tensor("features", features, ndims=(3,))
    _checks.check_k(k, features.shape[1])
    if check_finite:
        _checks.check_finite("features", features)
    return backends.choose(features.device, backend).variance_select(features.contiguous(), k)


def prune_select(
    x: torch.Tensor,
    group_size: int,
    k: int,
    grid: int = 4,
    *,
    return_variance: bool = False,
    backend: str | None = None,
    check_finite: bool = True,
):
    """The fused pruning op. x is a whole batch of consecutive groups: latents or x0 estimates
    (B, C, H, W) or video latents (B, C, F, H, W) (pooled to C*grid*grid features as in
    ``pool_latents``), features (B, D), or scalar scores (B,).

    Returns the survivors' flat row indices (P*k,) int64, ascending, on x's device; with
    ``return_variance`` also the total feature variance of each whole group and of its kept
    subset, both (P,) fp32."""
    _checks.check_tensor("x", x, ndims=(1, 2, 4, 5))
    _checks.check_group("x", x.shape[0], group_size)
    _checks.check_k(k, group_size)
    if x.dim() >= 4:
        _checks.check_grid(grid, x.shape[-2], x.shape[-1])
    if check_finite:
        _checks.check_finite("x", x)
    index, var_all, var_kept = backends.choose(x.device, backend).prune_select(x.contiguous(), group_size, k, grid)
    return (index, var_all, var_kept) if return_variance else index


def compact_(index: torch.Tensor, *tensors: torch.Tensor, backend: str | None = None, check_values: bool = True):
    """Moves rows ``index`` (strictly ascending) of every tensor to its front, in place, and
    returns the views of the first len(index) rows (one tensor, or a tuple for several).
    Any dtype; rows may overlap their destinations."""
    n = _checks.check_index(index, tensors)
    if check_values:
        _checks.check_index_values(index, tensors[0].shape[0])
    backends.choose(index.device, backend).compact_(index, list(tensors))
    views = tuple(t[:n] for t in tensors)
    return views[0] if len(views) == 1 else views
