"""Small host-side helpers shared by the kernel files (no kernels here)."""
from __future__ import annotations

import torch
import triton

# Element size in bytes -> the integer dtype compact_ reinterprets a tensor as (raw copies only).
INT_VIEW = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))

def warps_for(elements: int) -> int:
    """num_warps for a program that holds ``elements`` values in registers at once."""
    if elements >= 8192:
        return 8
    if elements >= 2048:
        return 4
    return 2 if elements >= 512 else 1
