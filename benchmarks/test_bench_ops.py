"""Op microbenchmarks, every backend against the reference (pytest-benchmark).

CPU:  python -m pytest benchmarks/test_bench_ops.py --benchmark-json benchmarks/results/ops_cpu.json
GPU:  the same command on a CUDA machine also runs the SD3.5-M shapes (8 prompts x 48 trajectories
      of 16x128x128 bf16 latents). ``python benchmarks/report_ops.py FILE.json`` prints the table with
      achieved GB/s (bytes each op must move / mean time), its share of the measured copy bandwidth
      (``copy``: a device-to-device copy of the same latents, bytes read + written) and the
      speed-up over the reference. PROGRPO_FAST_BENCH_TOY=1 shrinks every case (a smoke test).
"""
import os

import pytest
import torch

from progrpo_fast import ops
from progrpo_fast.ops import backends
from progrpo_fast.sampling.sde import keyed_noise

CUDA = torch.cuda.is_available()
TOY = os.environ.get("PROGRPO_FAST_BENCH_TOY") == "1"
PROMPTS, GROUP, KEEP, GRID = (2, 8, 4, 2) if TOY else (8, 48, 24, 4)
SIDE = (8, 8) if TOY else (64, 128)  # latent side on CPU, on CUDA
CASES = [pytest.param("cpu", (PROMPTS * GROUP, 16, SIDE[0], SIDE[0]), torch.float32,
                      id=f"cpu-{PROMPTS}x{GROUP}x16x{SIDE[0]}x{SIDE[0]}-fp32")]
if CUDA:
    CASES.append(pytest.param("cuda", (PROMPTS * GROUP, 16, SIDE[1], SIDE[1]), torch.bfloat16,
                              id=f"cuda-{PROMPTS}x{GROUP}x16x{SIDE[1]}x{SIDE[1]}-bf16"))
BACKENDS = ["torch", "cpp", "triton"]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def runnable(backend, device):
    if backend == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter is a correctness tool, not a CPU fast path")
    ok, why = backends.usable(backend, torch.device(device))
    if not ok:
        pytest.skip(why)


def run(benchmark, fn, device):
    if device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()

    def call():
        fn()
        sync(device)

    benchmark.pedantic(call, warmup_rounds=2, rounds=3 if TOY else (10 if device == "cpu" else 50), iterations=1)


@pytest.mark.parametrize("device,shape,dtype", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_prune_select(benchmark, backend, device, shape, dtype):
    runnable(backend, device)
    x = torch.randn(shape, device=device, dtype=dtype)
    benchmark.extra_info.update(op="prune_select", bytes=x.numel() * x.element_size(), shape=str(shape), dtype=str(dtype))
    run(benchmark, lambda: ops.prune_select(x, GROUP, KEEP, GRID, backend=backend, check_finite=False), device)


@pytest.mark.parametrize("device,shape,dtype", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_latents(benchmark, backend, device, shape, dtype):
    runnable(backend, device)
    x = torch.randn(shape, device=device, dtype=dtype)
    benchmark.extra_info.update(op="pool_latents", bytes=x.numel() * x.element_size(), shape=str(shape), dtype=str(dtype))
    run(benchmark, lambda: ops.pool_latents(x, GRID, backend=backend, check_finite=False), device)


@pytest.mark.parametrize("device,shape,dtype", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_compact(benchmark, backend, device, shape, dtype):
    """Keep a random half of every group, as a 48 -> 24 checkpoint does."""
    runnable(backend, device)
    x = torch.randn(shape, device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    keep = torch.cat([torch.randperm(GROUP, generator=gen)[:KEEP].sort().values + p * GROUP for p in range(PROMPTS)]).to(device)
    moved = int((keep != torch.arange(keep.numel(), device=device)).sum())
    row_bytes = x[0].numel() * x.element_size()
    benchmark.extra_info.update(op="compact_", bytes=2 * moved * row_bytes, shape=str(shape), dtype=str(dtype))
    run(benchmark, lambda: ops.compact_(keep, x, backend=backend, check_values=False, as_tuple=False), device)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if CUDA else []))
@pytest.mark.parametrize("backend", BACKENDS)
def test_ovf_select(benchmark, backend, device):
    runnable(backend, device)
    scores = torch.randn(PROMPTS, GROUP, device=device)
    benchmark.extra_info.update(op="ovf_select", bytes=scores.numel() * 4, shape=str(tuple(scores.shape)), dtype="torch.float32")
    run(benchmark, lambda: ops.ovf_select(scores, KEEP, backend=backend, check_finite=False), device)


@pytest.mark.parametrize("device,shape,dtype", CASES)
def test_copy(benchmark, device, shape, dtype):
    """The bandwidth ceiling: a device-to-device copy of the latents (bytes read + written)."""
    x = torch.randn(shape, device=device, dtype=dtype)
    out = torch.empty_like(x)
    benchmark.extra_info.update(op="copy", bytes=2 * x.numel() * x.element_size(), shape=str(shape), dtype=str(dtype))
    run(benchmark, lambda: out.copy_(x), device)


@pytest.mark.parametrize("device,shape,dtype", CASES)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_keyed_noise(benchmark, backend, device, shape, dtype):
    """One step's noise for the whole batch: ~100 int64 torch ops vs one fused Triton launch."""
    runnable(backend, device)
    ids = torch.arange(shape[0], device=device)
    benchmark.extra_info.update(op="keyed_noise", bytes=4 * torch.Size(shape).numel(), shape=str(shape), dtype="torch.float32")
    run(benchmark, lambda: keyed_noise(7, ids, 3, shape, backend=backend), device)
