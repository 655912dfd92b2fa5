"""Video latents (B, C, F, H, W) in the pruning ops: every backend against the pure-torch reference
(odd frame counts included), the reference against its definition, and compact_ on video history."""
import math

import pytest
import torch
import torch.nn.functional as F

from progrpo_fast import ops
from progrpo_fast.ops import reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, C, F, H, W), grid: odd frame counts (1, 3, 5, 17 = Wan's 4k+1 latent frames), bins that overlap
VIDEO_CASES = [((4, 3, 5, 7, 9), 3), ((6, 2, 1, 8, 8), 4), ((4, 2, 3, 5, 5), 5), ((2, 1, 17, 4, 4), 2), ((3, 16, 3, 6, 10), 4)]


def video(shape, dtype, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)


def test_reference_pools_every_frame_into_one_bin():
    x = torch.randn(2, 3, 5, 6, 6, dtype=torch.float64)
    want = torch.stack([F.adaptive_avg_pool2d(x[:, :, f], 3) for f in range(5)]).mean(0).flatten(1).float()
    torch.testing.assert_close(reference.pool_latents(x, 3), want)
    still = torch.randn(2, 3, 6, 6).unsqueeze(2).expand(2, 3, 7, 6, 6)  # a video of one repeated frame
    torch.testing.assert_close(reference.pool_latents(still, 3), reference.pool_latents(still[:, :, 0], 3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, grid", VIDEO_CASES)
def test_pool_latents_video(backend, shape, grid, dtype):
    x = video(shape, dtype, seed=sum(shape))
    got = ops.pool_latents(x, grid, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (shape[0], shape[1] * grid * grid) and got.device == x.device
    torch.testing.assert_close(got, reference.pool_latents(x, grid), rtol=1e-5, atol=1e-5)


def subset_variance(features: torch.Tensor, rows: torch.Tensor) -> float:
    f = features[rows].double()
    return (f - f.mean(0)).square().sum(1).mean().item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, group, k, grid", [((8, 3, 5, 7, 9), 4, 2, 3), ((12, 2, 3, 8, 8), 6, 3, 4), ((6, 1, 17, 4, 4), 3, 1, 2),
                                                   ((16, 4, 1, 6, 6), 8, 4, 2), ((9, 2, 3, 5, 5), 3, 3, 5)])
def test_prune_select_video(backend, shape, group, k, grid, dtype):
    x = video(shape, dtype, seed=sum(shape) + 1)
    index, var_all, var_kept = ops.prune_select(x, group, k, grid, return_variance=True, backend=backend)
    want_index, want_all, want_kept = reference.prune_select(x, group, k, grid)
    assert index.dtype == torch.int64 and index.shape == (shape[0] // group * k,)
    features = reference.pool_latents(x, grid)
    for p in range(shape[0] // group):  # the same rows, or (near-ties) rows of the same objective
        got, want = index[p * k : (p + 1) * k].cpu(), want_index[p * k : (p + 1) * k].cpu()
        assert bool((got[1:] > got[:-1]).all()) and got.min() >= p * group and got.max() < (p + 1) * group
        if not torch.equal(got, want):
            a, b = subset_variance(features.cpu(), got), subset_variance(features.cpu(), want)
            assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-7), (p, got, want)
    torch.testing.assert_close(var_all, want_all, rtol=1e-4, atol=1e-6)
    if torch.equal(index.cpu(), want_index.cpu()):
        torch.testing.assert_close(var_kept, want_kept, rtol=1e-4, atol=1e-6)


def test_prune_select_of_a_video_is_the_selection_of_its_pooled_features(backend):
    x = video((12, 4, 5, 6, 6), torch.float32, seed=3)
    pooled = reference.pool_latents(x, 2)
    assert torch.equal(ops.prune_select(x, 6, 2, 2, backend=backend).cpu(), ops.prune_select(pooled, 6, 2, backend="torch").cpu())


def test_compact_moves_video_history_rows(backend):
    history = video((6, 4, 3, 5, 4, 4), torch.float32, seed=4)  # (n, T+1, C, F, H, W)
    before = history.clone()
    index = torch.tensor([1, 3, 4], device=DEVICE)
    kept = ops.compact_(index, history, backend=backend, as_tuple=False)
    assert kept.shape == (3, 4, 3, 5, 4, 4) and torch.equal(kept, before[index])


@pytest.mark.parametrize("call, message", [
    (lambda: ops.pool_latents(torch.randn(2, 3, 5, 4, 4), 5), "grid=5 exceeds"),
    (lambda: ops.pool_latents(torch.randn(2, 3, 5, 4, 4, 1), 2), "x must have 4 or 5 dimensions"),
    (lambda: ops.prune_select(torch.randn(6, 3, 5, 4, 4), 4, 2), "not divisible by group_size"),
    (lambda: ops.prune_select(torch.randn(8, 3, 2, 4, 4), 4, 2, grid=8), "grid=8 exceeds"),
    (lambda: ops.prune_select(torch.randn(8, 3, 2, 4, 4, 1), 4, 2), "x must have 1 or 2 or 4 or 5 dimensions"),
])
def test_video_argument_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
