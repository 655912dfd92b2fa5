"""Greedy max-dispersion subset selection for D-dim features (D == 1: the exact scalar OVF).

Reference semantics (progrpo_fast.ops.reference.variance_select): squared distances of the
group-centred features; start from the farthest pair (first in row-major order over i < j; k == 1
keeps its first member), then k-2 times add the point with the largest summed squared distance to
the chosen ones (lowest index on ties); k == N keeps all.

Small groups (N_PAD <= 128, the real case: 16..96 trajectories) - one program per group, all in
registers (`_variance_select_kernel`):
  - loop over BLOCK_D feature columns: load the [N_PAD, BLOCK_D] block (rows are the group's
    trajectories, columns contiguous), centre it per column, accumulate row norms and the Gram
    matrix with tl.dot(input_precision="ieee") (true fp32 FMA, never tf32);
  - dist2 = n_i + n_j - 2 G_ij (>= 0, zero diagonal) stays in registers ([N_PAD, N_PAD]);
  - farthest pair = the first row holding the global maximum of the upper triangle, then the first
    column of that row; each greedy step recomputes gain = row sums of dist2 over chosen columns
    (the reference's order of summation) and takes tl.argmax (lowest index on ties);
  - writes ascending indices (+ p * row_offset), and optionally the group's total variance
    (sum of centred norms / N) and the kept subset's ((1/(2k^2)) sum_{i,j in K} dist2_ij).
Large groups (N_PAD > 128) - `_variance_select_big_kernel`, still one program per group: dist2 is
built tile by tile into a global scratch (P, N, N) fp32, then (after a CTA barrier) scanned in row
blocks for the farthest pair and the total, and the greedy keeps only the gain vector in registers,
adding one dist2 row (from L2) per step.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .ovf_select import launch_ovf
from .utils import next_pow2

REGISTER_MAX_N = 128
_BIG_TILE = 64
_TILE = 4096


@triton.jit
def _variance_select_kernel(
    f_ptr,
    idx_ptr,
    var_all_ptr,
    var_kept_ptr,
    N,
    D,
    K,
    row_offset,
    N_PAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ALL: tl.constexpr,
    WRITE_VAR: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    base = f_ptr + p * N * D
    rows = tl.arange(0, N_PAD)
    valid = rows < N
    norms = tl.zeros([N_PAD], dtype=tl.float32)
    gram = tl.zeros([N_PAD, N_PAD], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (cols < D)[None, :]
        f = tl.load(base + rows[:, None].to(tl.int64) * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(f, axis=0) / N
        fc = tl.where(mask, f - mean[None, :], 0.0)
        norms += tl.sum(fc * fc, axis=1)
        if not ALL:
            gram = tl.dot(fc, tl.trans(fc), gram, input_precision="ieee")
    var_all = tl.sum(norms, axis=0) / N

    if ALL:
        chosen = valid
        var_kept = var_all
    else:
        pair = valid[:, None] & valid[None, :]
        dist = tl.maximum(norms[:, None] + norms[None, :] - 2.0 * gram, 0.0)
        dist = tl.where(pair & (rows[:, None] != rows[None, :]), dist, 0.0)
        cand = tl.where(pair & (rows[:, None] < rows[None, :]), dist, -1.0)
        row_max = tl.max(cand, axis=1)
        a = tl.argmax(row_max, axis=0).to(tl.int32)
        b = tl.argmax(tl.max(tl.where(rows[:, None] == a, cand, -2.0), axis=0), axis=0).to(tl.int32)
        chosen = (rows == a) | ((rows == b) & (K > 1))
        for _ in range(K - 2):
            gain = tl.sum(tl.where(chosen[None, :], dist, 0.0), axis=1)
            gain = tl.where(chosen | (rows >= N), -1.0, gain)
            j = tl.argmax(gain, axis=0).to(tl.int32)
            chosen = chosen | (rows == j)
        kept_sum = tl.sum(tl.sum(tl.where(chosen[:, None] & chosen[None, :], dist, 0.0), axis=1), axis=0)
        var_kept = kept_sum / (2.0 * K * K)

    flag = chosen.to(tl.int32)
    pos = tl.cumsum(flag, axis=0) - flag
    tl.store(idx_ptr + p * K + pos, rows.to(tl.int64) + p * row_offset, mask=chosen)
    if WRITE_VAR:
        tl.store(var_all_ptr + p, var_all)
        tl.store(var_kept_ptr + p, var_kept)


@triton.jit
def _variance_select_big_kernel(
    f_ptr,
    mean_ptr,
    dist_ptr,
    idx_ptr,
    var_all_ptr,
    var_kept_ptr,
    N,
    D,
    K,
    row_offset,
    N_PAD: tl.constexpr,
    BT: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    WRITE_VAR: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    base = f_ptr + p * N * D
    mean_base = mean_ptr + p * D
    dist_base = dist_ptr + p * N * N
    t = tl.arange(0, BT)

    # pass 1: dist2 tiles of the centred features -> global scratch
    for i0 in range(0, N, BT):
        ri = i0 + t
        for j0 in range(0, N, BT):
            rj = j0 + t
            gram = tl.zeros([BT, BT], dtype=tl.float32)
            ni = tl.zeros([BT], dtype=tl.float32)
            nj = tl.zeros([BT], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                col_ok = cols < D
                mu = tl.load(mean_base + cols, mask=col_ok, other=0.0)
                mi = (ri < N)[:, None] & col_ok[None, :]
                mj = (rj < N)[:, None] & col_ok[None, :]
                fi = tl.load(base + ri[:, None].to(tl.int64) * D + cols[None, :], mask=mi, other=0.0).to(tl.float32)
                fj = tl.load(base + rj[:, None].to(tl.int64) * D + cols[None, :], mask=mj, other=0.0).to(tl.float32)
                fi = tl.where(mi, fi - mu[None, :], 0.0)
                fj = tl.where(mj, fj - mu[None, :], 0.0)
                ni += tl.sum(fi * fi, axis=1)
                nj += tl.sum(fj * fj, axis=1)
                gram = tl.dot(fi, tl.trans(fj), gram, input_precision="ieee")
            dist = tl.maximum(ni[:, None] + nj[None, :] - 2.0 * gram, 0.0)
            dist = tl.where(ri[:, None] == rj[None, :], 0.0, dist)
            ok = (ri < N)[:, None] & (rj < N)[None, :]
            tl.store(dist_base + ri[:, None].to(tl.int64) * N + rj[None, :], dist, mask=ok)
    tl.debug_barrier()

    # pass 2: farthest pair (first in row-major order) and the total of dist2
    cols = tl.arange(0, N_PAD)
    valid = cols < N
    best = tl.full([], -1.0, tl.float32)
    a = tl.full([], 0, tl.int32)
    b = tl.full([], 0, tl.int32)
    total = tl.zeros([N_PAD], dtype=tl.float32)
    for r0 in range(0, N, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        ok = (r < N)[:, None] & valid[None, :]
        tile = tl.load(dist_base + r[:, None].to(tl.int64) * N + cols[None, :], mask=ok, other=0.0)
        total += tl.sum(tile, axis=0)
        cand = tl.where(ok & (r[:, None] < cols[None, :]), tile, -1.0)
        row_max = tl.max(cand, axis=1)
        m = tl.max(row_max, axis=0)
        ra = tl.argmax(row_max, axis=0).to(tl.int32)
        rb = tl.argmax(tl.max(tl.where(tl.arange(0, BLOCK_R)[:, None] == ra, cand, -2.0), axis=0), axis=0).to(tl.int32)
        better = m > best
        a = tl.where(better, r0 + ra, a)
        b = tl.where(better, rb, b)
        best = tl.where(better, m, best)
    var_all = tl.sum(total, axis=0) / (2.0 * N * N)

    # greedy: gain_i = sum over chosen j of dist2_ij, one row added per step
    chosen = (cols == a) | ((cols == b) & (K > 1))
    gain = tl.load(dist_base + a.to(tl.int64) * N + cols, mask=valid, other=0.0)
    gain += tl.load(dist_base + b.to(tl.int64) * N + cols, mask=valid & (K > 1), other=0.0)
    for _ in range(K - 2):
        j = tl.argmax(tl.where(chosen | (cols >= N), -1.0, gain), axis=0).to(tl.int32)
        chosen = chosen | (cols == j)
        gain += tl.load(dist_base + j.to(tl.int64) * N + cols, mask=valid, other=0.0)
    var_kept = tl.sum(tl.where(chosen, gain, 0.0), axis=0) / (2.0 * K * K)

    flag = chosen.to(tl.int32)
    pos = tl.cumsum(flag, axis=0) - flag
    tl.store(idx_ptr + p * K + pos, cols.to(tl.int64) + p * row_offset, mask=chosen)
    if WRITE_VAR:
        tl.store(var_all_ptr + p, var_all)
        tl.store(var_kept_ptr + p, var_kept)


def launch_variance(features, p, n, d, k, idx, var_all=None, var_kept=None, row_offset=0):
    """Runs the selection on contiguous features holding p groups of n rows of d values (d > 1);
    writes idx (p*k int64) and, when given, var_all / var_kept (p fp32)."""
    write_var = var_all is not None
    var_all_arg = var_all if write_var else idx
    var_kept_arg = var_kept if write_var else idx
    n_pad = max(16, next_pow2(n))
    if n_pad <= REGISTER_MAX_N:
        block_d = max(16, min(64, next_pow2(d), 2048 // n_pad))
        _variance_select_kernel[(p,)](
            features,
            idx,
            var_all_arg,
            var_kept_arg,
            n,
            d,
            k,
            row_offset,
            N_PAD=n_pad,
            BLOCK_D=block_d,
            ALL=k == n,
            WRITE_VAR=write_var,
            num_warps=8 if n_pad >= 128 else 4,
        )
        return
    if k == n:  # keep all: no distances needed
        local = torch.arange(n, device=features.device, dtype=torch.int64)
        offsets = torch.arange(p, device=features.device, dtype=torch.int64)[:, None] * row_offset
        idx.view(p, n).copy_(local[None, :] + offsets)
        if write_var:
            from .group_variance import group_variance

            var_all.copy_(group_variance(features.reshape(p * n, d), n))
            var_kept.copy_(var_all)
        return
    mean = features.reshape(p, n, d).float().mean(1)
    dist = torch.empty(p, n, n, device=features.device, dtype=torch.float32)
    block_r = max(1, min(next_pow2(n), _TILE // next_pow2(n)))
    _variance_select_big_kernel[(p,)](
        features,
        mean,
        dist,
        idx,
        var_all_arg,
        var_kept_arg,
        n,
        d,
        k,
        row_offset,
        N_PAD=next_pow2(n),
        BT=_BIG_TILE,
        BLOCK_D=32,
        BLOCK_R=block_r,
        WRITE_VAR=write_var,
        num_warps=8,
    )


def variance_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """features (P, N, D) -> int64 (P, k), ascending: exact OVF for D == 1, greedy max-dispersion
    otherwise; k == N keeps all."""
    features = features.contiguous()
    p, n, d = features.shape
    idx = torch.empty(p, k, device=features.device, dtype=torch.int64)
    if d == 1:
        launch_ovf(features, p, n, k, idx)
    else:
        launch_variance(features, p, n, d, k, idx)
    return idx
