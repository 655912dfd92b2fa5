"""The fused pruning op: latents / features / scores of a whole batch -> survivors' flat rows.

Two launches, no host sync, indices never leave the device:
1. latents (B, C, H, W) or (B, C, F, H, W): `_pool_latents_kernel` reads the latents exactly once and writes only the
   small (B, C*g*g) fp32 feature buffer (features (B, D) / scores (B,) skip this step);
2. one selection program per group: D == 1 -> the exact scalar OVF kernel, else the greedy
   max-dispersion kernel. Each program also writes its group's total variance and its kept subset's
   variance, and its survivors' flat rows p*group_size + local index, ascending.
All buffers are sized from shapes only, so the op is CUDA-graph capturable.
"""
from __future__ import annotations

import torch

from .ovf_select import launch_ovf
from .pool_latents import pool_latents
from .variance_select import launch_variance


def prune_select(x: torch.Tensor, group_size: int, k: int, grid: int):
    """-> (flat indices (P*k,) int64 ascending, var_all (P,) fp32, var_kept (P,) fp32)."""
    x = x.contiguous()
    b = x.shape[0]
    p = b // group_size
    features = pool_latents(x, grid) if x.dim() >= 4 else x.reshape(b, -1)
    d = features.shape[1]
    device = x.device
    idx = torch.empty(p * k, device=device, dtype=torch.int64)
    var_all = torch.empty(p, device=device, dtype=torch.float32)
    var_kept = torch.empty(p, device=device, dtype=torch.float32)
    if d == 1:
        launch_ovf(features, p, group_size, k, idx, var_all, var_kept, row_offset=group_size)
    else:
        launch_variance(features, p, group_size, d, k, idx, var_all, var_kept, row_offset=group_size)
    return idx, var_all, var_kept
