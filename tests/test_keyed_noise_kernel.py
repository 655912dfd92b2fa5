"""The fused keyed-noise Triton kernel (progrpo_fast/kernels/keyed_noise.py) against the torch reference
``sampling.sde.keyed_noise``: bit for bit (under TRITON_INTERPRET=1 without CUDA)."""
from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from progrpo_fast.sampling.sde import _sqrt_rn, keyed_noise, seed_tensor  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 4, 3, 3), (4, 16, 8, 8), (3, 4, 3, 5, 7)])
@pytest.mark.parametrize("seed", [0, 123456789, 2**63 - 1])
def test_triton_keyed_noise_equals_reference_bitwise(shape, seed):
    ids = torch.tensor([0, 7, 2**33 + 5, 2**32 - 1][: shape[0]], device=DEVICE)
    for step in (0, 3, 2**32 - 1):
        reference = keyed_noise(seed, ids, step, shape, backend="torch")
        fused = keyed_noise(seed, ids, step, shape, backend="triton")
        assert fused.dtype == torch.float32 and fused.shape == shape
        assert torch.equal(fused, reference), f"{(fused != reference).sum()} of {fused.numel()} elements differ"


def test_seed_tensor_gives_the_same_noise_as_the_int_seed():
    ids = torch.arange(5, device=DEVICE)
    for backend in ("torch", "triton"):
        as_int = keyed_noise(2**40 + 9, ids, 2, (5, 33), backend=backend)
        as_tensor = keyed_noise(seed_tensor(2**40 + 9, DEVICE), ids, 2, (5, 33), backend=backend)
        assert torch.equal(as_int, as_tensor)


def test_seed_and_backend_errors():
    ids = torch.arange(2)
    with pytest.raises(ValueError, match="seed must be an int or a 0-dim int64 tensor"):
        keyed_noise(torch.tensor([1, 2]), ids, 0, (2, 4))
    with pytest.raises(ValueError, match="seed must be an int or a 0-dim int64 tensor"):
        keyed_noise(torch.tensor(1.0), ids, 0, (2, 4))
    with pytest.raises(ValueError, match="backend"):
        keyed_noise(1, ids, 0, (2, 4), backend="cuda")


def test_sqrt_rn_is_correctly_rounded():
    np = pytest.importorskip("numpy")
    x = torch.cat([torch.rand(200_000) * 10, torch.rand(1000) * 1e-30, torch.tensor([0.0, 1.0, 4.0, 2.0, 3.4e38])])
    assert torch.equal(_sqrt_rn(x), torch.from_numpy(np.sqrt(x.numpy())))  # NumPy's fp32 sqrt is IEEE's


AOT_CHECK = """
import importlib
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
module = importlib.import_module("progrpo_fast.kernels.keyed_noise")
signature = {"out_ptr": "*fp32", "traj_ptr": "*i64", "seed_ptr": "*i64", "step": "i32", "per_row": "i32", "BLOCK": "constexpr"}
source = ASTSource(fn=module._keyed_noise_kernel, signature=signature, constexprs={"BLOCK": 1024})
for fusion in (False, True):
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": fusion}).asm["ptx"]
    print(fusion, ptx.count("fma.rn.f32"), ptx.count("div.rn.f32"), ptx.count("sqrt.rn.f32"),
          ptx.count("mul.f32") + ptx.count("add.f32"), ptx.count(".approx"))
"""


def test_the_kernel_compiles_for_hopper_without_fma_contraction():
    """Compiled for sm_90 here (Triton's own ptxas; no GPU needed), as launched (enable_fp_fusion=False):
    no FMA, correctly rounded div and sqrt, every mul/add with .rn (so ptxas cannot contract it either),
    no approximate ops; with fusion on, Triton would emit FMAs, which is why the launch turns it off."""
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", AOT_CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (unfused, fused) = [tuple(int(v) for v in line.split()[1:]) for line in done.stdout.splitlines()[-2:]]
    fma, div, sqrt, unrounded, approx = unfused
    assert fma == 0 and div > 0 and sqrt > 0 and unrounded == 0 and approx == 0, unfused
    assert fused[0] > 0, "with fp fusion on Triton contracts multiply-adds: the launch must keep it off"
