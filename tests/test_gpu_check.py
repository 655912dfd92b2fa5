"""scripts/gpu_check.sh --dry-run: every stage of the one-shot GPU acceptance run at toy size on
the CPU, ending in the summary table."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_runs_every_stage(tmp_path):
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path), "PYTHON": os.environ.get("PYTHON", "python")}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    stages = [line.split("] ", 1)[1] for line in done.stdout.splitlines() if line.startswith("== [")]
    assert stages == ["wheels", "build", "tests", "op microbenchmarks", "CUDA graphs vs eager sampling",
                      "GRPO throughput: naive-24 vs Pro-GRPO", "pruning inside a foreign sampler loop",
                      "convergence: shapes task, one process per seed", "summary", "done"]
    for name in ("gpu_tests_dryrun.xml", "ops_dryrun.json", "ops_dryrun.md", "graphs_dryrun.json", "throughput_dryrun.json",
                 "throughput_dryrun.md", "foreign_sampler_dryrun.json", "convergence_dryrun.json", "convergence_summary_dryrun.json",
                 "gpu_check_dryrun.md"):
        assert (tmp_path / name).is_file(), name
    converged = json.loads((tmp_path / "convergence_dryrun.json").read_text())["rows"]
    assert {(r["method"], r["seed"]) for r in converged} == {(m, s) for m in ("naive-8", "pro-grpo-reward") for s in (0, 1)}
    assert all("[bench convergence] naive-8 seed" in (tmp_path / "convergence_dryrun_logs" / f"seed{s}.log").read_text() for s in (0, 1))
    summary = (tmp_path / "gpu_check_dryrun.md").read_text()
    assert "| CUDA tests | " in summary and "0 failed" in summary and "iteration time pro-grpo-reward" in summary
    assert "StepPruner calls' share" in summary and "convergence speed-up over naive-8, shapes task, pro-grpo-reward (2 seeds)" in summary
