"""Keyed standard normal noise in one launch: Philox4x32-10 + Box-Muller, bit for bit the torch
reference ``progrpo_fast.sampling.sde.keyed_noise`` (which takes about 100 torch ops per call).

One program per (row, tile of BLOCK Philox blocks). Block j of row b is Philox4x32-10 of counter
(j, traj_id low 32 bits, step, traj_id high 32 bits) under key (seed low, seed high); its 4 words
give the row's elements 4j .. 4j+3 as two Box-Muller pairs: words (0, 1) -> elements (4j, 4j+1),
words (2, 3) -> (4j+2, 4j+3). Every float operation is the reference's, in its order, correctly
rounded (div_rn, sqrt_rn) and launched with enable_fp_fusion=False, so no multiply-add is
contracted into an FMA: the bits equal the reference's on CPU (interpreter) and CUDA. The seed is
read from a device tensor, so one captured CUDA graph serves every seed.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .utils import next_pow2, warps_for

_BLOCKS_PER_PROGRAM = 1024  # Philox blocks (4 outputs each) per program

_LN2 = tl.constexpr(math.log(2.0))
_SQRT_HALF = tl.constexpr(math.sqrt(0.5))
_ANGLE_UNIT = tl.constexpr((math.pi / 2) / 2**22)


@triton.jit
def _philox_round(c0, c1, c2, c3, k0, k1):
    """One Philox4x32 round on uint32 words (multipliers 0xD2511F53, 0xCD9E8D57)."""
    hi0 = tl.umulhi(c0, 0xD2511F53)
    lo0 = c0 * 0xD2511F53
    hi1 = tl.umulhi(c2, 0xCD9E8D57)
    lo1 = c2 * 0xCD9E8D57
    return hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0


@triton.jit
def _log_unit(u):
    """ln(u), u fp32 in (0, 1], never subnormal: frexp by bits, then the reference's series."""
    bits = u.to(tl.uint32, bitcast=True)
    e = ((bits >> 23) & 0xFF).to(tl.int32) - 126
    m = ((bits & 0x007FFFFF) | 0x3F000000).to(tl.float32, bitcast=True)  # in [0.5, 1)
    low = m < _SQRT_HALF
    m = tl.where(low, m * 2, m)
    e = tl.where(low, e - 1, e).to(tl.float32)
    s = tl.div_rn(m - 1, m + 1)
    s2 = s * s
    series = (((s2 * (1 / 9) + 1 / 7) * s2 + 1 / 5) * s2 + 1 / 3) * s2 + 1
    return e * _LN2 + 2 * s * series


@triton.jit
def _cos_sin_quarter(phi):
    """cos, sin of phi in [0, pi/2]: the reference's Horner series (degrees 14 / 15)."""
    p2 = phi * phi
    cos = tl.full(phi.shape, 1.0, tl.float32)
    sin = tl.full(phi.shape, 1.0, tl.float32)
    for i in tl.static_range(7):  # n = 14 - 2i: cos takes 1 / (n (n - 1)), sin 1 / ((n + 1) n)
        cos = 1 - p2 * (1.0 / ((14 - 2 * i) * (13 - 2 * i))) * cos
        sin = 1 - p2 * (1.0 / ((15 - 2 * i) * (14 - 2 * i))) * sin
    return cos, phi * sin


@triton.jit
def _box_muller(radius_bits, angle_bits):
    u = ((radius_bits >> 8) + 1).to(tl.float32) * (1.0 / 16777216)
    r = tl.sqrt_rn(-2 * _log_unit(u))
    quadrant = angle_bits >> 30
    phi = ((angle_bits >> 8) & 0x3FFFFF).to(tl.float32) * _ANGLE_UNIT
    c, s = _cos_sin_quarter(phi)
    cos = tl.where(quadrant == 0, c, tl.where(quadrant == 1, -s, tl.where(quadrant == 2, -c, s)))
    sin = tl.where(quadrant == 0, s, tl.where(quadrant == 1, c, tl.where(quadrant == 2, -s, -c)))
    return r * cos, r * sin


@triton.jit
def _keyed_noise_kernel(out_ptr, traj_ptr, seed_ptr, step, per_row, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    traj = tl.load(traj_ptr + row)
    seed = tl.load(seed_ptr)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = (seed >> 32).to(tl.uint32)
    c0 = block.to(tl.uint32)
    c1 = tl.full([BLOCK], 0, tl.uint32) + (traj & 0xFFFFFFFF).to(tl.uint32)
    c2 = tl.full([BLOCK], step, tl.uint32)
    c3 = tl.full([BLOCK], 0, tl.uint32) + ((traj >> 32) & 0xFFFFFFFF).to(tl.uint32)
    for _ in tl.static_range(10):
        c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    z0, z1 = _box_muller(c0, c1)
    z2, z3 = _box_muller(c2, c3)
    first = block.to(tl.int64) * 4
    base = out_ptr + row * per_row + first
    tl.store(base, z0, mask=first < per_row)
    tl.store(base + 1, z1, mask=first + 1 < per_row)
    tl.store(base + 2, z2, mask=first + 2 < per_row)
    tl.store(base + 3, z3, mask=first + 3 < per_row)


def keyed_noise(seed: torch.Tensor, traj_ids: torch.Tensor, step: int, shape) -> torch.Tensor:
    """fp32 noise of ``shape`` = (B, ...) keyed by (seed, traj_ids[b], step); seed a 0-dim int64
    tensor on traj_ids' device, traj_ids (B,) int64 >= 0, step in [0, 2^32). Arguments arrive
    validated (see sde.keyed_noise)."""
    shape = tuple(shape)
    out = torch.empty(shape, device=traj_ids.device, dtype=torch.float32)
    per_row = out[0].numel() if shape[0] else 0
    if out.numel() == 0:
        return out
    blocks = -(-per_row // 4)
    block = min(next_pow2(blocks), _BLOCKS_PER_PROGRAM)
    _keyed_noise_kernel[(shape[0], triton.cdiv(blocks, block))](
        out, traj_ids.contiguous(), seed.reshape(1), step, per_row, BLOCK=block,
        num_warps=warps_for(4 * block), enable_fp_fusion=False,
    )
    return out
