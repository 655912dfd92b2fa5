"""Which op backends loaded, and why the others did not.

- ``torch``: the pure-torch reference (always there).
- ``cpp``: the compiled extension ``progrpo_fast._C`` (multithreaded C++ on CPU tensors; CUDA
  kernels on CUDA tensors when it was built with CUDA).
- ``triton``: the Triton kernels in ``progrpo_fast.kernels`` (CUDA tensors; CPU tensors only under
  ``TRITON_INTERPRET=1``).

``PROGRPO_FAST_BACKEND=torch|cpp|triton`` forces one backend for every op call that does not pass
``backend=`` itself.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

NAMES = ("torch", "cpp", "triton")
ENV_VAR = "PROGRPO_FAST_BACKEND"


@functools.cache
def load(name: str):
    """Returns (module or None, reason it failed or '')."""
    if name == "torch":
        from progrpo_fast.ops import reference

        return reference, ""
    target = {"cpp": "progrpo_fast._C", "triton": "progrpo_fast.kernels"}[name]
    try:
        return importlib.import_module(target), ""
    except Exception as err:  # an ImportError, or a broken build raising something else
        return None, f"{type(err).__name__}: {err}"


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def usable(name: str, device: torch.device) -> tuple[bool, str]:
    """Whether backend ``name`` can run ops on ``device``, and why not."""
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    module, reason = load(name)
    if module is None:
        return False, f"{name} backend failed to load ({reason})"
    if name == "cpp" and device.type == "cuda" and not module.built_with_cuda():
        return False, "the cpp extension was built without CUDA (set PROGRPO_FAST_CUDA=1 and rebuild)"
    if name == "cpp" and device.type not in ("cpu", "cuda"):
        return False, f"the cpp extension has no {device.type} implementation"
    if name == "triton" and device.type == "cpu" and not triton_interpreted():
        return False, "Triton runs CPU tensors only under TRITON_INTERPRET=1"
    if name == "triton" and device.type not in ("cpu", "cuda"):
        return False, f"the Triton kernels have no {device.type} implementation"
    return True, ""


def choose(device: torch.device, backend: str | None = None):
    """Backend module for ``device``: the argument, else $PROGRPO_FAST_BACKEND, else the fastest
    usable one (CUDA: triton, cpp, torch; CPU: cpp, torch)."""
    forced = backend or os.environ.get(ENV_VAR) or None
    if forced is not None:
        ok, why = usable(forced, device)
        if not ok:
            raise ValueError(f"backend={forced!r} cannot run on {device}: {why}")
        return load(forced)[0]
    order = ("triton", "cpp", "torch") if device.type == "cuda" else ("cpp", "torch")
    for name in order:
        if usable(name, device)[0]:
            return load(name)[0]
    return load("torch")[0]


KEYED_NOISE_NAMES = ("torch", "triton")


def keyed_noise_backend(device: torch.device, backend: str | None = None) -> str:
    """Which implementation ``sampling.sde.keyed_noise`` runs on ``device``: ``backend`` when given
    ("torch": the int64 torch ops in sampling/sde.py; "triton": ``progrpo_fast.kernels.keyed_noise``,
    one launch), else triton on CUDA when it is usable there, else torch. $PROGRPO_FAST_BACKEND
    does not apply (it names the pruning ops' backends)."""
    if backend is None:
        return "triton" if device.type == "cuda" and usable("triton", device)[0] else "torch"
    if backend not in KEYED_NOISE_NAMES:
        raise ValueError(f"backend must be 'torch', 'triton' or None, got {backend!r}")
    return backend


def report() -> dict[str, str]:
    """Backend name -> 'loaded' or the reason it did not."""
    out = {}
    for name in NAMES:
        module, reason = load(name)
        if module is None:
            out[name] = f"not loaded: {reason}"
        elif name == "cpp":
            out[name] = "loaded (CPU" + (" + CUDA)" if module.built_with_cuda() else " only; built without CUDA)")
        elif name == "triton":
            out[name] = "loaded" + (" (interpreter: TRITON_INTERPRET=1)" if triton_interpreted() else "")
        else:
            out[name] = "loaded (reference)"
    return out
