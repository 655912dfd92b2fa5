"""Ops that cannot silently corrupt: compact_ with tensors sharing memory, one return convention,
the check_finite=False companion flag, flat-row helpers, explicit group ids, error messages that
say what was expected and what was received, and the C++ compact_'s own index check."""
import re
import warnings

import pytest
import torch

from progrpo_fast import ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def rows_of(rows: int, *dims: int, dtype=torch.float32) -> torch.Tensor:
    """Row r holds r * 100 + column: a row's values say which row it came from."""
    cols = 1
    for d in dims:
        cols *= d
    base = torch.arange(rows, device=DEVICE)[:, None] * 100 + torch.arange(cols, device=DEVICE)
    return base.view(rows, *dims).to(dtype)


# ---------------------------------------------------------------- compact_ with shared memory
def test_compact_same_tensor_twice_matches_compacting_fresh_copies(backend):
    index = torch.tensor([1, 4, 6], device=DEVICE)
    latents = rows_of(8, 3)
    history = [rows_of(8, 3) + 1000, rows_of(8, 3) + 2000, latents]  # the sampler's last history entry is latents
    want = [t.clone()[index] for t in (latents, *history)]
    views = ops.compact_(index, latents, *history, backend=backend, as_tuple=True)
    assert len(views) == 4
    for view, expect in zip(views, want):
        assert torch.equal(view, expect)
    assert views[0] is views[3]  # compacted once; one view at each of its positions
    assert torch.equal(latents[:3], want[0])


def test_compact_same_view_as_two_objects_is_compacted_once(backend):
    x = rows_of(8, 2, 2)
    again = x.view(8, 2, 2)  # another tensor object, same memory/shape/strides/dtype
    index = torch.tensor([2, 3, 7], device=DEVICE)
    want = x.clone()[index]
    first, second = ops.compact_(index, x, again, backend=backend, as_tuple=True)
    assert torch.equal(first, want) and torch.equal(second, want)


def test_compact_aliased_values_from_the_bug_report(backend):
    """[12, 42, 62] is right; compacting one storage twice gave [42, 42, 62]."""
    latents = torch.tensor([2.0, 12, 22, 32, 42, 52, 62, 72], device=DEVICE)
    history = [latents.clone(), latents]
    views = ops.compact_(torch.tensor([1, 4, 6], device=DEVICE), latents, *history, backend=backend, as_tuple=True)
    for view in views:
        assert view.tolist() == [12, 42, 62]


@pytest.mark.parametrize(
    "make_other",
    [
        lambda x: x[:, :2],  # a column slice of the same rows
        lambda x: x.view(8, 2, 2),  # the same memory, another shape
        lambda x: x.view(torch.int32),  # the same memory, another dtype
        lambda x: x[:, 1:],  # interleaved byte ranges
    ],
)
def test_compact_overlapping_views_raise_and_leave_data_alone(make_other):
    x = rows_of(8, 4)
    before = x.clone()
    other = make_other(x)
    with pytest.raises(ValueError, match=re.escape("tensors[1] and tensors[2] share memory (overlapping views of one storage")):
        ops.compact_(torch.tensor([1, 2], device=DEVICE), torch.zeros(8, device=DEVICE), x, other, as_tuple=True)
    assert torch.equal(x, before)  # raised before moving anything


def test_compact_error_names_both_positions():
    x = rows_of(8, 4)
    args = [x, torch.zeros(8, device=DEVICE), torch.zeros(8, device=DEVICE), x[:, 1:3]]
    with pytest.raises(ValueError, match=r"tensors\[0\] and tensors\[3\] share memory .*pass each buffer once"):
        ops.compact_(torch.tensor([0], device=DEVICE), *args, as_tuple=True)


def test_compact_disjoint_parts_of_one_storage_are_fine(backend):
    buf = rows_of(16, 3)
    a, b = buf[:8], buf[8:]  # one storage, disjoint byte ranges
    index = torch.tensor([0, 5, 6], device=DEVICE)
    want = [a.clone()[index], b.clone()[index]]
    got = ops.compact_(index, a, b, backend=backend, as_tuple=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_compact_zero_size_tensors_never_overlap(backend):
    x = torch.zeros(8, 0, device=DEVICE)
    y = rows_of(8, 2)
    got = ops.compact_(torch.tensor([3], device=DEVICE), x, x[:, :0], y, backend=backend, as_tuple=True)
    assert got[0].shape == (1, 0) and got[2].tolist() == [[300, 301]]


# ---------------------------------------------------------------- return convention
def test_compact_as_tuple_true_always_returns_a_tuple(backend):
    x = rows_of(6, 2)
    got = ops.compact_(torch.tensor([1, 2], device=DEVICE), x, backend=backend, as_tuple=True)
    assert isinstance(got, tuple) and len(got) == 1 and got[0].tolist() == [[100, 101], [200, 201]]


def test_compact_as_tuple_false_returns_the_tensor_and_needs_exactly_one(backend):
    x = rows_of(6, 2)
    got = ops.compact_(torch.tensor([4], device=DEVICE), x, backend=backend, as_tuple=False)
    assert isinstance(got, torch.Tensor) and got.tolist() == [[400, 401]]
    with pytest.raises(ValueError, match="exactly one tensor, got 2"):
        ops.compact_(torch.tensor([0], device=DEVICE), x, rows_of(6), as_tuple=False)


def test_compact_legacy_single_tensor_warns_and_several_do_not():
    x = rows_of(6, 2)
    message = (
        "compact_ with one tensor returns the tensor itself today and will return a 1-tuple; "
        "pass as_tuple=False to keep a tensor or as_tuple=True for a tuple"
    )
    with pytest.warns(FutureWarning, match=re.escape(message)):
        got = ops.compact_(torch.tensor([1], device=DEVICE), x)
    assert isinstance(got, torch.Tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ops.compact_(torch.tensor([1], device=DEVICE), rows_of(6), rows_of(6))
    assert isinstance(got, tuple) and len(got) == 2


# ---------------------------------------------------------------- check_finite=False and all_finite
def test_all_finite_is_a_device_flag():
    good = torch.randn(4, 3, device=DEVICE)
    flag = ops.all_finite(good, torch.arange(5, device=DEVICE), torch.ones(2, dtype=torch.bool, device=DEVICE))
    assert flag.dtype == torch.bool and flag.dim() == 0 and flag.device == good.device and bool(flag)
    bad = good.clone()
    bad[2, 1] = float("nan")
    assert not bool(ops.all_finite(good, bad))
    assert not bool(ops.all_finite(torch.tensor([float("-inf")], device=DEVICE)))
    ok = ops.all_finite(good)
    for t in (good, bad, good):  # accumulate over a rollout, read once
        ok = ok & ops.all_finite(t)
    assert not bool(ok)
    assert bool(ops.all_finite(torch.empty(0, device=DEVICE)))


def test_all_finite_bad_arguments():
    with pytest.raises(ValueError, match="at least one tensor"):
        ops.all_finite()
    with pytest.raises(ValueError, match=r"tensors\[1\] must be a torch.Tensor, got float 1.0"):
        ops.all_finite(torch.zeros(1), 1.0)


@pytest.mark.parametrize("op", [ops.pool_latents, ops.group_variance, ops.ovf_select, ops.ovf_select_rows, ops.variance_select,
                                ops.prune_select, ops.prune_select_grouped])
def test_every_op_documents_check_finite_false(op):
    doc = " ".join(op.__doc__.split())
    assert "check_finite=False: garbage in, garbage out (NaN/inf rows are selected arbitrarily); use it only in sync-free code" in doc
    assert "check the results once per rollout" in doc


# ---------------------------------------------------------------- flat rows and explicit groups
def test_group_rows_and_ovf_select_rows(backend):
    scores = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    local = ops.ovf_select(scores, 3, backend=backend)
    rows = ops.group_rows(local, 7)
    assert rows.dtype == torch.int64 and rows.shape == (15,)
    assert torch.equal(rows.view(5, 3), local + torch.arange(5, device=DEVICE)[:, None] * 7)
    assert torch.equal(scores.flatten()[rows].view(5, 3), scores.gather(1, local))
    assert torch.equal(ops.ovf_select_rows(scores.flatten(), 7, 3, backend=backend), rows)
    assert torch.equal(ops.ovf_select_rows(scores.flatten(), 7, 3, backend=backend), ops.prune_select(scores.flatten(), 7, 3))


def test_group_rows_bad_arguments():
    with pytest.raises(ValueError, match=r"in_group_index must be a 2-D int64 tensor, got a 2-D torch.int32 tensor of shape \(2, 2\)"):
        ops.group_rows(torch.zeros(2, 2, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        ops.group_rows(torch.zeros(2, 2, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match=r"in \[0, 4\), got values in \[0, 4\]"):
        ops.group_rows(torch.tensor([[0, 4]]), 4)
    with pytest.raises(ValueError, match="not divisible by group_size"):
        ops.ovf_select_rows(torch.randn(7), 2, 1)


@pytest.mark.parametrize("shape,group_size,k,grid", [((12, 2, 6, 6), 4, 2, 2), ((15, 5), 5, 3, 4), ((18,), 6, 2, 4)])
def test_prune_select_grouped_matches_the_consecutive_case(backend, shape, group_size, k, grid):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(*shape, generator=gen).to(DEVICE)
    want = ops.prune_select(x, group_size, k, grid, backend=backend)
    perm = torch.randperm(shape[0], generator=gen).to(DEVICE)  # row perm[i] of x is row i of shuffled
    shuffled = x[perm]
    ids = perm // group_size * 10 + 3  # the group each shuffled row came from (ids need not be 0..P-1)
    got = ops.prune_select_grouped(shuffled, ids, k, grid, backend=backend)
    assert got.dtype == torch.int64 and bool((got[1:] > got[:-1]).all())
    assert torch.equal(perm[got].sort().values, want)
    fast = ops.prune_select_grouped(shuffled, ids, k, grid, group_size=group_size, backend=backend)
    assert torch.equal(fast, got)
    rows, var_all, var_kept = ops.prune_select_grouped(shuffled, ids, k, grid, return_variance=True, backend=backend)
    _, want_all, want_kept = ops.prune_select(x, group_size, k, grid, return_variance=True, backend=backend)
    assert torch.equal(rows, got)
    torch.testing.assert_close(var_all, want_all)
    torch.testing.assert_close(var_kept, want_kept)


def test_prune_select_grouped_consecutive_ids_are_prune_select():
    x = torch.randn(12, 3, device=DEVICE)
    ids = torch.arange(12, device=DEVICE) // 4
    assert torch.equal(ops.prune_select_grouped(x, ids, 2), ops.prune_select(x, 4, 2))


def test_prune_select_grouped_bad_arguments():
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match=r"found group sizes \[2, 4\] \(id 0: 4 rows, id 1: 2 rows\)"):
        ops.prune_select_grouped(x, torch.tensor([0, 1, 0, 0, 1, 0]), 1)
    with pytest.raises(ValueError, match=r"group_ids must have one id per row of x \(6,\), got a 1-D torch.int64 tensor of shape \(5,\)"):
        ops.prune_select_grouped(x, torch.zeros(5, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match=r"group_ids must be a 1-D int64 tensor, got a 1-D torch.float32 tensor"):
        ops.prune_select_grouped(x, torch.zeros(6), 1)
    with pytest.raises(ValueError, match="not divisible by group_size=4"):
        ops.prune_select_grouped(x, torch.zeros(6, dtype=torch.int64), 1, group_size=4)


# ---------------------------------------------------------------- error messages: expected vs got
@pytest.mark.parametrize(
    "call,text",
    [
        (lambda: ops.compact_(torch.tensor([0, 1, 2], dtype=torch.int32), torch.randn(4), as_tuple=False),
         "index must be a 1-D int64 tensor, got a 1-D torch.int32 tensor of shape (3,) on cpu"),
        (lambda: ops.compact_([0, 1], torch.randn(4), as_tuple=False), "index must be a 1-D int64 tensor, got list [0, 1]"),
        (lambda: ops.compact_(torch.tensor([0]), torch.tensor(1.0), as_tuple=False),
         "tensors[0] must be a tensor with a batch dimension (at least 1-D), got a 0-D torch.float32 tensor of shape () on cpu"),
        (lambda: ops.prune_select(torch.arange(8), 4, 2),
         "x must be a floating tensor (fp32/fp16/bf16/fp64), got a 1-D torch.int64 tensor of shape (8,) on cpu"),
        (lambda: ops.prune_select(torch.randn(8, 2, 2), 4, 2),
         "x must have 1 or 2 or 4 or 5 dimensions, got a 3-D torch.float32 tensor of shape (8, 2, 2) on cpu"),
        (lambda: ops.ovf_select(torch.randn(3, 4), 2.0), "k must be an int in [1, 4] (the group size), got float 2.0"),
        (lambda: ops.prune_select(torch.randn(8, 4), 4.0, 2), "group_size must be a positive int, got float 4.0"),
        (lambda: ops.pool_latents(torch.randn(2, 2, 4, 4), "2"), "grid must be a positive int, got str '2'"),
        (lambda: ops.group_variance(torch.randn(0, 3), 1), "x must have at least one row, got a 2-D torch.float32 tensor of shape (0, 3)"),
        (lambda: ops.prune_select(torch.tensor([1.0, float("nan"), 0.0, 2.0]), 2, 1),
         "x must be finite but contains 1 NaN or inf value(s) (a 1-D torch.float32 tensor of shape (4,) on cpu)"),
        (lambda: ops.compact_(torch.tensor([2, 1]), torch.randn(4), as_tuple=False),
         "index must be strictly ascending row numbers in [0, 4), got [2, 1] (not strictly ascending)"),
        (lambda: ops.compact_(torch.tensor([0, 4]), torch.randn(4), as_tuple=False),
         "index must be strictly ascending row numbers in [0, 4), got [0, 4] (out of range: first 0, last 4)"),
        (lambda: ops.pool_latents([1.0], 2), "x must be a torch.Tensor, got list [1.0]"),
    ],
)
def test_errors_say_expected_and_received(call, text):
    with pytest.raises(ValueError, match=re.escape(text)):
        call()


# ---------------------------------------------------------------- the C++ compact_ checks its index itself
@pytest.mark.skipif(DEVICE.type != "cpu", reason="on CUDA a bad row is a device-side assert (ends the CUDA context)")
@pytest.mark.parametrize("index", [[0, 9], [-1, 2], [3, 1]])
@pytest.mark.parametrize("contiguous", [True, False])
def test_cpp_compact_without_value_checks_raises_on_a_bad_index(index, contiguous):
    from progrpo_fast.ops import backends

    if not backends.usable("cpp", DEVICE)[0]:
        pytest.skip("the cpp extension is not built")
    x = rows_of(6, 4) if contiguous else rows_of(6, 8)[:, ::2]
    before = x.clone()
    with pytest.raises(RuntimeError, match="compact_: index must"):
        ops.compact_(torch.tensor(index), x, backend="cpp", check_values=False, as_tuple=False)
    assert torch.equal(x, before)
