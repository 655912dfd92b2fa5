"""Video benchmark: time per GRPO iteration of Pro-GRPO against naive GRPO on a Wan model, with
the trajectory-step ratio beside it.

    progrpo-fast bench wan_video                                   # CPU: tiny Wan, 9 and 17 frames
    progrpo-fast bench wan_video --model wan21_1p3b_random --frames 33 --height 240 --width 416   # GPU

Both methods train the moving-shape video task (``progrpo_fast.tasks.shapes_video``; reward
moving_shapes + 0.1 temporal_consistency) from the same weights with the same seed, so iteration i
of each samples the same prompts and, trajectory by trajectory, the same noise: naive GRPO keeps G
trajectories for all T steps; Pro-GRPO starts 2G and prunes to G and G/2 (the paper's pattern;
default 8@10 against 16:5=8,7=4@10). After one warm-up iteration each, the methods alternate
iteration by iteration (so drift in machine load hits both), and each row reports the mean phase
times and the paired ratio total(Pro-GRPO) / total(naive) of the same iteration: its mean with a
95% Student-t interval over iterations, and its median (robust to a load spike in one iteration);
beside the wall time, the process's CPU time per iteration (time.process_time, all threads), which
other processes on a shared CPU do not inflate, with its paired ratio. Trajectory-steps (network row-evaluations while sampling) are
counted from the schedules. On CUDA each row also has the method's peak allocated memory.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from progrpo_fast.sampling.schedule import PruneSchedule

METHODS = {"naive": "8@10", "pro-grpo": "16:5=8,7=4@10"}
TASK = ["reward.weights={moving_shapes: 1.0, temporal_consistency: 0.1}", "prompts.source=shapes_video", "sampler.noise_steps=null",
        "sampler.prompts_per_iteration=1", "train.timestep_fraction=0.5", "train.minibatch_rows=8", "log.progress=false",
        "log.eval_prompts=0"]
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)  # Student-t 97.5% quantiles, 1..10 degrees of freedom
COLUMNS = {"method": "method", "schedule": "schedule", "frames": "frames", "latent_shape": "latent (C, F, H, W)",
           "trajectory_steps": "trajectory-steps", "trajectory_steps_vs_naive": "trajectory-steps / naive", "trained_rows": "trained rows",
           "sample_s": "sampling s", "proxy_s": "proxy s", "reward_s": "reward s", "train_s": "training s", "total_s": "total s",
           "time_vs_naive": "time / naive", "time_vs_naive_ci95": "95% CI", "time_vs_naive_median": "median time / naive",
           "cpu_s": "CPU s", "cpu_vs_naive": "CPU time / naive", "cpu_vs_naive_ci95": "95% CI (CPU)", "peak_memory_mib": "peak MiB"}


def paired_ratio(numerators: list[float], denominators: list[float]) -> tuple[float, tuple[float, float]]:
    """Mean of the per-iteration ratios and its 95% Student-t interval (df > 10 uses df = 10's
    quantile: slightly wide)."""
    ratios = [a / b for a, b in zip(numerators, denominators)]
    mean = statistics.fmean(ratios)
    if len(ratios) < 2:
        return mean, (math.nan, math.nan)
    half = T_975[min(len(ratios) - 1, len(T_975)) - 1] * statistics.stdev(ratios) / math.sqrt(len(ratios))
    return mean, (mean - half, mean + half)


def build_model(kind: str, frames: int, height: int, width: int, device: str, dtype: torch.dtype):
    """The tiny random Wan (CPU) or a published-size one (``wan21_1p3b_random``), at frames x height x width."""
    from progrpo_fast.models import tiny
    from progrpo_fast.models.wan import WanDenoiser

    pipe = tiny.tiny_wan_pipeline() if kind == "tiny" else tiny.wan21_1p3b_sized_pipeline(device=device)
    pipe = pipe.to(device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)
    return WanDenoiser(pipe, guidance_scale=4.5, num_frames=frames, height=height, width=width,
                       max_sequence_length=16 if kind == "tiny" else 512)


def measure(frames=(9, 17), iterations: int = 5, methods: dict[str, str] = METHODS, model: str = "tiny", height: int = 32, width: int = 32,
        proxy: str = "latent", device: str | None = None, dtype: str = "fp32", overrides=(), progress=print) -> list[dict]:
    """One row per (frame count, method); see the module doc."""
    from progrpo_fast.ops.dtypes import DTYPES
    from progrpo_fast.train.build import build_prompts, build_reward
    from progrpo_fast.train.config import load_config
    from progrpo_fast.train.trainer import Trainer

    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if "naive" not in methods or not PruneSchedule.from_string(methods["naive"]).is_naive:
        raise ValueError(f"methods must include 'naive' with an unpruned schedule (e.g. '8@10'), got {methods}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for count in frames:
        trainers = {}
        for name, schedule in methods.items():
            config = load_config(None, [*TASK, f"sampler.schedule={schedule}", f"sampler.proxy={proxy}", "model.kind=wan",
                                        f"model.num_frames={count}", *overrides], check_paths=False)
            torch.manual_seed(0)
            trainers[name] = Trainer(config, build_model(model, count, height, width, device, DTYPES[dtype]), build_reward(config),
                                     build_prompts(config))
        for trainer in trainers.values():
            trainer.train_iteration()  # warm-up
        runs = {name: [] for name in trainers}
        peaks = {name: 0.0 for name in trainers}
        for i in range(iterations):
            for name, trainer in trainers.items():
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                started = time.process_time()
                runs[name].append({**trainer.train_iteration(), "cpu_s": time.process_time() - started})
                if device == "cuda":
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / 2**20)
            progress(f"[wan_video] {count} frames: iteration {i + 1}/{iterations}: "
                     + ", ".join(f"{n} {_total(r[-1]):.2f} s" for n, r in runs.items()))
        naive_steps = PruneSchedule.from_string(methods["naive"]).trajectory_steps(1)
        naive_totals = [_total(r) for r in runs["naive"]]
        for name, trainer in trainers.items():
            schedule = trainer.schedule
            totals = [_total(r) for r in runs[name]]
            ratio, (low, high) = paired_ratio(totals, naive_totals)
            cpu_ratio, (cpu_low, cpu_high) = paired_ratio([r["cpu_s"] for r in runs[name]], [r["cpu_s"] for r in runs["naive"]])
            rows.append({
                "method": name, "schedule": methods[name], "frames": count,
                "latent_shape": "x".join(map(str, trainer.model.latent_shape())),
                "iterations": iterations, "trajectory_steps": schedule.trajectory_steps(1),
                "trajectory_steps_vs_naive": schedule.trajectory_steps(1) / naive_steps, "trained_rows": schedule.final_group_size,
                **{key: statistics.fmean(r[key] for r in runs[name]) for key in ("sample_s", "proxy_s", "reward_s", "train_s")},
                "total_s": statistics.fmean(totals), "total_s_std": statistics.stdev(totals) if len(totals) > 1 else 0.0,
                "time_vs_naive": ratio, "time_vs_naive_ci95": f"{low:.3f}-{high:.3f}",
                "time_vs_naive_median": statistics.median(a / b for a, b in zip(totals, naive_totals)),
                "cpu_s": statistics.fmean(r["cpu_s"] for r in runs[name]),
                "cpu_vs_naive": cpu_ratio, "cpu_vs_naive_ci95": f"{cpu_low:.3f}-{cpu_high:.3f}",
                "peak_memory_mib": peaks[name] if device == "cuda" else None,
                "reward_mean": statistics.fmean(r["reward_mean"] for r in runs[name]),
            })
    return rows


def _total(metrics: dict) -> float:
    return metrics["sample_s"] + metrics["reward_s"] + metrics["train_s"]


DESCRIPTION = "Pro-GRPO vs naive GRPO iteration time on a Wan video model (paired iterations, trajectory-step ratio)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, nargs="+", default=[9, 17], help="pixel frames per video, each 4k + 1 (default: 9 17)")
    parser.add_argument("--iterations", type=int, default=5, help="paired iterations per method after one warm-up (default: 5)")
    parser.add_argument("--model", choices=["tiny", "wan21_1p3b_random"], default="tiny", help="tiny random Wan (CPU) or Wan2.1-1.3B-sized")
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--proxy", choices=["latent", "reward", "random"], default="latent")
    parser.add_argument("--naive", default=METHODS["naive"], help=f"naive GRPO schedule (default {METHODS['naive']})")
    parser.add_argument("--pro-grpo", dest="pro_grpo", default=METHODS["pro-grpo"],
                        help=f"Pro-GRPO schedule (default {METHODS['pro-grpo']})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 keeps CPU time free of other processes' load: no spin-waiting for a descheduled peer)")


def run(args: argparse.Namespace, command: str, tag: str) -> Path:
    """Runs the benchmark of parsed ``add_arguments`` options, writes wan_video_TAG.{csv,json}, prints the table."""
    from progrpo_fast.bench.results import markdown_table, write_results

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = measure(frames=tuple(args.frames), iterations=args.iterations, methods={"naive": args.naive, "pro-grpo": args.pro_grpo},
                   model=args.model, height=args.height, width=args.width, proxy=args.proxy, dtype=args.dtype, overrides=args.overrides)
    path = write_results(Path(args.out), f"wan_video_{tag}", rows, command)
    gpu_only, cpu_only = {"peak_memory_mib"}, {"cpu_s", "cpu_vs_naive", "cpu_vs_naive_ci95"}
    columns = {k: v for k, v in COLUMNS.items() if k not in (cpu_only if torch.cuda.is_available() else gpu_only)}
    print(markdown_table(rows, columns))
    return path
