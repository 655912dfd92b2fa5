"""Benchmarks against naive GRPO (``progrpo-fast bench``): an analytic cost model, the measured
time of one GRPO iteration per method, reward per compute on the built-in task, and how well each
proxy's checkpoint selection keeps the final-reward spread of a group.

Cost model, per GRPO iteration of P prompts::

    sampling  S * u_net      S = trajectory-steps: rows alive summed over the steps (P * sum(sizes))
    proxy     C * u_score    C = rows decoded and scored at checkpoints (the "reward" proxy; 0 otherwise)
    reward    R * u_score    R = rows whose final image is scored (P * G_max for naive GRPO and static
                             OVF, P * K for Pro-GRPO)
    training  N * tau * u_train   N = trained rows (P * K), tau = trained steps per row

u_net is one sample row's network evaluation (classifier-free guidance included: two network rows),
u_score one decode plus reward, u_train one row-step of the objective forward and backward (with
the KL reference's forward when beta_kl > 0). In FLOPs each unit is counted once on the real
modules by torch's FlopCounterMode (matmuls, convolutions, attention); in seconds each unit is
timed on its own; either set of units times the counts predicts an iteration.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from progrpo_fast.sampling.schedule import PruneSchedule

RESULTS_DIR = Path("benchmarks/results")
PHASES = ("sampling", "proxy", "reward", "training")


@dataclass(frozen=True)
class Method:
    """One way to run a GRPO iteration: a prune schedule, the proxy at its checkpoints, or static
    OVF (sample G_max to the end, keep the schedule's final K by exact OVF on the final rewards)."""

    name: str
    schedule: str
    proxy: str = "latent"
    static_ovf: bool = False

    def overrides(self) -> list[str]:
        return [f"sampler.schedule={self.schedule}", f"sampler.proxy={self.proxy}",
                f"sampler.static_ovf={'true' if self.static_ovf else 'false'}"]


def standard_methods(group_size: int, num_steps: int, checkpoints: tuple[int, int], naive_sizes=None) -> list[Method]:
    """Naive GRPO at G (and each of ``naive_sizes``), static OVF and Pro-GRPO with each proxy, all
    expanding to G_max = 2G and keeping K = G / 2: the paper's pattern (48 -> 24 -> 12 at steps
    {5, 7} of 10 against G = 24)."""
    g, (c1, c2) = group_size, checkpoints
    pruned = f"{2 * g}:{c1}={g},{c2}={g // 2}@{num_steps}"
    naive = [Method(f"naive-{n}", f"{n}@{num_steps}") for n in (naive_sizes or (g,))]
    return [*naive, Method("static-ovf", pruned, static_ovf=True),
            *(Method(f"pro-grpo-{proxy}", pruned, proxy=proxy) for proxy in ("latent", "reward", "probe"))]


THROUGHPUT_METHODS = standard_methods(24, 10, (5, 7), naive_sizes=(24, 48))  # the paper's SD3.5 setting
SHAPES_METHODS = standard_methods(8, 8, (3, 5))  # the built-in task's presets: 16 -> 8 -> 4 against G = 8


# ----------------------------------------------------------------------------------- cost model
@dataclass(frozen=True)
class IterationCounts:
    """Units of work in one GRPO iteration (see the module docstring)."""

    trajectory_steps: int  # S
    proxy_scored: int  # C
    reward_scored: int  # R
    trained_row_steps: int  # N * tau
    trained_rows: int  # N

    def network_evaluations(self, cfg: bool, kl: bool) -> int:
        """Network row-forwards: sampling plus training (twice each with CFG; KL adds a forward)."""
        per_row = 2 if cfg else 1
        return per_row * (self.trajectory_steps + self.trained_row_steps * (2 if kl else 1))


def iteration_counts(method: Method, prompts: int, trained_steps: int) -> IterationCounts:
    """The cost model's counts for ``prompts`` prompts with ``trained_steps`` steps trained per row."""
    schedule = PruneSchedule.from_string(method.schedule)
    sampled = PruneSchedule.naive(schedule.group_size_max, schedule.num_steps) if method.static_ovf else schedule
    sizes = sampled.sizes()
    proxy_scored = 0
    if method.proxy == "reward" and not method.static_ovf:
        proxy_scored = prompts * sum(sizes[t - 1] for t in sampled.checkpoints)
    trained_rows = prompts * schedule.final_group_size
    return IterationCounts(sampled.trajectory_steps(prompts), proxy_scored, prompts * sampled.final_group_size,
                           trained_rows * trained_steps, trained_rows)


@dataclass(frozen=True)
class UnitCosts:
    """Cost of one unit of each kind (FLOPs, or seconds)."""

    net: float
    score: float
    train: float


def predict(counts: IterationCounts, units: UnitCosts) -> dict[str, float]:
    """Cost of one iteration per phase and in total, in the units' unit."""
    phases = {"sampling": counts.trajectory_steps * units.net, "proxy": counts.proxy_scored * units.score,
              "reward": counts.reward_scored * units.score, "training": counts.trained_row_steps * units.train}
    return {**phases, "total": sum(phases.values())}


def measure_units(trainer, rows: int, repeats: int = 3) -> tuple[UnitCosts, UnitCosts]:
    """(FLOPs, seconds) per row of each unit, on ``rows`` rows of the trainer's model, reward and
    objective (the units of the cost model)."""
    from torch.utils.flop_counter import FlopCounterMode

    from progrpo_fast.models.base import repeat_rows
    from progrpo_fast.sampling.sampler import synchronized_clock
    from progrpo_fast.train.trainer import score_images

    model, device = trainer.model, trainer.model.device
    prompt = trainer.prompts(0, 0, 1)
    cond = repeat_rows(model.encode(prompt), rows)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(rows, *model.latent_shape(), generator=gen).to(device)
    x_next = x + 0.1 * torch.randn(x.shape, generator=gen).to(device)
    step, stepper = trainer.trained_steps(0)[0], trainer.sampler.stepper

    @torch.no_grad()
    def net():
        with trainer.autocast():
            model.predict(x, stepper.timesteps[step], cond)

    # programmatic rewards cost what the image holds: score real samples, not decoded noise
    sample = trainer.sampler.sample(prompt, seed=0).final_latents[:1]
    sample = sample.expand(rows, *sample.shape[1:]).contiguous()

    def score():
        score_images(trainer.reward, model.decode(sample), prompt * rows)

    with torch.no_grad(), trainer.autocast():
        old_log_prob = stepper(step, x, model.predict(x, stepper.timesteps[step], cond), x_next=x_next).log_prob

    def train():
        total = trainer.step_objective(step, x, x_next, old_log_prob, torch.ones(rows, device=device), cond)[0]
        total.backward()
        for p in trainer.parameters:
            p.grad = None

    units = {"net": net, "score": score, "train": train}
    flops, seconds = {}, {}
    for name, run in units.items():
        run()  # warm up
        with FlopCounterMode(display=False) as counter:
            run()
        flops[name] = counter.get_total_flops() / rows
        start = synchronized_clock(device)
        for _ in range(repeats):
            run()
        seconds[name] = (synchronized_clock(device) - start) / (repeats * rows)
    return UnitCosts(**flops), UnitCosts(**seconds)


# ----------------------------------------------------------------------------------- throughput
def build_trainer(config):
    from progrpo_fast.train.run import build_model, build_prompts, build_reward
    from progrpo_fast.train.trainer import Trainer

    model = build_model(config.model)
    reward = build_reward(config)
    return Trainer(config, model, reward, build_prompts(config))


def method_config(base: str | None, method: Method, overrides=()):
    from progrpo_fast.train.config import load_config

    return load_config(base, [*method.overrides(), *overrides])


def select_methods(methods: list[Method], names: str | None) -> list[Method]:
    """The methods named in the comma-separated ``names`` (in that order), or all when None."""
    if names is None:
        return methods
    by_name = {m.name: m for m in methods}
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in by_name]
    if unknown or not wanted:
        raise ValueError(f"--methods must name one or more of {', '.join(by_name)}, got {names!r}")
    return [by_name[name] for name in wanted]


def warmup_iterations(trainer) -> int:
    """1, or enough for the probe proxy to have fitted (its min_samples survivor rewards) plus 1."""
    from progrpo_fast.sampling.proxies import ProbeProxy

    if not isinstance(trainer.proxy, ProbeProxy):
        return 1
    per_iteration = trainer.config.sampler.prompts_per_iteration * trainer.schedule.final_group_size
    return math.ceil(trainer.proxy.min_samples / per_iteration) + 1


def peak_memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # kB on Linux


def measure_throughput(base: str | None, method: Method, iterations: int, overrides=()) -> dict:
    """Mean time per GRPO iteration of ``method`` split into phases, next to the cost model's
    counts, FLOPs and predicted seconds; peak memory."""
    config = method_config(base, method, overrides)
    torch.manual_seed(0)
    trainer = build_trainer(config)
    device = trainer.model.device
    for _ in range(warmup_iterations(trainer)):
        trainer.train_iteration()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = [trainer.train_iteration() for _ in range(iterations)]
    memory = peak_memory_mib(device)
    measured = {
        "sampling": mean(r["sample_s"] - r["proxy_s"] for r in runs),
        "proxy": mean(r["proxy_s"] for r in runs),
        "reward": mean(r["reward_s"] for r in runs),
        "training": mean(r["train_s"] for r in runs),
    }
    measured["total"] = sum(measured.values())
    counts = iteration_counts(method, config.sampler.prompts_per_iteration, runs[0]["trained_steps"])
    flop_units, second_units = measure_units(trainer, rows=trainer.schedule.group_size_max)
    cfg = getattr(trainer.model, "cfg", False)
    return {
        "method": method.name, "schedule": method.schedule, "proxy": None if method.static_ovf or "naive" in method.name else method.proxy,
        "static_ovf": method.static_ovf, "iterations": iterations, **asdict(counts),
        "network_evaluations": counts.network_evaluations(cfg, config.train.beta_kl > 0),
        **{f"tflops_{k}": v / 1e12 for k, v in predict(counts, flop_units).items()},
        **{f"measured_s_{k}": v for k, v in measured.items()},
        **{f"predicted_s_{k}": v for k, v in predict(counts, second_units).items()},
        "peak_memory_mib": memory, "memory_kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS",
    }


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _throughput_child(base, method, iterations, overrides, queue) -> None:
    queue.put(measure_throughput(base, method, iterations, overrides))


def throughput(base: str | None, methods: list[Method], iterations: int, overrides=(), isolate: bool = True, progress: bool = True) -> list[dict]:
    """measure_throughput for each method, each in a fresh process (``isolate``) so peak memory
    and caches are its own."""
    import torch.multiprocessing as mp
    from tqdm import tqdm

    rows = []
    for method in tqdm(methods, desc="throughput", disable=not progress):
        if not isolate:
            rows.append(measure_throughput(base, method, iterations, overrides))
            continue
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        child = ctx.Process(target=_throughput_child, args=(base, method, iterations, list(overrides), queue))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"throughput benchmark of {method.name} failed (exit code {child.exitcode}); its traceback is above")
        rows.append(queue.get(timeout=10))
    naive = next((r for r in rows if r["method"] == "naive-24"), rows[0])
    for row in rows:
        row["time_vs_first_naive"] = row["measured_s_total"] / naive["measured_s_total"]
        row["tflops_vs_first_naive"] = row["tflops_total"] / naive["tflops_total"]
        row["measured_over_predicted"] = row["measured_s_total"] / row["predicted_s_total"]
    return rows


# ----------------------------------------------------------------------------------- reward per compute
def reward_per_compute(base: str | None, methods: list[Method], seeds: list[int], budget_iterations: int, eval_every: int,
                       out_dir: Path, overrides=()) -> list[dict]:
    """Trains every method with every seed on the same FLOP budget (``budget_iterations`` of the
    first method's iterations); returns one record per (method, seed, evaluation): cumulative
    TFLOPs and training wall time at that point and the evaluation reward (log.eval_prompts of the
    caption pool when training on one, else fresh prompts; fixed noise)."""
    from progrpo_fast.train.run import train

    per_iteration = {}
    for method in methods:
        trainer = build_trainer(method_config(base, method, [*overrides, "log.eval_prompts=0"]))
        counts = iteration_counts(method, trainer.config.sampler.prompts_per_iteration, len(trainer.trained_steps(0)))
        per_iteration[method.name] = predict(counts, measure_units(trainer, rows=trainer.schedule.group_size_max, repeats=1)[0])["total"]
    budget = budget_iterations * per_iteration[methods[0].name]
    records = []
    for method in methods:
        iterations = max(1, round(budget / per_iteration[method.name]))
        for seed in seeds:
            run_dir = out_dir / "runs" / f"{method.name}-seed{seed}"
            config = method_config(base, method, [*overrides, f"train.seed={seed}", f"train.iterations={iterations}",
                                                  f"log.out_dir={run_dir}", f"log.eval_every={eval_every}", "log.progress=true",
                                                  f"log.checkpoint_every={iterations}"])
            print(f"[bench] {method.name} seed {seed}: {iterations} iterations ({per_iteration[method.name] / 1e12:.3f} TFLOPs each)")
            summary = train(config)
            points = [(0, 0.0, summary["eval_before"]["reward_mean"])]
            seconds = 0.0
            for m in summary["history"]:
                seconds += m["sample_s"] + m["reward_s"] + m["train_s"]
                if "eval_reward" in m:
                    points.append((m["iteration"] + 1, seconds, m["eval_reward"]))
            if points[-1][0] != iterations:
                points.append((iterations, seconds, summary["eval_after"]["reward_mean"]))
            for iteration, wall, value in points:
                records.append({"method": method.name, "seed": seed, "iteration": iteration,
                                "tflops": iteration * per_iteration[method.name] / 1e12, "train_wall_s": wall, "eval_reward": value})
    return records


def compute_to_reach(records: list[dict], method: str, target: float) -> float | None:
    """TFLOPs at which ``method``'s seed-mean evaluation reward first reaches ``target`` (linear
    interpolation between evaluations), or None if it never does."""
    curve = seed_mean_curve(records, method)
    for (c0, r0), (c1, r1) in zip(curve, curve[1:]):
        if r1 >= target:
            return c1 if r1 == r0 else c0 + (c1 - c0) * max(0.0, (target - r0) / (r1 - r0))
    return None


def seeds_by_iteration(records: list[dict], method: str) -> list[list[dict]]:
    """``method``'s records grouped by iteration (one record per seed), in iteration order."""
    groups: dict[int, list[dict]] = {}
    for r in records:
        if r["method"] == method:
            groups.setdefault(r["iteration"], []).append(r)
    return [group for _, group in sorted(groups.items())]


def seed_mean_curve(records: list[dict], method: str) -> list[tuple[float, float]]:
    """(TFLOPs, evaluation reward averaged over seeds) at each evaluated iteration of ``method``."""
    return [(group[0]["tflops"], mean(r["eval_reward"] for r in group)) for group in seeds_by_iteration(records, method)]


# ----------------------------------------------------------------------------------- selection quality
def selection_quality(base: str | None, methods: list[Method], batches: int, prompts_per_batch: int, seed: int = 0,
                      random_draws: int = 64, overrides=()) -> list[dict]:
    """For each pruning method and checkpoint: the mean over groups of the final-reward std of the
    rows the proxy kept, of the exact-OVF optimum on the final rewards (the oracle), and of a
    random subset of the same size. Survivors' trajectories equal the same trajectory ids of an
    unpruned rollout (noise is keyed by trajectory id), so one unpruned rollout gives every row's
    final reward. The probe proxy is fitted on the first half of the batches and scored on the rest."""
    from progrpo_fast import ops
    from progrpo_fast.sampling.sampler import ExpandPruneSampler
    from progrpo_fast.train.run import build_prompts
    from progrpo_fast.train.trainer import iteration_seed, score_images

    config = method_config(base, methods[0], overrides)
    trainer = build_trainer(config)
    model, reward = trainer.model, trainer.reward
    schedule = PruneSchedule.from_string(methods[0].schedule)
    full = ExpandPruneSampler.from_config(model, PruneSchedule.naive(schedule.group_size_max, schedule.num_steps), config.sampler)
    draw_prompts = build_prompts(config, stream=2000)
    samplers = {m.name: ExpandPruneSampler.from_config(model, PruneSchedule.from_string(m.schedule), config.sampler,
                                                       trainer._build_proxy(method_config(base, m, overrides).sampler)) for m in methods}
    sums: dict[tuple[str, int], dict[str, list[float]]] = {}
    gen = torch.Generator().manual_seed(seed)
    for batch in range(batches):
        prompts = draw_prompts(batch, 0, prompts_per_batch)
        rollout_seed = iteration_seed(seed, batch, 2000)
        unpruned = full.sample(prompts, seed=rollout_seed)
        final = score_images(reward, model.decode(unpruned.final_latents), unpruned.row_prompts)[1].cpu()
        final_of = final[unpruned.trajectory_ids.argsort().cpu()]  # by trajectory id
        groups = final_of.view(len(prompts), -1)
        for name, sampler in samplers.items():
            rollout = sampler.sample(prompts, seed=rollout_seed)
            proxy = sampler.proxy
            if hasattr(proxy, "observe"):
                proxy.observe(rollout, final_of[rollout.trajectory_ids.cpu()].to(rollout.latents.device))
                if batch < batches // 2:
                    continue
            for record in rollout.prune_log:
                keep = record.kept_ids.shape[1]
                kept = final_of[record.kept_ids.cpu()].std(1, unbiased=False)
                oracle = groups.gather(1, ops.ovf_select(groups, keep)).std(1, unbiased=False)
                random_std = torch.stack([groups[:, torch.randperm(groups.shape[1], generator=gen)[:keep]].std(1, unbiased=False)
                                          for _ in range(random_draws)]).mean(0)
                entry = sums.setdefault((name, record.step), {"kept": [], "oracle": [], "random": [], "all": []})
                entry["kept"] += kept.tolist()
                entry["oracle"] += oracle.tolist()
                entry["random"] += random_std.tolist()
                entry["all"] += groups.std(1, unbiased=False).tolist()
    rows = []
    for (name, step), entry in sums.items():
        kept, oracle, rand = mean(entry["kept"]), mean(entry["oracle"]), mean(entry["random"])
        rows.append({"method": name, "checkpoint_step": step, "groups": len(entry["kept"]), "std_kept": kept, "std_oracle": oracle,
                     "std_random": rand, "std_all": mean(entry["all"]), "kept_over_oracle": kept / oracle if oracle else float("nan"),
                     "random_over_oracle": rand / oracle if oracle else float("nan")})
    return rows


# ----------------------------------------------------------------------------------- gradient signal-to-noise
def signal_to_noise(total: torch.Tensor, squared_norms: float, n: int) -> float:
    """SNR = |E g|^2 / E|g - E g|^2 of one draw g, from n >= 2 independent draws given as their
    sum S and the sum A of their squared norms (unbiased parts, with E|S|^2 = n tr(Cov) + n^2 |E g|^2
    and E A = n tr(Cov) + n |E g|^2): |E g|^2 ~ (|S|^2 - A) / (n (n - 1)), tr(Cov) ~ (A - |S|^2 / n) / (n - 1).
    Can come out negative when the signal is below the estimate's noise."""
    if n < 2:
        raise ValueError(f"signal_to_noise needs n >= 2 draws, got {n}")
    total_sq = float(total.double().pow(2).sum())
    signal = (total_sq - squared_norms) / (n * (n - 1))
    noise = (squared_norms - total_sq / n) / (n - 1)
    return signal / noise if noise > 0 else float("nan")


def gradient_snr(trainer, batches: int) -> list[dict]:
    """The policy gradient's signal-to-noise ratio per GRPO iteration: ``batches`` independent
    rollouts of ``trainer`` (its iterations 0..batches-1, weights fixed), the gradient of the GRPO
    objective at each trainable step t and summed over all of them. One iteration's gradient, which
    averages its survivor rows, has SNR s; averaging m iterations gives m * s, so the update's
    direction is resolved (SNR 1) after about rows / s trained rows (``rows_for_snr_1``)."""
    steps = trainer.trainable_steps
    sums = {t: [0.0, 0.0] for t in [*steps, "all"]}  # per step: [sum of gradients, sum of squared norms]
    rows = 0
    for batch in range(batches):
        rollout, _, _, advantages, _ = trainer.rollout(batch)
        rows = rollout.latents.shape[0]
        per_step = []
        for t in steps:
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.step_objective(t, rollout.latents[:, t], rollout.latents[:, t + 1], rollout.log_probs[:, t], advantages, rollout.cond)[0].backward()
            per_step.append(torch.cat([p.grad.detach().flatten().double() for p in trainer.parameters]))
        for key, g in [*zip(steps, per_step), ("all", sum(per_step))]:
            sums[key][0] = sums[key][0] + g
            sums[key][1] += float(g.pow(2).sum())
    trainer.optimizer.zero_grad(set_to_none=True)
    results = []
    for key, (total, squared) in sums.items():
        snr = signal_to_noise(total, squared, batches)
        results.append({"step": key, "batches": batches, "rows_per_batch": rows, "snr_per_batch": snr,
                        "rows_for_snr_1": rows / snr if snr > 0 else float("inf")})
    return results


# ----------------------------------------------------------------------------------- results
def machine() -> dict:
    import progrpo_fast
    from progrpo_fast import backends

    device = f"{torch.cuda.get_device_name()}" if torch.cuda.is_available() else f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"
    return {"device": device, "python": platform.python_version(), "torch": torch.__version__, "progrpo_fast": progrpo_fast.__version__,
            "platform": platform.platform(), "backends": backends.report(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_results(out_dir: Path, name: str, rows: list[dict], command: str, extra: dict | None = None) -> Path:
    """rows -> NAME.csv and NAME.json (with the machine, versions and the reproducing command)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    payload = {"command": command, "machine": machine(), **(extra or {}), "rows": rows}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def plot_throughput(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [r["method"] for r in rows]
    bottom = [0.0] * len(rows)
    for phase in PHASES:
        values = [r[f"measured_s_{phase}"] for r in rows]
        ax.barh(names, values, left=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.scatter([r["predicted_s_total"] for r in rows], names, marker="|", s=300, color="black", label="cost model", zorder=3)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per GRPO iteration")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_reward_per_compute(records: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for method in dict.fromkeys(r["method"] for r in records):
        groups = seeds_by_iteration(records, method)
        for ax, key in zip(axes, ("tflops", "train_wall_s")):
            xs = [mean(p[key] for p in group) for group in groups]
            values = [[p["eval_reward"] for p in group] for group in groups]
            line, = ax.plot(xs, [mean(v) for v in values], label=method)
            ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("training compute (TFLOPs, cost model)")
    axes[1].set_xlabel("training wall time (s)")
    axes[0].set_ylabel("eval reward (seed mean, min-max band)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(rows: list[dict], columns: dict[str, str]) -> str:
    """rows -> a Markdown table of ``columns`` (key -> header); floats with 3 significant digits."""
    def cell(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[k]) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


THROUGHPUT_COLUMNS = {"method": "method", "schedule": "schedule", "trajectory_steps": "trajectory-steps",
                      "network_evaluations": "network evals", "tflops_total": "TFLOPs", "measured_s_sampling": "sampling s",
                      "measured_s_proxy": "proxy s", "measured_s_reward": "reward s", "measured_s_training": "training s",
                      "measured_s_total": "total s", "time_vs_first_naive": "time / naive-24", "predicted_s_total": "cost model s",
                      "measured_over_predicted": "measured / model", "peak_memory_mib": "peak MiB"}
SELECTION_COLUMNS = {"method": "proxy", "checkpoint_step": "checkpoint", "groups": "groups", "std_all": "std all G",
                     "std_kept": "std kept", "std_oracle": "std oracle", "std_random": "std random",
                     "kept_over_oracle": "kept / oracle", "random_over_oracle": "random / oracle"}


SNR_COLUMNS = {"step": "trained step", "batches": "iterations", "rows_per_batch": "rows / iteration", "snr_per_batch": "SNR / iteration",
               "rows_for_snr_1": "rows for SNR 1"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="progrpo-fast bench", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("throughput", "reward", "selection", "snr"),
                        help="throughput: time per iteration per method; reward: reward per compute; selection: proxy selection quality; "
                             "snr: signal-to-noise ratio of the policy gradient per iteration")
    parser.add_argument("--config", default=None, help="base preset or YAML (default: the built-in shapes task)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--iterations", type=int, default=3, help="throughput: timed iterations per method (after warm-up)")
    parser.add_argument("--seeds", type=int, default=3, help="reward: seeds per method")
    parser.add_argument("--budget", type=int, default=40, help="reward: FLOP budget, in iterations of naive GRPO")
    parser.add_argument("--eval-every", type=int, default=5, help="reward: iterations between evaluations")
    parser.add_argument("--methods", default=None, help="reward: comma-separated methods to train, the first setting the budget's unit "
                                                        f"(default: all of {','.join(m.name for m in SHAPES_METHODS)})")
    parser.add_argument("--batches", type=int, default=8, help="selection: rollouts (half fit the probe); snr: independent iterations (>= 2)")
    parser.add_argument("--prompts", type=int, default=8, help="selection: prompts per rollout")
    parser.add_argument("--tag", default=None, help="suffix of the result files (default: cpu or cuda)")
    args = parser.parse_args(argv)
    tag = args.tag or ("cuda" if torch.cuda.is_available() else "cpu")
    command = "progrpo-fast bench " + " ".join(sys.argv[2:] if argv is None else argv)
    if args.what == "throughput":
        overrides = ["sampler.prompts_per_iteration=1", "train.minibatch_rows=12", "train.grad_accum=1", "log.eval_prompts=0", *args.overrides]
        rows = throughput(args.config, THROUGHPUT_METHODS, args.iterations, overrides)
        path = write_results(args.out, f"throughput_{tag}", rows, command)
        plot_throughput(rows, args.out / f"throughput_{tag}.png")
        print(markdown_table(rows, THROUGHPUT_COLUMNS))
    elif args.what == "reward":
        methods = select_methods(SHAPES_METHODS, args.methods)
        records = reward_per_compute(args.config, methods, list(range(args.seeds)), args.budget, args.eval_every, args.out, args.overrides)
        naive = methods[0].name
        final_naive = seed_mean_curve(records, naive)[-1]
        summary = []
        for method in dict.fromkeys(r["method"] for r in records):
            curve = seed_mean_curve(records, method)
            reach = compute_to_reach(records, method, final_naive[1])
            summary.append({"method": method, "reward_start": curve[0][1], "reward_final": curve[-1][1],
                            "final_std_over_seeds": float(torch.tensor([r["eval_reward"] for r in seeds_by_iteration(records, method)[-1]]).std()),
                            "tflops_to_reach_naive_final": reach if reach is not None else float("nan"),
                            "fraction_of_naive_compute": reach / final_naive[0] if reach is not None else float("nan")})
        path = write_results(args.out, f"reward_per_compute_{tag}", records, command, {"summary": summary})
        plot_reward_per_compute(records, args.out / f"reward_per_compute_{tag}.png")
        print(markdown_table(summary, {k: k for k in summary[0]}))
    elif args.what == "snr":
        from progrpo_fast.train.config import load_config

        rows = gradient_snr(build_trainer(load_config(args.config, ["log.eval_prompts=0", *args.overrides])), args.batches)
        path = write_results(args.out, f"gradient_snr_{tag}", rows, command)
        print(markdown_table(rows, SNR_COLUMNS))
    else:
        methods = [m for m in SHAPES_METHODS if m.name.startswith("pro-grpo")]
        rows = selection_quality(args.config, methods, args.batches, args.prompts, overrides=args.overrides)
        path = write_results(args.out, f"selection_{tag}", rows, command)
        print(markdown_table(rows, SELECTION_COLUMNS))
    print(f"wrote {path}")
    return 0
