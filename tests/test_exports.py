"""Top-level lazy exports: every public name resolves to the object its module defines, and
``import progrpo_fast`` alone imports neither torch nor diffusers."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import progrpo_fast

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", [name for name in progrpo_fast.__all__ if name != "__version__"])
def test_each_lazy_name_resolves_to_its_module_object(name):
    module = importlib.import_module(progrpo_fast._LAZY[name])
    expected = module if module.__name__ == f"progrpo_fast.{name}" else getattr(module, name)
    assert getattr(progrpo_fast, name) is expected
    assert name in dir(progrpo_fast)


def test_from_import_of_the_public_names():
    from progrpo_fast import (  # noqa: F401
        ExpandPruneSampler,
        FluxDenoiser,
        GraphSampler,
        LatentProxy,
        PruneSchedule,
        RewardProxy,
        SD1Denoiser,
        SD3Denoiser,
        ops,
    )

    assert callable(ops.prune_select)
    assert PruneSchedule.from_string("4:2=2@5").final_group_size == 2


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        progrpo_fast.NoSuchName  # noqa: B018


def test_import_alone_loads_no_heavy_modules():
    code = (
        "import sys\n"
        "import progrpo_fast\n"
        "heavy = [m for m in ('torch', 'torch.nn', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import progrpo_fast imported {out.stdout.strip()}"
