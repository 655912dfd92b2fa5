"""Every backend of the public ops against the pure-torch reference, the reference against brute
force, and the argument checks."""
import itertools
import math

import pytest
import torch

from progrpo_fast import ops
from progrpo_fast.ops import backends, reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def total_variance(features: torch.Tensor) -> float:
    """Total variance (1/n) sum ||f_i - mean||^2 of an (n, D) set, in float64."""
    f = features.double()
    return (f - f.mean(0)).square().sum(1).mean().item()


def assert_same_selection(features: torch.Tensor, got: torch.Tensor, want: torch.Tensor) -> None:
    """Rows equal, or (ties / rounding near-ties) a subset with the same objective value."""
    assert got.shape == want.shape and got.dtype == torch.int64
    assert bool((got[:, 1:] > got[:, :-1]).all()), "indices must be strictly ascending"
    for p in range(got.shape[0]):
        if not torch.equal(got[p].cpu(), want[p].cpu()):
            a, b = total_variance(features[p, got[p]]), total_variance(features[p, want[p]])
            assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-7), f"group {p}: {got[p]} (var {a}) vs {want[p]} (var {b})"


def brute_force_best(features: torch.Tensor, k: int) -> float:
    """max over all k-subsets of the total variance of an (n, D) set, vectorised."""
    combos = torch.tensor(list(itertools.combinations(range(features.shape[0]), k)))
    sets = features.double()[combos]  # (C, k, D)
    return (sets - sets.mean(1, keepdim=True)).square().sum(2).mean(1).max().item()


# ---------------------------------------------------------------- reference against brute force
def test_ovf_select_is_exact_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    for trial in range(2000):
        n = int(torch.randint(2, 13, (), generator=gen))
        k = int(torch.randint(1, n + 1, (), generator=gen))
        if trial % 3 == 0:  # heavy ties
            scores = torch.randint(0, 3, (1, n), generator=gen).float()
        else:
            scores = torch.randn(1, n, generator=gen) * 10 ** float(torch.randint(-3, 4, (), generator=gen))
        got = ops.ovf_select(scores, k, backend="torch")[0]
        best = brute_force_best(scores[0, :, None], k)
        assert math.isclose(total_variance(scores[0, got, None]), best, rel_tol=1e-9, abs_tol=1e-12), (scores, k, got)


def test_greedy_vector_selection_reaches_099_of_optimum():
    gen = torch.Generator().manual_seed(1)
    ratios = []
    for _ in range(150):
        n = int(torch.randint(10, 17, (), generator=gen))
        k = int(torch.randint(4, 9, (), generator=gen))
        features = torch.randn(1, n, 8, generator=gen)
        got = ops.variance_select(features, k, backend="torch")[0]
        ratios.append(total_variance(features[0, got]) / brute_force_best(features[0], k))
    mean, worst = sum(ratios) / len(ratios), min(ratios)
    print(f"greedy / optimum: mean {mean:.4f}, worst {worst:.4f} over {len(ratios)} cases")
    assert mean >= 0.99 and worst >= 0.9


def test_vector_selection_with_one_feature_is_exact_scalar_ovf():
    scores = torch.randn(6, 11)
    assert torch.equal(ops.variance_select(scores[..., None], 4), ops.ovf_select(scores, 4))


def test_reference_pool_and_variance_formulas():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    pooled = reference.pool_latents(x, 2)
    assert torch.equal(pooled[0], torch.tensor([2.5, 4.5, 10.5, 12.5]))
    rows = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    assert torch.allclose(reference.group_variance(rows, 4), torch.tensor([1.0 + 4.0]))


# ---------------------------------------------------------------- every backend against the reference
POOL_SHAPES = [(3, 2, 8, 8, 2), (5, 3, 7, 9, 3), (2, 4, 16, 16, 4), (1, 1, 5, 5, 5), (4, 2, 9, 6, 4)]


@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pool_latents(backend, shape, dtype):
    *dims, grid = shape
    x = torch.randn(*dims, device=DEVICE).to(dtype)
    got = ops.pool_latents(x, grid, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (dims[0], dims[1] * grid * grid)
    torch.testing.assert_close(got, reference.pool_latents(x, grid), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,group_size", [((6, 5), 3), ((8, 2, 3, 3), 4), ((64, 7), 64), ((10,), 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_variance(backend, shape, group_size, dtype):
    x = (torch.randn(*shape, device=DEVICE) * 3 + 1).to(dtype)
    got = ops.group_variance(x, group_size, backend=backend)
    torch.testing.assert_close(got, reference.group_variance(x, group_size), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [2, 3, 7, 16, 48, 64])
def test_ovf_select(backend, n):
    gen = torch.Generator().manual_seed(n)
    scores = torch.randn(5, n, generator=gen).to(DEVICE)
    scores[0] = torch.randint(0, 3, (n,), generator=gen).float()  # ties
    scores[1] = 7.0  # all equal
    for k in sorted({1, 2, n // 2 or 1, n - 1 or 1, n}):
        got = ops.ovf_select(scores, k, backend=backend)
        assert_same_selection(scores[..., None].cpu(), got.cpu(), reference.ovf_select(scores, k).cpu())


@pytest.mark.parametrize("n,d", [(2, 3), (5, 2), (16, 8), (48, 16), (64, 5), (9, 1)])
def test_variance_select(backend, n, d):
    features = torch.randn(3, n, d, generator=torch.Generator().manual_seed(n * d)).to(DEVICE)
    for k in sorted({1, 2, n // 3 or 1, n - 1 or 1, n}):
        got = ops.variance_select(features, k, backend=backend)
        assert_same_selection(features.cpu(), got.cpu(), reference.variance_select(features, k).cpu())


PRUNE_CASES = [  # (batch shape, group size, k, grid)
    ((8, 4, 8, 8), 4, 2, 2),
    ((12, 3, 7, 9), 6, 1, 3),
    ((10, 2, 9, 9), 5, 5, 4),
    ((96, 4, 4, 4), 48, 24, 2),
    ((64, 2, 5, 6), 64, 12, 1),
    ((9, 11), 3, 2, 4),
    ((20,), 2, 1, 4),
    ((30,), 10, 4, 4),
]


@pytest.mark.parametrize("shape,group_size,k,grid", PRUNE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prune_select(backend, shape, group_size, k, grid, dtype):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape) * k)).to(DEVICE, dtype)
    index, var_all, var_kept = ops.prune_select(x, group_size, k, grid, return_variance=True, backend=backend)
    want_index, want_all, want_kept = reference.prune_select(x, group_size, k, grid)
    features = reference.features_of(x, grid).view(-1, group_size, *reference.features_of(x, grid).shape[1:])
    offsets = torch.arange(features.shape[0], device=DEVICE)[:, None] * group_size
    assert index.device == x.device and index.shape == (x.shape[0] // group_size * k,)
    assert_same_selection(features.cpu(), (index.view(-1, k) - offsets).cpu(), (want_index.view(-1, k) - offsets).cpu())
    torch.testing.assert_close(var_all, want_all, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(var_kept, want_kept, rtol=1e-3, atol=1e-6)


def test_prune_select_non_contiguous_input(backend):
    x = torch.randn(8, 9, 3, 10, device=DEVICE).permute(0, 2, 3, 1)[..., :8]  # (8, 3, 10, 8), strided
    got = ops.prune_select(x, 4, 2, 2, backend=backend)
    assert torch.equal(got, ops.prune_select(x.contiguous(), 4, 2, 2, backend="torch"))


def test_keep_all_returns_every_row(backend):
    x = torch.randn(12, 2, 4, 4, device=DEVICE)
    assert torch.equal(ops.prune_select(x, 6, 6, 2, backend=backend).cpu(), torch.arange(12))


# ---------------------------------------------------------------- compact_
def rows_of(*dims, dtype):
    base = torch.arange(8, device=DEVICE).view(8, *([1] * len(dims))) * 100 + torch.arange(math.prod(dims), device=DEVICE).view(*dims)
    return base.to(dtype)


def test_compact_every_ascending_subset_of_8_rows(backend):
    for mask in range(256):
        index = torch.tensor([i for i in range(8) if mask >> i & 1], dtype=torch.int64, device=DEVICE)
        a, b, c = rows_of(3, 5, dtype=torch.float32), rows_of(2, dtype=torch.int64), rows_of(7, dtype=torch.bfloat16)
        expect = [t.clone()[index] for t in (a, b, c)]
        views = ops.compact_(index, a, b, c, backend=backend, as_tuple=True)
        for view, want in zip(views, expect):
            assert torch.equal(view, want)
        assert views[0].untyped_storage().data_ptr() == a.untyped_storage().data_ptr()  # a view, in place


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool])
def test_compact_random_patterns(backend, dtype):
    gen = torch.Generator().manual_seed(3)
    for rows, row_shape in [(48, (3, 5, 5)), (37, (1,)), (64, (2, 33))]:
        x = (torch.randn(rows, *row_shape, generator=gen) * 50).to(DEVICE).to(dtype)
        keep = torch.randperm(rows, generator=gen)[: int(torch.randint(1, rows + 1, (), generator=gen))].sort().values.to(DEVICE)
        want = x[keep].clone()
        assert torch.equal(ops.compact_(keep, x, backend=backend, as_tuple=False), want)


def test_compact_non_contiguous_tensor(backend):
    base = torch.arange(40.0, device=DEVICE).view(8, 5)
    x = base[:, ::2]
    index = torch.tensor([2, 5, 7], device=DEVICE)
    want = x[index].clone()
    assert torch.equal(ops.compact_(index, x, backend=backend, as_tuple=False), want)
    assert torch.equal(base[:3, ::2], want)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.prune_select(torch.randn(8, 4), 4, 0), "k must be"),
        (lambda: ops.prune_select(torch.randn(8, 4), 4, 5), "k must be"),
        (lambda: ops.prune_select(torch.randn(9, 4), 4, 2), "not divisible by group_size"),
        (lambda: ops.prune_select(torch.randn(8, 4), 0, 1), "group_size must be"),
        (lambda: ops.prune_select(torch.tensor([1.0, float("nan"), 0.0, 2.0]), 2, 1), "NaN or inf"),
        (lambda: ops.prune_select(torch.tensor([1.0, float("inf"), 0.0, 2.0]), 2, 1), "NaN or inf"),
        (lambda: ops.prune_select(torch.randn(8, 2, 2), 4, 2), "x must have 1 or 2 or 4 or 5 dimensions"),
        (lambda: ops.prune_select(torch.randn(8, 2, 4, 4), 4, 2, grid=5), "grid=5 exceeds"),
        (lambda: ops.prune_select(torch.arange(8), 4, 2), "x must be a floating tensor"),
        (lambda: ops.ovf_select(torch.randn(3), 1), "scores must have 2 dimensions"),
        (lambda: ops.ovf_select(torch.randn(3, 4), 2.0), "k must be"),
        (lambda: ops.variance_select(torch.randn(3, 4), 2), "features must have 3 dimensions"),
        (lambda: ops.pool_latents(torch.randn(3, 4, 4), 2), "x must have 4 or 5 dimensions"),
        (lambda: ops.group_variance(torch.randn(5, 2), 2), "not divisible"),
        (lambda: ops.compact_(torch.tensor([0, 1.0]), torch.randn(4), as_tuple=False), "index must be a 1-D int64"),
        (lambda: ops.compact_(torch.tensor([2, 1]), torch.randn(4), as_tuple=False), "strictly ascending"),
        (lambda: ops.compact_(torch.tensor([0, 4]), torch.randn(4), as_tuple=False), "strictly ascending"),
        (lambda: ops.compact_(torch.tensor([0, 1, 2]), torch.randn(2), as_tuple=False), "only 2 rows"),
        (lambda: ops.compact_(torch.tensor([0]), torch.randn(4), torch.randn(3)), "share the batch"),
        (lambda: ops.compact_(torch.tensor([0]), torch.empty(4, device="meta"), as_tuple=False), "is on meta"),
        (lambda: ops.compact_(torch.tensor([0]), as_tuple=True), "at least one tensor"),
        (lambda: ops.prune_select(torch.randn(8, 4), 4, 2, backend="nope"), "backend must be one of"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_forced_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if DEVICE.type == "cpu":
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            ops.prune_select(torch.randn(8, 4), 4, 2, backend="triton")


def test_environment_variable_forces_backend(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    assert backends.choose(DEVICE) is reference
