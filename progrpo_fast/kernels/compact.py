"""In-place row compaction: rows index[j] -> row j for every tensor (index strictly ascending).

Any dtype: each tensor is reinterpreted as the integer type of its element size (8/4/2/1 bytes;
16-byte complex128 as pairs of int64) and copied raw, so values are moved bit-exactly.

Grid: column tiles of the flattened row (one program owns columns [c*BLOCK_C, (c+1)*BLOCK_C) of
every row). A program walks the destination rows j = 0..n-1 in batches of BLOCK_R: it loads the
[BLOCK_R, BLOCK_C] tile of source rows index[j0:j0+BLOCK_R], waits at a CTA barrier, and stores it
to rows j0:j0+BLOCK_R. Why this is exact in place: index[j] >= j (strictly ascending), so every
source row of a batch is >= the batch's first destination, i.e. no earlier batch has written it;
inside a batch all loads precede all stores (the barrier). Rows with index[j] == j are masked out
(no traffic). Programs own disjoint columns, so they never race. Bytes in flight per program per
batch are ~16 KiB whatever the dtype, and a row of latents (e.g. 16x128x128 bf16 = 512 KiB) gives
hundreds of programs, so the copy runs at HBM bandwidth rather than at one row per latency.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import INT_VIEW, next_pow2, warps_for

_BATCH_BYTES = 16384
_MIN_ROWS = 8


@triton.jit
def _compact_kernel(
    t_ptr,
    index_ptr,
    n,
    row_stride,
    row_len,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < row_len
    r = tl.arange(0, BLOCK_R)
    for j0 in range(0, n, BLOCK_R):
        j = j0 + r
        src = tl.load(index_ptr + j, mask=j < n, other=0)
        move = (j < n) & (src != j)
        mask = move[:, None] & col_ok[None, :]
        vals = tl.load(t_ptr + src[:, None] * row_stride + cols[None, :], mask=mask)
        tl.debug_barrier()
        tl.store(t_ptr + j[:, None].to(tl.int64) * row_stride + cols[None, :], vals, mask=mask)


def _raw_view(t: torch.Tensor):
    """(integer view, row stride, row length) in elements of the view, or None -> fallback."""
    if t.dim() == 0 or not t[0].is_contiguous():
        return None
    row_len = t[0].numel()
    stride = t.stride(0)
    size = t.element_size()
    try:
        if size in INT_VIEW:
            view = t.view(INT_VIEW[size])
        elif size == 16:
            view = t.view(torch.int64)
            row_len, stride = row_len * 2, stride * 2
        else:
            return None
    except RuntimeError:
        return None
    if t.shape[0] > 1 and stride < row_len:
        return None  # rows overlap (e.g. an expanded tensor)
    return view, stride, row_len


def compact_(index: torch.Tensor, tensors) -> None:
    """Moves rows ``index`` (strictly ascending int64, on the tensors' device) of every tensor to
    its front, in place."""
    n = index.numel()
    if n == 0:
        return
    index = index.contiguous()
    for t in tensors:
        if t.numel() == 0:
            continue
        raw = _raw_view(t)
        if raw is None:
            t[:n] = t.index_select(0, index)
            continue
        view, stride, row_len = raw
        tile = _BATCH_BYTES // view.element_size()
        block_c = min(next_pow2(row_len), max(1, tile // _MIN_ROWS))
        block_r = max(1, min(next_pow2(n), tile // block_c))
        _compact_kernel[(triton.cdiv(row_len, block_c),)](
            view,
            index,
            n,
            stride,
            row_len,
            BLOCK_R=block_r,
            BLOCK_C=block_c,
            num_warps=warps_for(block_r * block_c),
        )
