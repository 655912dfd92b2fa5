"""Triton kernels of progrpo-fast, installed as ``progrpo_fast.kernels`` (the ``triton`` backend).

One fused op per file, each a @triton.jit kernel plus the host function that launches it; the host
functions below are the backend API that ``progrpo_fast.ops`` dispatches to (arguments arrive
validated and contiguous; outputs are on the input's device; nothing syncs the host).
On CPU tensors they run only under TRITON_INTERPRET=1 (set before importing triton).
"""
from ._interpreter_compat import apply as _apply_interpreter_compat

_apply_interpreter_compat()

from .compact import compact_  # noqa: E402
from .group_variance import group_variance  # noqa: E402
from .keyed_noise import keyed_noise  # noqa: E402
from .ovf_select import ovf_select  # noqa: E402
from .pool_latents import pool_latents  # noqa: E402
from .prune_select import prune_select  # noqa: E402
from .variance_select import variance_select  # noqa: E402

__all__ = ["pool_latents", "group_variance", "keyed_noise", "ovf_select", "variance_select", "prune_select", "compact_"]
