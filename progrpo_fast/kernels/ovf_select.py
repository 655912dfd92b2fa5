"""Exact scalar Optimal Variance Filtering: the max-variance k-subset of each row of scores.

One program per group (row of P x N scores); everything stays in registers:
1. ranks: rank_i = #{j : v_j < v_i or (v_j == v_i and j < i)} (a stable sort's positions), from
   [N_PAD, BLOCK_J] comparison tiles over column blocks of the row, on the raw values (fp32, or
   fp64 for fp64 input), so ties go to the lowest index exactly as torch's stable sort;
2. splits: split s in 0..k keeps ranks < s plus ranks >= N-k+s (the s smallest and k-s largest);
   its variance is computed two-pass from masked sums over [BLOCK_S, N_PAD] tiles of the
   group-centred values (no prefix-sum cancellation), and the first split with the largest variance
   wins (strict > across split blocks, tl.argmax's lowest index inside one);
3. output: the chosen mask, written in ascending index order at position = exclusive cumsum of
   the mask, plus row_offset * p (prune_select's flat row numbers). Optionally the group's total
   variance and the kept subset's variance.
N_PAD = next_pow2(N); BLOCK_J / BLOCK_S keep every tile at <= 4096 elements, so N up to a few
thousand works (with more loop trips); N <= 64 is one tile each.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import next_pow2, warps_for

_TILE = 4096


@triton.jit
def _ovf_select_kernel(
    s_ptr,
    idx_ptr,
    var_all_ptr,
    var_kept_ptr,
    N,
    K,
    row_offset,
    ACC: tl.constexpr,
    N_PAD: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_S: tl.constexpr,
    WRITE_VAR: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    base = s_ptr + p * N
    offs = tl.arange(0, N_PAD)
    valid = offs < N
    v = tl.load(base + offs, mask=valid, other=0.0).to(ACC)
    mean = tl.sum(v, axis=0) / N
    vc = tl.where(valid, v - mean, 0.0)

    # 1. stable ranks
    rank = tl.zeros([N_PAD], dtype=tl.int32)
    for j0 in range(0, N, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        vj = tl.load(base + j, mask=j < N, other=0.0).to(ACC)
        before = (vj[None, :] < v[:, None]) | ((vj[None, :] == v[:, None]) & (j[None, :] < offs[:, None]))
        before = before & (j < N)[None, :]
        rank += tl.sum(before.to(tl.int32), axis=1)

    # 2. the k+1 splits
    best_var = tl.full([], -1.0, ACC)
    best_s = tl.full([], 0, tl.int32)
    for s0 in range(0, K + 1, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        member = (rank[None, :] < s[:, None]) | (rank[None, :] >= (N - K + s)[:, None])
        member = member & valid[None, :]
        mean_k = tl.sum(tl.where(member, vc[None, :], 0.0), axis=1) / K
        dev = tl.where(member, vc[None, :] - mean_k[:, None], 0.0)
        var = tl.sum(dev * dev, axis=1) / K
        var = tl.where(s <= K, var, -1.0)
        block_best = tl.max(var, axis=0)
        block_arg = tl.argmax(var, axis=0).to(tl.int32)
        better = block_best > best_var
        best_s = tl.where(better, s0 + block_arg, best_s)
        best_var = tl.where(better, block_best, best_var)

    # 3. ascending output
    chosen = ((rank < best_s) | (rank >= N - K + best_s)) & valid
    flag = chosen.to(tl.int32)
    pos = tl.cumsum(flag, axis=0) - flag
    tl.store(idx_ptr + p * K + pos, offs.to(tl.int64) + p * row_offset, mask=chosen)
    if WRITE_VAR:
        tl.store(var_all_ptr + p, (tl.sum(vc * vc, axis=0) / N).to(tl.float32))
        tl.store(var_kept_ptr + p, best_var.to(tl.float32))


def launch_ovf(scores, p, n, k, idx, var_all=None, var_kept=None, row_offset=0):
    """Runs the kernel on contiguous scores holding p rows of n values; writes idx (p*k int64) and,
    when given, var_all / var_kept (p fp32)."""
    n_pad = next_pow2(n)
    block_j = max(1, min(n_pad, _TILE // n_pad))
    block_s = max(1, min(next_pow2(k + 1), _TILE // n_pad))
    write_var = var_all is not None
    _ovf_select_kernel[(p,)](
        scores,
        idx,
        var_all if write_var else idx,
        var_kept if write_var else idx,
        n,
        k,
        row_offset,
        ACC=tl.float64 if scores.dtype == torch.float64 else tl.float32,
        N_PAD=n_pad,
        BLOCK_J=block_j,
        BLOCK_S=block_s,
        WRITE_VAR=write_var,
        num_warps=warps_for(n_pad * max(block_j, block_s)),
    )


def ovf_select(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores (P, N) -> int64 (P, k): exact OVF subsets, indices ascending in each row."""
    scores = scores.contiguous()
    p, n = scores.shape
    idx = torch.empty(p, k, device=scores.device, dtype=torch.int64)
    launch_ovf(scores, p, n, k, idx)
    return idx
