"""Total variance of each group of consecutive rows: (1/G) sum_i ||x_i - mean||^2.

Grid: P * chunks programs (1-D, program = p * chunks + chunk). A program owns ITERS column blocks of BLOCK_D columns of one group and
sums the centred squares of its columns; it writes one fp32 partial, and the host sums the
(P, chunks) partials in a fixed order (deterministic, no atomics, no sync).
- G <= BLOCK_G: the whole group's block sits in registers: exact two-pass centring per column.
- G > BLOCK_G: one pass over row blocks with shifted sums (shift = the group's first row),
  sum (x-s)^2 - (sum (x-s))^2 / G per column, which stays accurate because s is a sample.
Each row segment of a block is BLOCK_D contiguous elements: coalesced loads; the chunk count is
chosen so that there are enough programs (>= ~1000) to fill an H100 when D is large.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import next_pow2, warps_for

_TILE = 8192
_MAX_BLOCK_G = 64
_TARGET_PROGRAMS = 1024


@triton.jit
def _group_variance_kernel(
    x_ptr,
    part_ptr,
    G,
    D,
    n_chunks,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ITERS: tl.constexpr,
    SINGLE: tl.constexpr,
):
    pid = tl.program_id(0)
    chunk = pid % n_chunks
    p = (pid // n_chunks).to(tl.int64)
    base = x_ptr + p * G * D
    rows = tl.arange(0, BLOCK_G)
    total = tl.zeros([BLOCK_D], dtype=tl.float32)
    for it in tl.static_range(ITERS):
        cols = (chunk * ITERS + it) * BLOCK_D + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        if SINGLE:
            mask = (rows < G)[:, None] & col_ok[None, :]
            v = tl.load(base + rows[:, None].to(tl.int64) * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            mean = tl.sum(v, axis=0) / G
            dv = tl.where(mask, v - mean[None, :], 0.0)
            total += tl.sum(dv * dv, axis=0)
        else:
            shift = tl.load(base + cols, mask=col_ok, other=0.0).to(tl.float32)
            s1 = tl.zeros([BLOCK_D], dtype=tl.float32)
            s2 = tl.zeros([BLOCK_D], dtype=tl.float32)
            for g0 in range(0, G, BLOCK_G):
                r = g0 + rows
                mask = (r < G)[:, None] & col_ok[None, :]
                v = tl.load(base + r[:, None].to(tl.int64) * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                dv = tl.where(mask, v - shift[None, :], 0.0)
                s1 += tl.sum(dv, axis=0)
                s2 += tl.sum(dv * dv, axis=0)
            total += s2 - s1 * s1 / G
    tl.store(part_ptr + p * n_chunks + chunk, tl.sum(total, axis=0))


def group_variance(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """x (B, ...) -> (B/group_size,) fp32 total variance of each group of consecutive rows."""
    x = x.contiguous()
    b = x.shape[0]
    p = b // group_size
    d = x.numel() // b if b else 0
    if d == 0:
        return torch.zeros(p, device=x.device, dtype=torch.float32)
    block_g = min(next_pow2(group_size), _MAX_BLOCK_G)
    block_d = max(16, min(next_pow2(d), _TILE // block_g))
    blocks = triton.cdiv(d, block_d)
    iters = 1
    while iters < 8 and p * triton.cdiv(blocks, iters * 2) >= _TARGET_PROGRAMS:
        iters *= 2
    chunks = triton.cdiv(blocks, iters)
    part = torch.empty(p, chunks, device=x.device, dtype=torch.float32)
    _group_variance_kernel[(p * chunks,)](
        x,
        part,
        group_size,
        d,
        chunks,
        BLOCK_G=block_g,
        BLOCK_D=block_d,
        ITERS=iters,
        SINGLE=group_size <= block_g,
        num_warps=warps_for(block_g * block_d),
    )
    return part.sum(1) / group_size
