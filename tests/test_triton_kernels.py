"""The Triton backend (`progrpo_fast.kernels`) against the pure-torch spec.

Without CUDA everything runs under the Triton interpreter (TRITON_INTERPRET=1, set before the
kernels are imported) on small shapes; the GPU-only tests (SD3.5-M shapes, CUDA-graph capture)
skip there.

Selections are compared with the reference index for index; where they differ (the reference
breaks near-ties by float64 rounding, the kernels by fp32 rounding) the kernel's subset must reach
the reference's objective to within a small tolerance (exact OVF) or be a valid run of the greedy
(max-dispersion) on the same distances. (For k == 1 every scalar split has variance 0: the kernels
take the first split exactly, while the reference's fp64 prefix sums pick one by rounding noise.)
"""
from __future__ import annotations

import itertools
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import progrpo_fast.kernels as K
from progrpo_fast.ops import reference as R

if not CUDA and os.environ.get("TRITON_INTERPRET", "0") != "1":
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = torch.device("cuda" if CUDA else "cpu")
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=gen(seed)).to(dtype).to(DEVICE)


# ----------------------------------------------------------------------------- helpers


def objective(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(P, N, D), (P, k) -> (P,) float64 total variance of each chosen subset (exact)."""
    f = features.double().cpu()
    idx = index.cpu()
    picked = f.gather(1, idx[:, :, None].expand(-1, -1, f.shape[2]))
    return (picked - picked.mean(1, keepdim=True)).square().sum(-1).mean(1)


def check_indices(index: torch.Tensor, p: int, n: int, k: int) -> None:
    assert index.dtype == torch.int64 and index.shape == (p, k) and index.device.type == DEVICE.type
    idx = index.cpu()
    assert bool((idx >= 0).all()) and bool((idx < n).all())
    if k > 1:
        assert bool((idx[:, 1:] > idx[:, :-1]).all()), "indices must be strictly ascending"


def assert_ovf_matches(got: torch.Tensor, want: torch.Tensor, features: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal indices, or (near-ties) the same optimal objective."""
    got, want = got.cpu(), want.cpu()
    same = (got == want).all(1)
    if bool(same.all()):
        return
    og, ow = objective(features, got), objective(features, want)
    scale = objective(features, torch.arange(features.shape[1]).expand(features.shape[0], -1)).clamp_min(1e-30)
    bad = ~same & ((og - ow).abs() > rtol * scale)
    assert not bool(bad.any()), f"rows {bad.nonzero().flatten().tolist()}: objective {og[bad]} vs reference {ow[bad]}"


def greedy_is_valid(features: torch.Tensor, index: torch.Tensor, rtol: float = 1e-5) -> bool:
    """Whether ``index`` can come out of the reference's greedy when near-ties (within rtol of the
    largest distance) may go either way: checked by replaying the greedy over the chosen set."""
    f = features.double().cpu()[None]
    dist = R.pairwise_sq_dists(f)[0]
    n = dist.shape[0]
    chosen = set(index.cpu().tolist())
    k = len(chosen)
    if k == n:
        return True
    tol = rtol * float(dist.max().clamp_min(1e-30))
    upper = torch.ones(n, n, dtype=torch.bool).triu(1)
    best = float(dist[upper].max())
    # the farthest pair: some near-maximal pair whose members are chosen (k == 1: its first member)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if float(dist[i, j]) >= best - tol]
    starts = [(i, j) for i, j in pairs if i in chosen and (k == 1 or j in chosen)]
    if not starts:
        return False
    if k <= 2:
        return any({i} == chosen if k == 1 else {i, j} == chosen for i, j in starts)
    for i, j in starts:  # replay the greedy, accepting any near-tied candidate inside the chosen set
        current = {i, j}
        ok = True
        while len(current) < k:
            gain = dist[:, sorted(current)].sum(1)
            gain[sorted(current)] = -1.0
            top = float(gain.max())
            options = [c for c in chosen - current if float(gain[c]) >= top - tol * len(current)]
            if not options:
                ok = False
                break
            current.add(options[0])
        if ok:
            return True
    return False


def assert_greedy_matches(got: torch.Tensor, want: torch.Tensor, features: torch.Tensor) -> None:
    got, want = got.cpu(), want.cpu()
    for row in range(got.shape[0]):
        if not torch.equal(got[row], want[row]):
            assert greedy_is_valid(features[row], got[row]), f"group {row}: {got[row].tolist()} vs reference {want[row].tolist()}"


def brute_force_ovf(values: torch.Tensor, k: int) -> float:
    v = values.double().tolist()
    best = -1.0
    for subset in itertools.combinations(v, k):
        m = sum(subset) / k
        best = max(best, sum((x - m) ** 2 for x in subset) / k)
    return best


# ----------------------------------------------------------------------------- pool_latents


POOL_CASES = [((2, 3, 7, 7), (1, 2, 3, 7)), ((3, 2, 9, 9), (2, 4, 5)), ((1, 2, 16, 16), (4, 5, 16)), ((1, 2, 9, 13), (3, 4)),
              ((2, 1, 5, 40), (2, 3))]


@pytest.mark.parametrize(
    "shape, grids, dtype",
    [case + (torch.float32,) for case in POOL_CASES]
    + [(shape, grids[-2:], dtype) for shape, grids in POOL_CASES[1:4] for dtype in (torch.float16, torch.bfloat16)],
)
def test_pool_latents(shape, grids, dtype):
    x = randn(*shape, seed=1, dtype=dtype)
    for grid in grids:
        got = K.pool_latents(x, grid)
        want = R.pool_latents(x, grid)
        assert got.dtype == torch.float32 and got.shape == want.shape and got.device == x.device
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_pool_latents_wide_rows():
    """Rows wider than one column block (W > 1024): the kernel loops over column blocks."""
    x = randn(1, 1, 3, 1100, seed=2)
    torch.testing.assert_close(K.pool_latents(x, 3), R.pool_latents(x, 3), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- group_variance


@pytest.mark.parametrize("dtype", FLOATS + [torch.float64])
@pytest.mark.parametrize(
    "shape, group",
    [((6,), 2), ((9, 5), 3), ((10, 3, 4), 5), ((32, 7), 16), ((96, 3), 48), ((64, 2, 3), 64), ((160, 5), 80), ((6, 3000), 3)],
)
def test_group_variance(shape, group, dtype):
    x = (randn(*shape, seed=3, dtype=torch.float32) * 3 + 10).to(dtype)
    got = K.group_variance(x, group)
    want = R.group_variance(x, group)
    assert got.dtype == torch.float32 and got.shape == (shape[0] // group,)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-6)


# ----------------------------------------------------------------------------- ovf_select


@pytest.mark.parametrize("dtype", FLOATS + [torch.float64])
@pytest.mark.parametrize("n, ks", [(2, (1, 2)), (3, (1, 2, 3)), (5, (1, 2, 4, 5)), (16, (1, 3, 8, 16)), (48, (1, 12, 24, 47)),
                                   (64, (1, 32, 64)), (100, (7, 50))])
def test_ovf_select(n, ks, dtype):
    scores = randn(4, n, seed=n, dtype=dtype)
    for k in ks:
        got = K.ovf_select(scores, k)
        check_indices(got, 4, n, k)
        assert_ovf_matches(got, R.ovf_select(scores, k), scores[..., None])


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_ovf_select_is_optimal_with_ties(n):
    """Small integer scores (many ties): the chosen subset reaches the brute-force optimum."""
    scores = torch.randint(0, 3, (8, n), generator=gen(n)).float().to(DEVICE)
    scores[0] = 1.0  # all equal
    for k in range(1, n + 1):
        got = K.ovf_select(scores, k)
        check_indices(got, 8, n, k)
        obj = objective(scores[..., None], got)
        for row in range(8):
            assert obj[row].item() == pytest.approx(brute_force_ovf(scores[row].cpu(), k), rel=1e-9, abs=1e-12)


def test_ovf_select_tie_breaking():
    """Exact ties go to the lowest index and the first split, as in the spec."""
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [2.0, 0.0, 2.0, 0.0]], device=DEVICE)
    # k=2: split 0 (the two largest by stable rank) and split 1 tie when values repeat
    assert K.ovf_select(scores, 2).cpu().tolist() == R.ovf_select(scores, 2).cpu().tolist()
    assert K.ovf_select(scores, 4).cpu().tolist() == [[0, 1, 2, 3]] * 3


# ----------------------------------------------------------------------------- variance_select


def integer_features(p: int, n: int, d: int, seed: int) -> torch.Tensor:
    """Integer features whose column sums are multiples of n: the centred values, norms and Gram
    entries are small integers, exact in fp32 and fp64, so exact ties are ties in both."""
    f = torch.randint(-2, 3, (p, n, d), generator=gen(seed)).float()
    f[:, -1] -= f.sum(1) % n  # every column sum divisible by n
    return f.to(DEVICE)


@pytest.mark.parametrize(
    "n, d, ks",
    [(2, 3, (1, 2)), (3, 2, (1, 2, 3)), (5, 7, (1, 2, 3, 5)), (16, 33, (1, 2, 8, 15, 16)), (48, 16, (1, 12, 24)), (64, 100, (2, 32, 64)),
     (37, 5, (9,))],
)
def test_variance_select(n, d, ks):
    features = randn(3, n, d, seed=n * 100 + d)
    for k in ks:
        got = K.variance_select(features, k)
        check_indices(got, 3, n, k)
        assert_greedy_matches(got, R.variance_select(features, k), features)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_variance_select_dtypes(dtype):
    features = randn(2, 24, 20, seed=5, dtype=dtype)
    for k in (1, 6, 12):
        got = K.variance_select(features, k)
        check_indices(got, 2, 24, k)
        assert_greedy_matches(got, R.variance_select(features, k), features)


@pytest.mark.parametrize("n, d", [(5, 2), (12, 3), (16, 4)])
def test_variance_select_exact_ties(n, d):
    """Exactly representable distances: ties must break as the spec says (first pair in row-major
    order, lowest index among equal gains), index for index."""
    features = integer_features(6, n, d, seed=n)
    features[0] = 0.0  # all points equal: every distance ties at 0
    for k in sorted({1, 2, 3, n // 2, n - 1, n}):
        assert K.variance_select(features, k).cpu().tolist() == R.variance_select(features, k).cpu().tolist()


def test_variance_select_scalar_features_are_exact_ovf():
    features = randn(3, 10, 1, seed=6)
    for k in (1, 4, 10):
        assert_ovf_matches(K.variance_select(features, k), R.ovf_select(features[..., 0], k), features)


@pytest.mark.parametrize("k", [1, 2, 40, 150])
def test_variance_select_large_groups(k):
    """N > 128: the scratch-backed kernel (dist2 tiles in global memory)."""
    features = randn(2, 150, 6, seed=7)
    got = K.variance_select(features, k)
    check_indices(got, 2, 150, k)
    assert_greedy_matches(got, R.variance_select(features, k), features)


# ----------------------------------------------------------------------------- prune_select


def check_prune(x, group, k, grid, var_rtol=1e-4):
    idx, var_all, var_kept = K.prune_select(x, group, k, grid)
    ref_idx, ref_all, ref_kept = R.prune_select(x, group, k, grid)
    p = x.shape[0] // group
    assert idx.shape == (p * k,) and idx.dtype == torch.int64 and idx.device == x.device
    assert var_all.shape == var_kept.shape == (p,) and var_all.dtype == var_kept.dtype == torch.float32
    flat = idx.cpu()
    assert bool((flat[1:] > flat[:-1]).all())
    local = flat.view(p, k) - torch.arange(p)[:, None] * group
    check_indices(local.to(DEVICE), p, group, k)
    features = R.features_of(x, grid).view(p, group, -1)
    ref_local = ref_idx.cpu().view(p, k) - torch.arange(p)[:, None] * group
    if features.shape[2] == 1:
        assert_ovf_matches(local, ref_local, features)
    else:
        assert_greedy_matches(local, ref_local, features)
    scale = ref_all.abs().max().item() + 1e-12
    torch.testing.assert_close(var_all, ref_all, rtol=var_rtol, atol=var_rtol * scale)
    # the kept subset's variance, for the subset the kernel chose
    torch.testing.assert_close(var_kept.cpu(), objective(features, local).float(), rtol=var_rtol, atol=var_rtol * scale)
    return idx


LATENT_CASES = [  # (shape, group, ks, grid): small B*C*grid, the interpreter runs one program per band
    ((6, 3, 7, 7), 2, (1, 2), 2),
    ((9, 2, 9, 9), 3, (1, 3), 3),
    ((10, 2, 16, 16), 5, (2,), 4),
    ((32, 1, 8, 8), 16, (8,), 2),
]
BIG_GROUP_CASES = [((64, 1, 5, 5), 64, (16,), 2, torch.bfloat16)]  # groups of 48 and 64: also in the features tests


@pytest.mark.parametrize(
    "shape, group, ks, grid, dtype",
    [case + (dtype,) for case in LATENT_CASES for dtype in FLOATS] + BIG_GROUP_CASES,
)
def test_prune_select_latents(shape, group, ks, grid, dtype):
    x = randn(*shape, seed=sum(shape), dtype=dtype)
    for k in ks:
        check_prune(x, group, k, grid)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape, group, ks", [((12,), 3, (1, 2, 3)), ((48,), 16, (4, 8)), ((96,), 48, (1, 24, 48)), ((20, 1), 5, (2,)),
                                              ((12, 6), 4, (1, 2, 4)), ((96, 17), 48, (12, 24)), ((3, 4), 1, (1,))])
def test_prune_select_features(shape, group, ks, dtype):
    x = randn(*shape, seed=sum(shape) + 1, dtype=dtype)
    for k in ks:
        check_prune(x, group, k, 2)


def test_prune_select_single_channel_grid_one_is_scalar_ovf():
    x = randn(10, 1, 4, 4, seed=9)  # C*g*g == 1 -> the exact scalar path on the pooled means
    check_prune(x, 5, 2, 1)


# ----------------------------------------------------------------------------- compact_


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bytes (NaN-safe exact comparison)."""
    return t.contiguous().view(torch.uint8) if t.dtype != torch.bool else t


def compact_both(index, tensors):
    """compact_ on copies of ``tensors`` by the kernels and by the reference: equal bit for bit.
    A tensor may be given as (base, view function): the view of a fresh copy of base is compacted
    (strided rows), and the whole base, outside the view too, must match."""
    mine, ref, mine_bases, ref_bases = [], [], [], []
    for t in tensors:
        base, make = t if isinstance(t, tuple) else (t, lambda b: b)
        mine_bases.append(base.clone())
        ref_bases.append(base.clone())
        mine.append(make(mine_bases[-1]))
        ref.append(make(ref_bases[-1]))
    K.compact_(index, mine)
    R.compact_(index, ref)
    for a, b in zip(mine_bases, ref_bases):
        assert a.dtype == b.dtype and torch.equal(bits(a), bits(b))


def test_compact_every_subset_of_8_rows():
    tensors = [
        randn(8, 3, 5, seed=10),
        torch.arange(8, dtype=torch.int64, device=DEVICE) * 1000 + 7,
        randn(8, 4, seed=11, dtype=torch.bfloat16),
    ]
    for n in range(9):
        for subset in itertools.combinations(range(8), n):
            compact_both(torch.tensor(subset, dtype=torch.int64, device=DEVICE), tensors)


@pytest.mark.parametrize("rows, keep", [(64, 32), (97, 40), (200, 199), (50, 1), (300, 150)])
def test_compact_random_patterns(rows, keep):
    g = gen(rows + keep)
    index = torch.randperm(rows, generator=g)[:keep].sort().values.to(DEVICE)
    base = torch.randn(rows, 7, 11, generator=g).to(DEVICE)
    tensors = [
        base.clone(),
        base.to(torch.float16),
        (base.to(torch.float64), lambda b: b[:, :3]),  # rows contiguous, row stride larger than the row
        (base.to(torch.bfloat16), lambda b: b[:, :, ::2]),  # rows not contiguous -> index_select fallback
        (base.to(torch.int32), lambda b: b[:, 2, 3]),  # 1-D with a row stride
        base[:, 0, 0] > 0,  # bool, one element per row
        torch.randint(0, 255, (rows, 3), generator=g, dtype=torch.uint8).to(DEVICE),
        torch.complex(base[:, 0], base[:, 1]),  # complex64: 8-byte elements
        torch.complex(base[:, 0], base[:, 1]).to(torch.complex128),  # 16-byte elements as int64 pairs
        torch.randint(-(2**62), 2**62, (rows,), generator=g).to(DEVICE),
    ]
    compact_both(index, tensors)


def test_compact_long_rows():
    """Rows longer than one column block: several programs, each owning a column range."""
    x = randn(12, 5000, seed=12, dtype=torch.bfloat16)
    compact_both(torch.tensor([0, 3, 4, 8, 11], device=DEVICE), [x, x.float()])


def test_compact_preserves_nan_and_signed_zero_bits():
    x = torch.tensor([float("nan"), -0.0, float("inf"), 1.5, -float("inf")], device=DEVICE)
    y = x.clone()
    K.compact_(torch.tensor([1, 2, 4], device=DEVICE), [y])
    assert y.view(torch.int32).tolist()[:3] == x.view(torch.int32)[[1, 2, 4]].tolist()


def test_compact_empty_index_is_a_no_op():
    x = randn(4, 3, seed=13)
    y = x.clone()
    K.compact_(torch.empty(0, dtype=torch.int64, device=DEVICE), [y])
    assert torch.equal(x, y)


# ----------------------------------------------------------------------------- through the public API


def test_public_ops_dispatch_to_triton():
    from progrpo_fast import ops

    x = randn(12, 2, 6, 6, seed=14)
    idx, var_all, var_kept = ops.prune_select(x, 4, 2, 2, return_variance=True, backend="triton")
    ref = ops.prune_select(x, 4, 2, 2, return_variance=True, backend="torch")
    assert_greedy_matches((idx.view(3, 2) % 4).cpu(), (ref[0].view(3, 2) % 4).cpu(), R.features_of(x, 2).view(3, 4, -1))
    torch.testing.assert_close(var_all, ref[1], rtol=1e-4, atol=1e-6)
    rows = ops.compact_(idx, x.clone(), backend="triton", as_tuple=False)
    assert rows.shape == (6, 2, 6, 6)


def test_exports():
    assert sorted(K.__all__) == sorted(["pool_latents", "group_variance", "keyed_noise", "ovf_select", "variance_select", "prune_select",
                                        "compact_"])


# ----------------------------------------------------------------------------- GPU only


@needs_cuda
def test_sd35_medium_shapes_bf16():
    """8 prompts x 48 trajectories of 16x128x128 bf16 latents, pruned to 24 per prompt."""
    x = torch.randn(8 * 48, 16, 128, 128, device="cuda", dtype=torch.bfloat16)
    for k in (24, 12):
        check_prune(x, 48, k, 4)
    torch.testing.assert_close(K.pool_latents(x, 4), R.pool_latents(x, 4), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(K.group_variance(x, 48), R.group_variance(x, 48), rtol=1e-4, atol=1e-4)
    idx = K.prune_select(x, 48, 24, 4)[0]
    logp = torch.randn(8 * 48, 10, device="cuda")
    compact_both(idx, [x, logp])


@needs_cuda
def test_cuda_graph_replay_equals_eager():
    b, group, k = 4 * 48, 48, 24
    static_x = torch.randn(b, 16, 64, 64, device="cuda", dtype=torch.bfloat16)
    static_logp = torch.randn(b, 10, device="cuda")
    work_x, work_logp = static_x.clone(), static_logp.clone()

    def step():
        work_x.copy_(static_x)
        work_logp.copy_(static_logp)
        idx, var_all, var_kept = K.prune_select(work_x, group, k, 4)
        K.compact_(idx, [work_x, work_logp])
        return idx, var_all, var_kept

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # compile and warm up outside the capture
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for seed in range(3):
        static_x.copy_(torch.randn(static_x.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(seed)))
        static_logp.normal_()
        graph.replay()
        torch.cuda.synchronize()
        got = [t.clone() for t in out] + [work_x[: 4 * k].clone(), work_logp[: 4 * k].clone()]
        eager = step()
        want = list(eager) + [work_x[: 4 * k], work_logp[: 4 * k]]
        for a, w in zip(got, want):
            assert torch.equal(a, w)
