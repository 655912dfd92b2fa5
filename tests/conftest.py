"""Test setup: without a GPU, Triton kernels run under the interpreter (set before triton loads)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from progrpo_fast.ops import backends


@pytest.fixture(params=backends.NAMES)
def backend(request):
    """Every ops backend (torch, cpp, triton) usable on the test device; the others are skipped."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ok, why = backends.usable(request.param, device)
    if not ok:
        pytest.skip(why)
    return request.param
