"""Argument validation shared by every backend. Errors name the argument and say what was expected."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def is_int(value) -> bool:
    """An int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_tensor(name: str, x, ndims: tuple[int, ...] | None = None, floating: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndims is not None and x.dim() not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if floating and x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor (fp32/fp16/bf16/fp64), got {x.dtype}")
    if x.dim() > 0 and x.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row, got shape {tuple(x.shape)}")


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raises on NaN/inf. Syncs the host once (reads one bool back)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values; check the sampler's outputs before pruning")


def check_group(name: str, batch: int, group_size) -> int:
    if not is_int(group_size) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if batch % group_size != 0:
        raise ValueError(
            f"{name} has {batch} rows, which is not divisible by group_size={group_size}; "
            "the batch must hold whole groups of consecutive rows"
        )
    return batch // group_size


def check_k(k, n: int) -> None:
    if not is_int(k) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] (the group size), got {k!r}")


def check_grid(grid, height: int, width: int) -> None:
    if not is_int(grid) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    if grid > min(height, width):
        raise ValueError(f"grid={grid} exceeds the latent's spatial size {height}x{width}; use grid <= {min(height, width)}")


def check_index(index, tensors) -> int:
    """Validates compact_'s arguments; returns the number of kept rows."""
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype != torch.int64:
        shape = tuple(index.shape) if isinstance(index, torch.Tensor) else type(index).__name__
        raise ValueError(f"index must be a 1-D int64 tensor, got {shape}")
    if not tensors:
        raise ValueError("compact_ needs at least one tensor to compact")
    rows = None
    for pos, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            raise ValueError(f"tensors[{pos}] must be a tensor with a batch dimension")
        if t.device != index.device:
            raise ValueError(f"tensors[{pos}] is on {t.device} but index is on {index.device}; move them to one device")
        rows = t.shape[0] if rows is None else rows
        if t.shape[0] != rows:
            raise ValueError(f"tensors[{pos}] has {t.shape[0]} rows but tensors[0] has {rows}; all must share the batch dimension")
    n = index.numel()
    if n > rows:
        raise ValueError(f"index has {n} entries but the tensors have only {rows} rows")
    return n


def check_index_values(index: torch.Tensor, rows: int) -> None:
    """index must be strictly ascending and inside [0, rows). Syncs the host once."""
    if index.numel() == 0:
        return
    ok = (index[0] >= 0) & (index[-1] < rows)
    if index.numel() > 1:
        ok = ok & (index[1:] > index[:-1]).all()
    if not bool(ok):
        raise ValueError(f"index must be strictly ascending row numbers in [0, {rows}), got {index.tolist()[:16]}...")
