"""Reproducible seeds: what makes two processes with the same config and train.seed log the same
numbers, bit for bit, on one machine.

Always (every run): every random draw of a run is keyed by train.seed. The one draw that was not,
the LoRA adapter's initial weights (peft draws them from torch's global CPU generator, which torch
seeds from the OS at start-up, so ``torch.initial_seed()`` differs in every process), is drawn
inside ``seeded_global_rng(iteration_seed(train.seed, 0, ADAPTER_INIT_STREAM))``; so every rank of a
multi-process run also starts from the same adapter.

With ``train.deterministic=true`` (``make_deterministic``), also the arithmetic:

- intra-op threads = ``DETERMINISTIC_THREADS`` (1): a CPU reduction (a sum, a matmul's inner
  product) splits its work by the thread count, and a different split adds in a different order,
  so the count must be fixed; 1 is the same on every machine, and parallel per-seed processes
  want one thread each anyway. Inter-op threads are left alone: they only run independent ops side
  by side (``torch.jit.fork``), which changes no value.
- ``torch.use_deterministic_algorithms(True)``: ops whose fast kernels accumulate in a racy order
  (CUDA atomics: index_add, scatter_add, some backward passes) use deterministic ones, and an op
  without one raises instead of drifting; cuDNN autotuning is off, and cuBLAS gets the fixed
  workspace it needs for reproducible results (``CUBLAS_WORKSPACE_CONFIG``, set when not already set,
  before the first cuBLAS call of the run).
"""
from __future__ import annotations

import contextlib
import os

import torch

ADAPTER_INIT_STREAM = 4000  # the iteration_seed stream of the adapter's initial weights
DETERMINISTIC_THREADS = 1
CUBLAS_WORKSPACE = ":4096:8"  # torch's documented setting for deterministic cuBLAS (CUDA >= 10.2)


@contextlib.contextmanager
def seeded_global_rng(seed: int):
    """Torch's global CPU generator seeded with ``seed`` inside the block and restored after it, for
    third-party code that draws from it (peft's LoRA initialisation)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def make_deterministic() -> dict:
    """Fixes this process's arithmetic for train.deterministic (see the module docstring); returns
    what it set, e.g. for a benchmark's record."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.set_num_threads(DETERMINISTIC_THREADS)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    return {"threads": torch.get_num_threads(), "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cublas_workspace_config": os.environ["CUBLAS_WORKSPACE_CONFIG"]}
