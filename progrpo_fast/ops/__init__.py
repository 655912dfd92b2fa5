"""Public pruning ops, importable by any sampler.

Every op takes and returns tensors on the caller's device, validates its arguments (ValueError
naming the argument, what it expected and what it got), and dispatches to a backend (see
``progrpo_fast.ops.backends``). Only the value checks sync the host: pass ``check_finite=False``
(and for ``compact_``, ``check_values=False``) inside CUDA-graph capture or other sync-free code.

check_finite=False: garbage in, garbage out (NaN/inf rows are selected arbitrarily); use it only in
sync-free code and check the results once per rollout, e.g. accumulate ``all_finite(...)`` flags
on the device and read them once.
"""
from __future__ import annotations

import warnings

import torch

from progrpo_fast.ops import _checks, backends

__all__ = [
    "pool_latents",
    "group_variance",
    "ovf_select",
    "ovf_select_rows",
    "group_rows",
    "variance_select",
    "prune_select",
    "prune_select_grouped",
    "compact_",
    "all_finite",
]


def pool_latents(x: torch.Tensor, grid: int = 4, *, backend: str | None = None, check_finite: bool = True) -> torch.Tensor:
    """Images x (B, C, H, W) or videos (B, C, F, H, W) -> (B, C*grid*grid) fp32 adaptive mean pool
    over a grid x grid spatial grid (torch's bin edges), a video's F frames all in one bin:
    out[b, c, i, j] = (1 / (F kh kw)) sum_{f, h in bin i, w in bin j} x[b, c, f, h, w].

    check_finite=True raises on NaN/inf in x (one host sync). check_finite=False: garbage in,
    garbage out (NaN/inf rows are selected arbitrarily); use it only in sync-free code and check
    the results once per rollout (see ``all_finite``)."""
    _checks.check_tensor("x", x, ndims=(4, 5))
    _checks.check_grid(grid, x.shape[-2], x.shape[-1])
    if check_finite:
        _checks.check_finite("x", x)
    return backends.choose(x.device, backend).pool_latents(x.contiguous(), grid)


def group_variance(x: torch.Tensor, group_size: int, *, backend: str | None = None, check_finite: bool = True) -> torch.Tensor:
    """x (B, ...) -> (B/group_size,) fp32 total variance (1/G) sum_i ||x_i - mean||^2 of each
    group of consecutive rows.

    check_finite=True raises on NaN/inf in x (one host sync). check_finite=False: garbage in,
    garbage out (NaN/inf rows are selected arbitrarily); use it only in sync-free code and check
    the results once per rollout (see ``all_finite``)."""
    _checks.check_tensor("x", x)
    _checks.check_group("x", x.shape[0], group_size)
    if check_finite:
        _checks.check_finite("x", x)
    return backends.choose(x.device, backend).group_variance(x.contiguous(), group_size)


def ovf_select(scores: torch.Tensor, k: int, *, backend: str | None = None, check_finite: bool = True) -> torch.Tensor:
    """scores (P, N) -> int64 (P, k) IN-GROUP indices (each in [0, N), not batch rows): the exact
    max-variance k-subset of each row (Optimal Variance Filtering), ascending within each row.

    To index a flat batch of P*N rows, turn them into flat rows with ``group_rows(index, N)`` (row
    p*N + j), or call ``ovf_select_rows(scores.flatten(), N, k)``.

    check_finite=True raises on NaN/inf in scores (one host sync). check_finite=False: garbage in,
    garbage out (NaN/inf rows are selected arbitrarily); use it only in sync-free code and check
    the results once per rollout (see ``all_finite``)."""
    _checks.check_tensor("scores", scores, ndims=(2,))
    _checks.check_k(k, scores.shape[1])
    if check_finite:
        _checks.check_finite("scores", scores)
    return backends.choose(scores.device, backend).ovf_select(scores.contiguous(), k)


def group_rows(in_group_index: torch.Tensor, group_size: int, *, check_values: bool = True) -> torch.Tensor:
    """In-group indices (P, k) int64 (as ``ovf_select``/``variance_select`` return) -> the flat row
    numbers (P*k,) int64 of a batch of P consecutive groups of ``group_size`` rows: row
    p*group_size + j for entry j of group p. Ascending when each row of the input is.

    check_values=True checks every entry is in [0, group_size) (one host sync); pass False in
    sync-free code."""
    _checks.check_int_index("in_group_index", in_group_index, 2)
    _checks.check_group("in_group_index", 0, group_size)
    if check_values and in_group_index.numel():
        low, high = torch.stack([in_group_index.min() >= 0, in_group_index.max() < group_size]).tolist()
        if not (low and high):
            raise ValueError(
                f"in_group_index must hold in-group indices in [0, {group_size}), got values in "
                f"[{int(in_group_index.min())}, {int(in_group_index.max())}]"
            )
    offsets = torch.arange(in_group_index.shape[0], device=in_group_index.device, dtype=torch.int64)[:, None] * group_size
    return (in_group_index + offsets).flatten()


def ovf_select_rows(
    scores: torch.Tensor, group_size: int, k: int, *, backend: str | None = None, check_finite: bool = True
) -> torch.Tensor:
    """Flat scores (B,) of consecutive groups of ``group_size`` rows -> the flat row numbers
    (B/group_size*k,) int64, ascending, of each group's exact max-variance k-subset: ``ovf_select``
    then ``group_rows``. Same check_finite contract as ``ovf_select``: check_finite=False:
    garbage in, garbage out (NaN/inf rows are selected arbitrarily); use it only in sync-free code
    and check the results once per rollout."""
    _checks.check_tensor("scores", scores, ndims=(1,))
    _checks.check_group("scores", scores.shape[0], group_size)
    index = ovf_select(scores.view(-1, group_size), k, backend=backend, check_finite=check_finite)
    return group_rows(index, group_size, check_values=False)


def variance_select(features: torch.Tensor, k: int, *, backend: str | None = None, check_finite: bool = True) -> torch.Tensor:
    """features (P, N, D) -> int64 (P, k) in-group indices: a k-subset of each group with large
    total variance; exact for D = 1, greedy max-dispersion otherwise. Indices ascending within each
    row; ``group_rows(index, N)`` gives flat batch rows.

    check_finite=True raises on NaN/inf in features (one host sync). check_finite=False: garbage
    in, garbage out (NaN/inf rows are selected arbitrarily); use it only in sync-free code and
    check the results once per rollout (see ``all_finite``)."""
    _checks.check_tensor("features", features, ndims=(3,))
    _checks.check_k(k, features.shape[1])
    if check_finite:
        _checks.check_finite("features", features)
    return backends.choose(features.device, backend).variance_select(features.contiguous(), k)


def prune_select(
    x: torch.Tensor,
    group_size: int,
    k: int,
    grid: int = 4,
    *,
    return_variance: bool = False,
    backend: str | None = None,
    check_finite: bool = True,
):
    """The fused pruning op. x is a whole batch of consecutive groups: latents or x0 estimates
    (B, C, H, W) or video latents (B, C, F, H, W) (pooled to C*grid*grid features as in
    ``pool_latents``), features (B, D), or scalar scores (B,). For groups whose rows are not
    consecutive, see ``prune_select_grouped``.

    Returns the survivors' flat row indices (P*k,) int64, ascending, on x's device; with
    ``return_variance`` also the total feature variance of each whole group and of its kept
    subset, both (P,) fp32.

    check_finite=True raises on NaN/inf in x (one host sync). check_finite=False: garbage in,
    garbage out (NaN/inf rows are selected arbitrarily); use it only in sync-free code and check
    the results once per rollout (see ``all_finite``)."""
    _checks.check_tensor("x", x, ndims=(1, 2, 4, 5))
    _checks.check_group("x", x.shape[0], group_size)
    _checks.check_k(k, group_size)
    if x.dim() >= 4:
        _checks.check_grid(grid, x.shape[-2], x.shape[-1])
    if check_finite:
        _checks.check_finite("x", x)
    index, var_all, var_kept = backends.choose(x.device, backend).prune_select(x.contiguous(), group_size, k, grid)
    return (index, var_all, var_kept) if return_variance else index


def prune_select_grouped(
    x: torch.Tensor,
    group_ids: torch.Tensor,
    k: int,
    grid: int = 4,
    *,
    group_size: int | None = None,
    return_variance: bool = False,
    backend: str | None = None,
    check_finite: bool = True,
):
    """``prune_select`` for a batch whose groups are given by explicit ids instead of consecutive
    rows: x as in ``prune_select`` (B, ...), group_ids (B,) int64 (any values; rows with the same
    id form a group). Returns the survivors' original row numbers (P*k,) int64, ascending.

    Rows are ordered by (group id, row) with a stable argsort, the batch is gathered in that order
    (a copy of x), pruned with ``prune_select`` and the kept rows are mapped back to their original
    row numbers. With ``return_variance`` the (P,) variances come in ascending group-id order.

    Every group must hold the same number of rows. With ``group_size=None`` this is checked and a
    ValueError names the sizes found; the check syncs the host (it reads the group sizes back).
    Pass ``group_size`` to skip the check (sync-free): the ids are then trusted to form groups of
    exactly that size, and groups of other sizes are mixed up silently.

    check_finite=True raises on NaN/inf in x (one host sync). check_finite=False: garbage in,
    garbage out (NaN/inf rows are selected arbitrarily); use it only in sync-free code and check
    the results once per rollout (see ``all_finite``)."""
    _checks.check_tensor("x", x, ndims=(1, 2, 4, 5))
    _checks.check_int_index("group_ids", group_ids, 1)
    _checks.check_same_device("group_ids", group_ids, "x", x)
    if group_ids.shape[0] != x.shape[0]:
        raise ValueError(f"group_ids must have one id per row of x ({x.shape[0]},), got {_checks.describe(group_ids)}")
    sorted_ids, order = group_ids.sort(stable=True)
    if group_size is None:
        ids, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
        sizes = sorted(set(counts.tolist()))
        if len(sizes) != 1:
            examples = ", ".join(f"id {i}: {c} rows" for i, c in list(zip(ids.tolist(), counts.tolist()))[:8])
            more = ", ..." if len(ids) > 8 else ""
            raise ValueError(
                f"group_ids must give every group the same number of rows, found group sizes {sizes} ({examples}{more})"
            )
        group_size = sizes[0]
    else:
        _checks.check_group("x", x.shape[0], group_size)
    out = prune_select(x[order], group_size, k, grid, return_variance=True, backend=backend, check_finite=check_finite)
    rows = order[out[0]].sort().values
    return (rows, out[1], out[2]) if return_variance else rows


def compact_(
    index: torch.Tensor,
    *tensors: torch.Tensor,
    as_tuple: bool | None = None,
    backend: str | None = None,
    check_values: bool = True,
):
    """Moves rows ``index`` (strictly ascending int64) of every tensor to its front, in place, and
    returns the views of the first len(index) rows. Any dtype; rows may overlap their destinations.

    Return convention (``as_tuple``):

    - ``True``: always a tuple of views, one per tensor (use this with ``*tensors`` of any length).
    - ``False``: the single view itself; exactly one tensor is required (ValueError otherwise).
    - ``None`` (default, legacy): the view for one tensor, a tuple for several. With exactly one
      tensor this emits a FutureWarning: it will return a 1-tuple.

    Tensors that share memory: passing the same view twice (same memory, shape, strides and dtype,
    e.g. ``compact_(index, latents, *history)`` with ``latents is history[-1]``) compacts it once
    and returns the same view at each of its positions. Any other overlap between two tensors
    (different views of one storage) raises ValueError naming both positions, because compacting
    one would move the other's rows. This check reads metadata only (no device sync) and is always
    on.

    check_values=True checks that index is strictly ascending and inside [0, rows) (one host
    sync). check_values=False skips that (sync-free); an index breaking it is garbage in, garbage
    out, except that the C++ backend still refuses out-of-range rows (an error on CPU, a device-side
    assert on CUDA) instead of reading outside the tensor."""
    n = _checks.check_index(index, tensors)
    if as_tuple is False and len(tensors) != 1:
        raise ValueError(f"compact_ with as_tuple=False returns one tensor, so it needs exactly one tensor, got {len(tensors)}")
    if as_tuple is None and len(tensors) == 1:
        warnings.warn(
            "compact_ with one tensor returns the tensor itself today and will return a 1-tuple; "
            "pass as_tuple=False to keep a tensor or as_tuple=True for a tuple",
            FutureWarning,
            stacklevel=2,
        )
    first = _checks.alias_map(tensors)
    if check_values:
        _checks.check_index_values(index, tensors[0].shape[0])
    unique = [t for pos, t in enumerate(tensors) if first[pos] == pos]
    backends.choose(index.device, backend).compact_(index, unique)
    views = [t[:n] for t in tensors]
    views = tuple(views[first[pos]] for pos in range(len(tensors)))
    if as_tuple:
        return views
    return views[0] if len(views) == 1 else views


def all_finite(*tensors: torch.Tensor) -> torch.Tensor:
    """0-dim bool tensor on the tensors' device: True when no tensor holds a NaN or inf (integer and
    bool tensors always pass). A device-side flag, no host sync: accumulate flags with ``&`` over a
    rollout and read the result once (``bool(flag)``), the check that goes with check_finite=False."""
    if not tensors:
        raise ValueError("all_finite needs at least one tensor, got none")
    for pos, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"tensors[{pos}] must be a torch.Tensor, got {_checks.describe(t)}")
        _checks.check_same_device(f"tensors[{pos}]", t, "tensors[0]", tensors[0])
    flags = [torch.isfinite(t).all() for t in tensors]
    return flags[0] if len(flags) == 1 else torch.stack(flags).all()
