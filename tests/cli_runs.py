"""Helpers of the tests that run ``python -m progrpo_fast train`` as a real process: a tiny shapes
run (16 px, 4 samples of 1 prompt, 4 steps), starting it, waiting for its log, reading it back."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from progrpo_fast.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.resolution=16", "sampler.schedule=4:2=2@4", "sampler.prompts_per_iteration=1", "sampler.proxy=latent",
        "prompts.pool=0", "train.lora_rank=2", "train.minibatch_rows=2", "log.eval_prompts=0", "log.progress=false"]


def tiny_overrides(out_dir, *extra) -> list[str]:
    return [*TINY, f"log.out_dir={out_dir}", *extra]


def tiny_config(out_dir, *extra):
    """The Config a process started by ``start_train(out_dir, *extra)`` trains."""
    return load_config(None, tiny_overrides(out_dir, *extra))


def start_train(out_dir, *extra, flags=()) -> subprocess.Popen:
    """``python -m progrpo_fast train`` of the tiny run in the background (text pipes)."""
    command = [sys.executable, "-m", "progrpo_fast", "train", *flags]
    for override in tiny_overrides(out_dir, *extra):
        command += ["--set", override]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def logged_iterations(out_dir) -> list[int]:
    """The iterations of the complete lines of out_dir/log.jsonl."""
    path = Path(out_dir) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["iteration"] for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def exit_report(process) -> str | None:
    """None while ``process`` (a Popen or a multiprocessing Process) runs; else its exit status
    (and a Popen's stderr)."""
    if isinstance(process, subprocess.Popen):
        return None if process.poll() is None else f"{process.returncode}:\n{process.communicate()[1]}"
    return None if process.is_alive() else str(process.exitcode)


def wait_for_iterations(process, out_dir, count: int, timeout: float = 240) -> None:
    """Waits until ``process`` has logged ``count`` iterations (it must still be running)."""
    deadline = time.monotonic() + timeout
    while len(logged_iterations(out_dir)) < count:
        if (report := exit_report(process)) is not None:
            raise AssertionError(f"the trainer exited before iteration {count} with {report}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {count} logged iterations in {timeout} s")
        time.sleep(0.05)
