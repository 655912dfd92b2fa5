"""Reproducible seeds (train.determinism): the adapter's initial weights are keyed by train.seed,
and with train.deterministic=true two processes with the same seed write the same log.jsonl."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from progrpo_fast.models.sd3 import SD3Denoiser
from progrpo_fast.models.tiny import tiny_sd3_pipeline
from progrpo_fast.train.config import load_config
from progrpo_fast.train.determinism import seeded_global_rng
from progrpo_fast.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["sampler.schedule=6:2=3@4", "sampler.prompts_per_iteration=2", "train.lora_rank=4", "train.lora_alpha=8", "train.iterations=3",
        "log.eval_prompts=2", "log.eval_per_prompt=2", "log.eval_every=1", "prompts.pool=8", "log.progress=false"]
# log.jsonl's wall-clock fields (seconds and rates of this process's clock), the only keys that may differ
WALL_CLOCK = {"sample_s", "proxy_s", "reward_s", "train_s", "trajectory_steps_per_s"}


def adapter_weights(seed: int, global_seed: int) -> list[torch.Tensor]:
    model = SD3Denoiser(tiny_sd3_pipeline(), max_sequence_length=4, resolution=16)
    torch.manual_seed(global_seed)  # what a process's global RNG happens to hold: must not matter
    config = load_config(None, ["sampler.schedule=6:2=3@4", "sampler.proxy=latent", "train.lora_rank=4", f"train.seed={seed}"])
    return [p.detach().clone() for p in Trainer(config, model, lambda *a: None, lambda it, rank, n: ["a"] * n).parameters]


def test_adapter_initialisation_is_keyed_by_the_seed_not_the_global_rng():
    first, second, other = adapter_weights(0, 1), adapter_weights(0, 2), adapter_weights(1, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert any(p.abs().max() > 0 for p in first)  # lora_A is drawn (lora_B starts at 0)
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_seeded_global_rng_restores_the_global_generator():
    state = torch.get_rng_state()
    with seeded_global_rng(5):
        inside = torch.rand(3)
    with seeded_global_rng(5):
        assert torch.equal(torch.rand(3), inside)
    assert torch.equal(torch.get_rng_state(), state)


def run_training(out_dir: Path, threads: str, hash_seed: str) -> list[dict]:
    """`progrpo-fast train` in a fresh process (its own thread count and string-hash seed) -> log.jsonl."""
    sets = [arg for key in [*TINY, "train.deterministic=true", f"log.out_dir={out_dir}"] for arg in ("--set", key)]
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "progrpo_fast", "train", *sets], cwd=ROOT, env=env, check=True, capture_output=True)
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def test_deterministic_runs_reproduce_across_processes(tmp_path):
    """Two processes, the same seed, different thread counts and hash seeds: the same log.jsonl
    bit for bit (floats compared by their JSON text) once the wall-clock fields are dropped."""
    first, second = run_training(tmp_path / "a", "2", "1"), run_training(tmp_path / "b", "1", "2")
    assert len(first) == 3 and "eval_reward_held_out" in first[0]
    assert set(first[0]) & WALL_CLOCK == WALL_CLOCK  # the dropped keys are there (renamed keys would pass silently)
    assert [json.dumps({k: v for k, v in r.items() if k not in WALL_CLOCK}) for r in first] == \
           [json.dumps({k: v for k, v in r.items() if k not in WALL_CLOCK}) for r in second]
