"""Time per GRPO iteration of each method against naive GRPO (``progrpo-fast bench throughput``).

All methods are built in one process and timed in interleaved rounds (each round times one
iteration of every method, in an order rotated from round to round), so a change of machine load
hits every method alike; each method's phases are the median over rounds, with the min-max, and
its ratio to the first naive method is the median of the per-round ratios, with their min-max."""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict
from pathlib import Path

import torch

from progrpo_fast.bench.cost_model import iteration_counts, measure_units, predict
from progrpo_fast.bench.methods import THROUGHPUT_METHODS, Method, build_trainer, method_config, select_methods, throughput_methods
from progrpo_fast.bench.results import markdown_table, pyplot, save_figure, write_results

PHASES = ("sampling", "proxy", "reward", "training")
COLUMNS = {"method": "method", "schedule": "schedule", "trajectory_steps": "trajectory-steps", "network_evaluations": "network evals",
           "tflops_total": "TFLOPs", "measured_s_sampling": "sampling s", "measured_s_proxy": "proxy s", "measured_s_reward": "reward s",
           "measured_s_training": "training s", "measured_s_total": "total s (median)", "measured_s_total_range": "total s min-max",
           "time_vs_first_naive": "time / first naive (median)", "time_vs_first_naive_range": "min-max over rounds",
           "predicted_s_total": "cost model s", "measured_over_predicted": "measured / model"}
PAPER_PRESET = "sd35m_pickscore"


def paper_setting() -> list[str]:
    """The paper's SD3.5-M setting on the configured model, read from the sd35m_pickscore preset
    (CFG scale, the steps with SDE noise, the fraction of noisy steps trained: Flow-GRPO's
    pickscore_sd3 trains all 9), with 1 prompt per iteration, minibatches of 12 rows, one optimizer
    step and no evaluations."""
    from progrpo_fast.train.config import load_config

    paper = load_config(PAPER_PRESET, check_paths=False)
    noise_steps = "null" if paper.sampler.noise_steps is None else f"[{','.join(map(str, paper.sampler.noise_steps))}]"
    return [f"model.guidance_scale={paper.model.guidance_scale}", f"sampler.noise_steps={noise_steps}",
            f"train.timestep_fraction={paper.train.timestep_fraction}", "sampler.prompts_per_iteration=1",
            "train.minibatch_rows=12", "train.grad_accum=1", "log.eval_prompts=0"]


DESCRIPTION = "time per GRPO iteration per method (interleaved rounds, median and min-max)"


def warmup_iterations(trainer) -> int:
    """1, or enough for a fitted proxy (probe, hidden) to have its min_samples survivor rewards, plus 1."""
    min_samples = getattr(trainer.proxy, "min_samples", None)
    if min_samples is None:
        return 1
    per_iteration = trainer.config.sampler.prompts_per_iteration * trainer.schedule.final_group_size
    return math.ceil(min_samples / per_iteration) + 1


def phase_seconds(metrics: dict) -> dict[str, float]:
    """One iteration's measured seconds per phase (sampling excludes the proxy) and in total. With
    the pruning inside captured CUDA graphs no proxy time is measured: proxy is NaN and sampling
    includes it."""
    proxy = metrics.get("proxy_s", math.nan)
    phases = {"sampling": metrics["sample_s"] - (0.0 if math.isnan(proxy) else proxy), "proxy": proxy, "reward": metrics["reward_s"],
              "training": metrics["train_s"]}
    return {**phases, "total": metrics["sample_s"] + metrics["reward_s"] + metrics["train_s"]}


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak CUDA memory allocated since the last reset (None on CPU: methods share one process)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def throughput(base: str | None, methods: list[Method], rounds: int, overrides=(), progress: bool = True) -> list[dict]:
    """Median time per GRPO iteration of each method over ``rounds`` interleaved rounds, split into
    phases, next to the cost model's counts, FLOPs and predicted seconds."""
    from tqdm import tqdm

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    trainers = []
    for method in methods:
        torch.manual_seed(0)
        trainer = build_trainer(method_config(base, method, overrides))
        for _ in range(warmup_iterations(trainer)):
            trainer.train_iteration()
        trainers.append(trainer)
    timed: list[list[dict]] = [[] for _ in methods]
    memory: list[float | None] = [None] * len(methods)
    bar = tqdm(total=rounds * len(methods), desc="throughput", disable=not progress)
    for r in range(rounds):
        for i in [(r + j) % len(methods) for j in range(len(methods))]:
            device = trainers[i].model.device
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            timed[i].append(phase_seconds(trainers[i].train_iteration()))
            peak = peak_memory_mib(device)
            memory[i] = peak if memory[i] is None or peak is None else max(memory[i], peak)
            bar.update(1)
    bar.close()
    rows = []
    for method, trainer, runs, peak in zip(methods, trainers, timed, memory):
        config = trainer.config
        counts = iteration_counts(method, config.sampler.prompts_per_iteration, len(trainer.trained_steps(0)))
        flop_units, second_units = measure_units(trainer, rows=trainer.schedule.group_size_max)
        totals = [run["total"] for run in runs]
        rows.append({
            "method": method.name, "schedule": method.schedule, "proxy": None if method.static_ovf or method.is_naive else method.proxy,
            "static_ovf": method.static_ovf, "rounds": rounds, **asdict(counts),
            "network_evaluations": counts.network_evaluations(getattr(trainer.model, "cfg", False), config.train.beta_kl > 0),
            **{f"tflops_{k}": v / 1e12 for k, v in predict(counts, flop_units).items()},
            **{f"measured_s_{k}": statistics.median(run[k] for run in runs) for k in (*PHASES, "total")},
            "measured_s_total_min": min(totals), "measured_s_total_max": max(totals),
            "measured_s_total_range": f"{min(totals):.3g}-{max(totals):.3g}",
            **{f"predicted_s_{k}": v for k, v in predict(counts, second_units).items()},
            "peak_memory_mib": peak, "per_round_total_s": totals,
        })
    naive = next((r for r, m in zip(rows, methods) if m.is_naive and not m.static_ovf), rows[0])  # the first naive method
    for row in rows:
        ratios = [a / b for a, b in zip(row["per_round_total_s"], naive["per_round_total_s"])]
        row["time_vs_first_naive"] = statistics.median(ratios)
        row["time_vs_first_naive_min"], row["time_vs_first_naive_max"] = min(ratios), max(ratios)
        row["time_vs_first_naive_range"] = f"{min(ratios):.3g}-{max(ratios):.3g}"
        row["tflops_vs_first_naive"] = row["tflops_total"] / naive["tflops_total"]
        row["measured_over_predicted"] = row["measured_s_total"] / row["predicted_s_total"]
    return rows


def plot_throughput(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [r["method"] for r in rows]
    bottom = [0.0] * len(rows)
    for phase in PHASES:
        values = [r[f"measured_s_{phase}"] for r in rows]
        ax.barh(names, values, left=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    medians = [r["measured_s_total"] for r in rows]
    spread = [[m - r["measured_s_total_min"] for m, r in zip(medians, rows)],
              [r["measured_s_total_max"] - m for m, r in zip(medians, rows)]]
    ax.errorbar(medians, names, xerr=spread, fmt="none", ecolor="grey", capsize=3, label="min-max over rounds")
    ax.scatter([r["predicted_s_total"] for r in rows], names, marker="|", s=300, color="black", label="cost model", zorder=3)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per GRPO iteration (median over rounds)")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def add_arguments(parser) -> None:
    parser.add_argument("--rounds", "--iterations", dest="rounds", type=int, default=5,
                        help="interleaved rounds: timed iterations per method, after warm-up (default 5)")
    parser.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(m.name for m in THROUGHPUT_METHODS)} "
                                                        "(default: all; with --group-size G the names say G)")
    parser.add_argument("--group-size", type=int, default=24,
                        help="G of naive GRPO; Pro-GRPO runs 2G -> G -> G/2 (default 24, the paper's)")


def run(args, command: str, tag: str) -> Path:
    overrides = [*paper_setting(), *args.overrides]
    if args.group_size < 4 or args.group_size % 2:
        raise ValueError(f"--group-size must be an even int >= 4 (Pro-GRPO keeps G/2, and a group needs >= 2 rows), got {args.group_size}")
    rows = throughput(args.config, select_methods(throughput_methods(args.group_size), args.methods), args.rounds, overrides)
    path = write_results(args.out, f"throughput_{tag}", rows, command)
    plot_throughput(rows, args.out / f"throughput_{tag}.png")
    print(markdown_table(rows, COLUMNS))
    return path
