"""``progrpo-fast bench graphs``: seconds per sampling call, eager vs CUDA-graph replay.

For each model (the built-in shapes model, a mid-size random SD3 of 8 blocks x width 768, and the
SD3.5-Medium-sized random SD3) it times full expand-and-prune sampling calls with the latent
proxy: ExpandPruneSampler (eager) and GraphSampler (one captured graph per segment), the median
and range over ``--calls`` calls after a warm-up call (the graph sampler captures in it). It also
reports the pruning overhead (proxy + selection + compaction, CUDA events in the eager calls) as
a fraction of the call, and the naive G_max schedule's time against the pruned one's, beside the
ideal ratio of their trajectory-steps. Without CUDA only eager sampling runs (graphs need a GPU),
and the table says so.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from progrpo_fast.sampling import PruneSchedule
from progrpo_fast.sampling.graphs import GraphSampler
from progrpo_fast.sampling.proxies import LatentProxy
from progrpo_fast.sampling.sampler import ExpandPruneSampler, synchronized_clock

PAPER_SCHEDULE = "48:5=24,7=12@10"  # SD3.5-M vs Flow-GRPO (G = 24)
MODELS = {  # name -> (description, default schedule, prompts per call)
    "tiny": ("tiny random SD3 (2 blocks, 16 px): a smoke test", "8:2=4,4=2@6", 2),
    "shapes": ("built-in shapes SD3 (4 blocks, width 128, 16x16x4 latents)", None, 4),
    "sd3_mid": ("random SD3, 8 blocks, width 768, 512 px", PAPER_SCHEDULE, 1),
    "sd35m": ("random SD3.5-Medium size (24 blocks, width 1536, 2.2e9 params), 512 px", PAPER_SCHEDULE, 1),
}
COLUMNS = {"model": "model", "dtype": "dtype", "schedule": "schedule", "prompts": "prompts", "eager_s": "eager s",
           "graph_s": "graph s", "graph_speedup": "graph / eager speed-up", "capture_s": "capture s", "pool_mib": "graph pool MiB",
           "prune_fraction": "pruning share of eager call", "naive_s": "naive G_max s", "pruned_speedup": "naive / pruned",
           "ideal_speedup": "ideal (trajectory-steps)", "speedup_over_ideal": "achieved / ideal"}


def build(name: str, device: torch.device, dtype: torch.dtype):
    """(Denoiser, its network's parameter count) of benchmark model ``name``."""
    from progrpo_fast.models.sd3 import SD3Denoiser

    if name == "tiny":
        from progrpo_fast.models.tiny import tiny_sd3_pipeline

        pipe = tiny_sd3_pipeline().to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
        model = SD3Denoiser(pipe, max_sequence_length=4, resolution=16)
    elif name == "shapes":
        from progrpo_fast.train.build import build_model
        from progrpo_fast.train.config import load_config

        config = load_config(None, ["model.dtype=" + {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]],
                             check_paths=False)
        model = build_model(config.model, device=device)
    else:
        from progrpo_fast.models.tiny import sd35_medium_sized_pipeline

        size = {} if name == "sd35m" else dict(num_layers=8, num_attention_heads=12, dual_attention_layers=())
        pipe = sd35_medium_sized_pipeline(device=device, **size).to(dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        model = SD3Denoiser(pipe, resolution=512, max_sequence_length=256)
    return model, sum(p.numel() for p in model.network.parameters())


def time_calls(sampler, prompts: list[str], calls: int) -> tuple[list[float], float, list]:
    """(seconds of each timed call, seconds of the warm-up call, the timed calls' rollouts)."""
    device = sampler.model.device
    start = synchronized_clock(device)
    sampler.sample(prompts, seed=0)
    warmup = synchronized_clock(device) - start
    seconds, rollouts = [], []
    for seed in range(1, calls + 1):
        start = synchronized_clock(device)
        rollouts.append(sampler.sample(prompts, seed=seed))
        seconds.append(synchronized_clock(device) - start)
    return seconds, warmup, rollouts


def measure(name: str, calls: int, device: torch.device, dtype: torch.dtype, schedule: str | None = None) -> dict:
    """One row of the table for model ``name``."""
    model, parameters = build(name, device, dtype)
    description, default_schedule, num_prompts = MODELS[name]
    if schedule is None:
        from progrpo_fast.train.config import load_config

        schedule = default_schedule or load_config(None, check_paths=False).sampler.schedule
    pruned = PruneSchedule.from_string(schedule)
    naive = PruneSchedule.naive(pruned.group_size_max, pruned.num_steps)
    prompts = [f"a red circle {i}" for i in range(num_prompts)]
    graphs = device.type == "cuda"
    eager_s, _, eager_rollouts = time_calls(ExpandPruneSampler(model, pruned, LatentProxy()), prompts, calls)
    row = {"model": name, "description": description, "parameters": parameters, "device": str(device),
           "dtype": str(dtype).replace("torch.", ""), "schedule": schedule, "prompts": num_prompts, "calls": calls,
           "eager_s": statistics.median(eager_s), "eager_min_s": min(eager_s), "eager_max_s": max(eager_s),
           "prune_fraction": statistics.median(r.proxy_seconds for r in eager_rollouts) / statistics.median(eager_s)}
    best = row["eager_s"]
    if graphs:
        sampler = GraphSampler(model, pruned, LatentProxy(), warmup=1)
        graph_s, capture_s, _ = time_calls(sampler, prompts, calls)
        best = statistics.median(graph_s)
        row.update(graph_s=best, graph_min_s=min(graph_s), graph_max_s=max(graph_s), graph_speedup=row["eager_s"] / best,
                   capture_s=capture_s, pool_mib=sampler.capture_memory[-1] / 2**20)
    else:
        row.update(graph_s="needs CUDA", graph_speedup="needs CUDA", capture_s="needs CUDA", pool_mib="needs CUDA")
    naive_sampler = GraphSampler(model, naive, LatentProxy(), warmup=1) if graphs else ExpandPruneSampler(model, naive, LatentProxy())
    naive_s = statistics.median(time_calls(naive_sampler, prompts, calls)[0])
    ideal = naive.trajectory_steps() / pruned.trajectory_steps()
    row.update(naive_schedule=str(naive), naive_s=naive_s, pruned_speedup=naive_s / best, ideal_speedup=ideal,
               speedup_over_ideal=naive_s / best / ideal)
    del model
    if graphs:
        torch.cuda.empty_cache()
    return row


DESCRIPTION = "seconds per sampling call, eager vs CUDA-graph replay (eager only without CUDA)"


def add_arguments(parser) -> None:
    cuda = torch.cuda.is_available()
    parser.add_argument("--models", default="shapes,sd3_mid,sd35m" if cuda else "shapes",
                        help=f"comma-separated, of {', '.join(MODELS)} (default: shapes,sd3_mid,sd35m on CUDA, shapes on CPU)")
    parser.add_argument("--calls", type=int, default=3, help="timed sampling calls per sampler, after one warm-up call (default 3)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16" if cuda else "fp32",
                        help="weights of the random SD3.x models (tiny and shapes run fp32)")
    parser.add_argument("--schedule", default=None, help="prune schedule for every model (default: each model's)")


def run(args, command: str, tag: str) -> Path:
    from progrpo_fast.bench.results import markdown_table, write_results

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise ValueError(f"--models takes a comma-separated list of {', '.join(MODELS)}, got {args.models!r}")
    if args.calls < 1:
        raise ValueError(f"--calls must be >= 1, got {args.calls}")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if not cuda:
        print("[progrpo-fast] no CUDA device: timing eager sampling only (CUDA graphs need a GPU)")
    rows = []
    for name in names:
        started = time.perf_counter()
        rows.append(measure(name, args.calls, device, dtype if name.startswith("sd3") else torch.float32, args.schedule))
        print(f"[progrpo-fast] {name}: measured in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    path = write_results(args.out, f"graphs_{tag}", rows, command)
    table = markdown_table(rows, COLUMNS)
    (args.out / f"graphs_{tag}.md").write_text(table + "\n")
    print(table)
    return path
