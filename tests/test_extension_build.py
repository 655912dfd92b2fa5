"""The compiled extension progrpo_fast._C: it loads after the build, says truthfully whether it has
CUDA kernels, rejects malformed direct calls instead of crashing, and its CUDA sources compile
(the kernels with plain `nvcc -c`, the torch glue and the CUDA bindings as a syntax check against
torch's headers), so CUDA code is checked on machines without a GPU or a CUDA build of torch."""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from progrpo_fast.ops import backends

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CUDA_KERNELS = sorted((CSRC / "cuda").glob("*.cu"))
OPS = ("built_with_cuda", "pool_latents", "group_variance", "ovf_select", "variance_select", "prune_select", "compact_")


def extension():
    if os.environ.get("PROGRPO_FAST_NO_EXTENSION") == "1":
        pytest.skip("PROGRPO_FAST_NO_EXTENSION=1: the extension was deliberately not built")
    module, reason = backends.load("cpp")
    assert module is not None, f"progrpo_fast._C did not load ({reason}); build: pip install --no-build-isolation -e ."
    return module


def find_nvcc() -> str:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    return nvcc


def run(cmd: list[str], timeout: int = 120) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-4000:]}{done.stderr[-4000:]}"


def test_extension_loads_with_every_op():
    module = extension()
    missing = [name for name in OPS if not callable(getattr(module, name, None))]
    assert not missing, f"progrpo_fast._C lacks {missing}"


def test_built_with_cuda_only_with_a_cuda_torch():
    module = extension()
    assert isinstance(module.built_with_cuda(), bool)
    if torch.version.cuda is None:
        assert module.built_with_cuda() is False


def test_malformed_direct_calls_raise():
    module = extension()
    with pytest.raises(RuntimeError, match="pool_latents"):
        module.pool_latents(torch.zeros(2, 3), 2)
    with pytest.raises(RuntimeError, match="k must be"):
        module.ovf_select(torch.zeros(2, 3), 4)
    with pytest.raises(RuntimeError, match="group_size"):
        module.prune_select(torch.zeros(6, 4), 4, 2, 1)
    with pytest.raises(RuntimeError, match="int64"):
        module.compact_(torch.zeros(2, dtype=torch.int32), [torch.zeros(4)])


@pytest.mark.parametrize("source", CUDA_KERNELS, ids=lambda path: path.name)
def test_cuda_kernels_compile_with_nvcc(source, tmp_path):
    run([find_nvcc(), "-std=c++17", "--fmad=false", f"-I{CSRC}", "-c", str(source), "-o", str(tmp_path / "kernel.o")])


def test_cuda_torch_glue_and_bindings_compile(tmp_path):
    """torch_glue.cpp and bindings.cpp with PROGRPO_FAST_WITH_CUDA, syntax-checked in parallel."""
    nvcc = Path(find_nvcc())
    cuda_include = nvcc.resolve().parent.parent / "include"
    torch_include = Path(torch.__file__).parent / "include"
    if not (cuda_include / "cuda_runtime_api.h").is_file() or not (torch_include / "c10" / "cuda").is_dir():
        pytest.skip("needs the CUDA runtime headers and torch's c10/cuda headers")
    import pybind11

    # CPU builds of torch ship c10/cuda but not its generated config header; stand in for it.
    if not (torch_include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").is_file():
        (tmp_path / "c10" / "cuda" / "impl").mkdir(parents=True)
        (tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").write_text("#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    flags = [
        "-std=c++20", "-fsyntax-only", "-DPROGRPO_FAST_WITH_CUDA",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{CSRC}", f"-I{pybind11.get_include()}", f"-I{torch_include}",
        f"-I{torch_include / 'torch' / 'csrc' / 'api' / 'include'}", f"-I{sysconfig.get_paths()['include']}",
        f"-I{cuda_include}", f"-I{tmp_path}",
    ]  # fmt: skip
    sources = [CSRC / "cuda" / "torch_glue.cpp", CSRC / "bindings.cpp"]
    jobs = [
        subprocess.Popen([cxx, *flags, str(source)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for source in sources
    ]
    for source, job in zip(sources, jobs):
        output, _ = job.communicate(timeout=300)
        assert job.returncode == 0, f"{source.name} does not compile:\n{output[-6000:]}"
