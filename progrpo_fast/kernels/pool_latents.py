"""Adaptive average pooling of latents into small fp32 feature vectors.

Images (B, C, H, W) and videos (B, C, F, H, W) alike: a plane is the F frames (F = 1 for images)
of one (b, c), F*H*W contiguous values. One program per (plane, bin row): bin row gi covers input
rows floor(gi*H/g) .. ceil((gi+1)*H/g) of every frame (torch's adaptive bin edges; bands overlap
when H % g != 0; all frames share one temporal bin). The program streams its band of each frame
(a contiguous run of whole rows) in [BLOCK_H, BLOCK_W] tiles into a 2-D fp32 accumulator, reduces
it to column sums once, and folds the columns into the g bins of the row with a [G_PAD, BLOCK_W]
membership mask (bins along W may overlap too). It writes g fp32 means, sum / (F kh kw):
out[plane*g*g + gi*g + gj], i.e. the (B, C*g*g) feature buffer in channel-major order, the layout
of F.adaptive_avg_pool2d(x, g).flatten(1) (F.adaptive_avg_pool3d(x, (1, g, g)) for videos).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import next_pow2, warps_for

# Elements per tile load. 4096 bf16 = 8 KiB in flight per program (32 B per thread at 4 warps).
_TILE = 4096


@triton.jit
def _pool_latents_kernel(
    x_ptr,
    out_ptr,
    FRAMES,
    H,
    W,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)
    gi = tl.program_id(1)
    h_start = (gi * H) // G
    h_end = ((gi + 1) * H + G - 1) // G
    base = x_ptr + plane * FRAMES * H * W

    gj = tl.arange(0, G_PAD)
    w_start = (gj * W) // G
    w_end = ((gj + 1) * W + G - 1) // G
    acc = tl.zeros([G_PAD], dtype=tl.float32)
    for w0 in range(0, W, BLOCK_W):
        cols = w0 + tl.arange(0, BLOCK_W)
        col_ok = cols < W
        tile = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        frame = base
        for _ in range(0, FRAMES):
            for h0 in range(h_start, h_end, BLOCK_H):
                rows = h0 + tl.arange(0, BLOCK_H)
                mask = (rows < h_end)[:, None] & col_ok[None, :]
                ptrs = frame + rows[:, None].to(tl.int64) * W + cols[None, :]
                tile += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            frame += H * W
        col_sum = tl.sum(tile, axis=0)
        member = (cols[None, :] >= w_start[:, None]) & (cols[None, :] < w_end[:, None])
        acc += tl.sum(tl.where(member, col_sum[None, :], 0.0), axis=1)
    count = (FRAMES * (h_end - h_start) * (w_end - w_start)).to(tl.float32)
    tl.store(out_ptr + plane * (G * G) + gi * G + gj, acc / count, mask=gj < G)


def pool_latents(x: torch.Tensor, grid: int) -> torch.Tensor:
    """x (B, C, H, W) or (B, C, F, H, W) fp32/fp16/bf16(/fp64) -> (B, C*grid*grid) fp32 adaptive
    mean pool (a video's frames in one temporal bin)."""
    x = x.contiguous()
    b, c, h, w = x.shape[0], x.shape[1], x.shape[-2], x.shape[-1]
    frames = x.shape[2] if x.dim() == 5 else 1
    out = torch.empty(b, c * grid * grid, device=x.device, dtype=torch.float32)
    if out.numel() == 0:
        return out
    block_w = min(next_pow2(w), 1024)
    band = max(-(-(i + 1) * h // grid) - (i * h) // grid for i in range(grid))  # tallest bin
    block_h = max(1, min(next_pow2(band), _TILE // block_w))
    _pool_latents_kernel[(b * c, grid)](
        x,
        out,
        frames,
        h,
        w,
        G=grid,
        G_PAD=next_pow2(grid),
        BLOCK_H=block_h,
        BLOCK_W=block_w,
        num_warps=warps_for(block_h * block_w),
    )
    return out
