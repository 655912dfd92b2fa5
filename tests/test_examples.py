"""The examples run as scripts (short: the built-in model on CPU)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, expected", [
    ("examples/flow_grpo_loop.py", "-> kept 4 rows"),
    ("examples/prune_in_your_sampler.py", "survivor trajectory ids"),
])
def test_example_runs(script, expected):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(ROOT / script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout


def test_the_flow_grpo_example_adds_at_most_15_marked_lines():
    lines = (ROOT / "examples/flow_grpo_loop.py").read_text().splitlines()
    assert 0 < sum(line.rstrip().endswith("# + pruning") for line in lines) <= 15
