"""Every Triton kernel compiles for Hopper (sm_90) as the host functions launch it: the interpreter
that runs the kernels on CPU accepts code that the real compiler rejects (e.g. a reassigned
constexpr), so each distinct launch is also compiled here with Triton's own compiler, no GPU needed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_every_kernel_launch_compiles_for_sm90():
    script = Path(__file__).with_name("triton_aot_check.py")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["failures"], "\n".join(report["failures"])
    assert report["compiled"] == report["defined"], (
        f"kernels never launched by the check: {set(report['defined']) - set(report['compiled'])}")
