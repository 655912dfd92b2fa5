"""Build script for progrpo-fast.

The pure-Python package (``progrpo_fast``, the Triton kernels in ``progrpo_fast/kernels/`` included)
always installs. The compiled extension ``progrpo_fast._C`` (csrc/:
multithreaded C++ for CPU tensors, CUDA kernels for CUDA tensors) is built by CMake
(CMakeLists.txt) against the torch that is installed, so build without isolation:

    pip install --no-build-isolation -e .     # editable: _C.*.so lands in progrpo_fast/
    pip install --no-build-isolation .

Environment variables read at build time:

- ``PROGRPO_FAST_CUDA``: ``1`` forces the CUDA kernels (the build fails, saying why, when nvcc or a
  CUDA build of torch is missing), ``0`` skips them. Unset: compiled when nvcc is found
  (``$CUDA_HOME/bin``, ``$PATH``, ``/usr/local/cuda/bin``) and ``torch.version.cuda`` is set.
- ``PROGRPO_FAST_CUDA_ARCHS``: CUDA architectures in CMake's syntax, e.g. ``"80;90"``. Default:
  the ones torch was built for (``torch.cuda.get_arch_list()``).
- ``PROGRPO_FAST_NO_EXTENSION=1``: skip the extension entirely; the ops then run on the torch
  (and Triton) backends.
- ``PROGRPO_FAST_REQUIRE_EXTENSION=1``: a failed extension build fails the install. Otherwise
  the failure is reported as a warning and the pure-Python package is installed anyway
  (``progrpo_fast.ops.backends.report()`` then says why ``_C`` did not load).
- ``CMAKE_BUILD_PARALLEL_LEVEL``: parallel compile jobs (default: all cores).
- ``PROGRPO_FAST_BUILD_TYPE``: CMake build type (default ``Release``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def env_flag(name: str) -> str | None:
    """'0', '1' or None (unset/empty) for one of the boolean build variables."""
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise RuntimeError(f"{name} must be 0 or 1, got {value!r}")
    return value or None


def find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def cuda_plan(torch) -> tuple[str | None, str]:
    """(nvcc to compile the CUDA kernels with, or None; the reason when None)."""
    wanted = env_flag("PROGRPO_FAST_CUDA")
    if wanted == "0":
        return None, "PROGRPO_FAST_CUDA=0"
    nvcc = find_nvcc()
    missing = []
    if nvcc is None:
        missing.append("nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    if torch.version.cuda is None:
        missing.append(f"the installed torch {torch.__version__} is not a CUDA build")
    if not missing:
        return nvcc, ""
    reason = "; ".join(missing)
    if wanted == "1":
        raise RuntimeError(f"PROGRPO_FAST_CUDA=1 but the CUDA kernels cannot be built: {reason}")
    return None, reason


def cuda_archs(torch) -> str:
    if os.environ.get("PROGRPO_FAST_CUDA_ARCHS"):
        return os.environ["PROGRPO_FAST_CUDA_ARCHS"]
    archs = sorted({a.split("_")[1] for a in torch.cuda.get_arch_list() if a.startswith("sm_")})
    return ";".join(archs) if archs else "native"


class CMakeExtension(Extension):
    """An extension whose sources CMake builds (CMakeLists.txt at the repository root)."""

    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Builds the CMake extension; a failure is a warning unless PROGRPO_FAST_REQUIRE_EXTENSION=1."""

    def run(self):
        try:
            super().run()
        except (subprocess.CalledProcessError, OSError, ImportError) as err:
            if env_flag("PROGRPO_FAST_REQUIRE_EXTENSION") == "1":
                raise
            self.extensions = []  # nothing to copy in place or to install
            if isinstance(err, subprocess.CalledProcessError):
                err = f"`{' '.join(err.cmd[:2])} ...` exited with status {err.returncode}; its output is above"
            bar = "=" * 78
            print(
                f"\n{bar}\nWARNING: progrpo_fast._C failed to build: {err}.\n"
                "Installing the pure-Python package: the ops run on the torch/Triton backends.\n"
                "Set PROGRPO_FAST_REQUIRE_EXTENSION=1 to make this an error, or\n"
                "PROGRPO_FAST_NO_EXTENSION=1 to skip the extension quietly.\n"
                f"{bar}\n",
                file=sys.stderr,
            )

    def build_extension(self, ext: Extension) -> None:
        import pybind11
        import torch
        import torch.utils

        nvcc, why_not = cuda_plan(torch)  # raises when PROGRPO_FAST_CUDA=1 cannot be honoured
        output = Path(self.get_ext_fullpath(ext.name)).resolve()
        # A persistent build tree per interpreter and torch makes rebuilds incremental.
        build_dir = ROOT / "build" / f"cmake-{sys.implementation.cache_tag}-torch{torch.__version__}"
        cache = build_dir / "CMakeCache.txt"
        if cache.exists() and f"CMAKE_HOME_DIRECTORY:INTERNAL={ROOT}\n" not in cache.read_text():
            shutil.rmtree(build_dir)  # configured for a copy of the tree elsewhere
        build_dir.mkdir(parents=True, exist_ok=True)
        build_type = os.environ.get("PROGRPO_FAST_BUILD_TYPE", "Release")
        configure = [
            "cmake",
            "-S", str(ROOT),
            "-B", str(build_dir),
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path};{pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DPROGRPO_FAST_OUTPUT_DIR={output.parent}",
            f"-DPROGRPO_FAST_OUTPUT_NAME={output.name}",
            f"-DPROGRPO_FAST_CUDA={'ON' if nvcc else 'OFF'}",
        ]
        if nvcc:
            configure += [f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={cuda_archs(torch)}"]
        else:
            print(f"progrpo_fast._C: building without CUDA ({why_not})", file=sys.stderr)
        if shutil.which("ninja") and not cache.exists():
            configure += ["-G", "Ninja"]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)


ext_modules = [] if env_flag("PROGRPO_FAST_NO_EXTENSION") == "1" else [CMakeExtension("progrpo_fast._C")]

# Project metadata (name, version, dependencies, extras, console script) lives in pyproject.toml.
setup(
    packages=find_packages(include=["progrpo_fast", "progrpo_fast.*"]),
    package_data={"progrpo_fast": ["configs/*.yaml", "assets/**/*"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
