"""Argument validation shared by every backend. Errors name the argument and say what was
expected and what was received (dtype, shape, device as relevant)."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def is_int(value) -> bool:
    """An int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def describe(x) -> str:
    """What a received argument is, for error messages: 'a 1-D torch.int32 tensor of shape (3,) on
    cpu', or the Python type and value of anything else."""
    if isinstance(x, torch.Tensor):
        return f"a {x.dim()}-D {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}"
    text = repr(x)
    return f"{type(x).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_tensor(name: str, x, ndims: tuple[int, ...] | None = None, floating: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {describe(x)}")
    if ndims is not None and x.dim() not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must have {want} dimensions, got {describe(x)}")
    if floating and x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor (fp32/fp16/bf16/fp64), got {describe(x)}")
    if x.dim() > 0 and x.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row, got {describe(x)}")


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raises on NaN/inf. Syncs the host once (reads one count back)."""
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(
            f"{name} must be finite but contains {bad} NaN or inf value(s) ({describe(x)}); "
            "check the sampler's outputs before pruning"
        )


def check_group(name: str, batch: int, group_size) -> int:
    if not is_int(group_size) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {describe(group_size)}")
    if batch % group_size != 0:
        raise ValueError(
            f"{name} has {batch} rows, which is not divisible by group_size={group_size}; "
            "the batch must hold whole groups of consecutive rows"
        )
    return batch // group_size


def check_k(k, n: int) -> None:
    if not is_int(k) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] (the group size), got {describe(k)}")


def check_grid(grid, height: int, width: int) -> None:
    if not is_int(grid) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {describe(grid)}")
    if grid > min(height, width):
        raise ValueError(f"grid={grid} exceeds the latent's spatial size {height}x{width}; use grid <= {min(height, width)}")


def check_int_index(name: str, index, ndim: int) -> None:
    """index must be an int64 tensor with ``ndim`` dimensions."""
    if not isinstance(index, torch.Tensor) or index.dim() != ndim or index.dtype != torch.int64:
        raise ValueError(f"{name} must be a {ndim}-D int64 tensor, got {describe(index)}")


def check_same_device(name: str, x: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if x.device != other.device:
        raise ValueError(f"{name} is on {x.device} but {other_name} is on {other.device}; move them to one device")


def check_index(index, tensors) -> int:
    """Validates compact_'s arguments; returns the number of kept rows."""
    check_int_index("index", index, 1)
    if not tensors:
        raise ValueError("compact_ needs at least one tensor to compact, got none")
    rows = None
    for pos, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            raise ValueError(f"tensors[{pos}] must be a tensor with a batch dimension (at least 1-D), got {describe(t)}")
        check_same_device(f"tensors[{pos}]", t, "index", index)
        rows = t.shape[0] if rows is None else rows
        if t.shape[0] != rows:
            raise ValueError(
                f"tensors[{pos}] has {t.shape[0]} rows (shape {tuple(t.shape)}) but tensors[0] has {rows}; "
                "all must share the batch dimension"
            )
    n = index.numel()
    if n > rows:
        raise ValueError(f"index has {n} entries but the tensors have only {rows} rows; expected at most {rows} entries")
    return n


def check_index_values(index: torch.Tensor, rows: int, name: str = "index") -> None:
    """index must be strictly ascending and inside [0, rows). Syncs the host once."""
    if index.numel() == 0:
        return
    ascending = (index[1:] > index[:-1]).all() if index.numel() > 1 else torch.ones((), dtype=torch.bool, device=index.device)
    low, high, ascending = torch.stack([index[0] >= 0, index[-1] < rows, ascending]).tolist()
    if not (low and high and ascending):
        why = "not strictly ascending" if not ascending else f"out of range: first {int(index[0])}, last {int(index[-1])}"
        shown = index[:16].tolist()
        raise ValueError(
            f"{name} must be strictly ascending row numbers in [0, {rows}), got {shown}{'...' if index.numel() > 16 else ''} "
            f"({why})"
        )


def byte_range(t: torch.Tensor) -> tuple[int, int] | None:
    """[first, last) bytes of memory that tensor ``t`` can touch, or None for a zero-size tensor.
    From metadata only (storage pointer, storage offset, strides, shape): no device sync."""
    if t.numel() == 0:
        return None
    size = t.element_size()
    start = t.untyped_storage().data_ptr() + t.storage_offset() * size
    span = sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) + 1
    return start, start + span * size


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b are the same view: one memory, shape, strides and dtype."""
    return (
        a.device == b.device
        and a.dtype == b.dtype
        and a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
    )


def alias_map(tensors) -> list[int]:
    """For each position, the first position holding the same view (itself when none). Raises
    ValueError naming both positions when two tensors share memory without being the same view
    (compacting them one after the other would move rows twice). Host-only metadata, no sync."""
    first = list(range(len(tensors)))
    ranges = [None if t.device.type == "meta" else byte_range(t) for t in tensors]
    for j in range(len(tensors)):
        if ranges[j] is None:
            continue
        for i in range(j):
            if ranges[i] is None or first[i] != i or tensors[i].device != tensors[j].device:
                continue
            if ranges[i][0] < ranges[j][1] and ranges[j][0] < ranges[i][1]:
                if same_view(tensors[i], tensors[j]):
                    first[j] = i
                    break
                raise ValueError(
                    f"tensors[{i}] and tensors[{j}] share memory (overlapping views of one storage: "
                    f"{describe(tensors[i])} and {describe(tensors[j])}); pass each buffer once"
                )
    return first
