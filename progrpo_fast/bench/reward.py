"""Reward per compute on the built-in task (``progrpo-fast bench reward``): every method trains
with every seed on the same FLOP budget, on paired seeds (the same prompts and keyed noise:
naive GRPO's G trajectories are the first G ids of Pro-GRPO's G_max), and the held-out captions'
reward is evaluated (log.eval_prompts x log.eval_per_prompt samples, fixed noise) at evenly spaced
points of the budget.

Resumable: each finished (method, seed) is added to the results JSON at once, and a rerun with
the same setup skips the pairs already there, so the table can be built across sessions; several
processes may build it together (e.g. one per ``--methods`` list): each adds its rows under a lock.

Summary per method against the reference (the first method, naive GRPO at G_max by default), over
the seeds both have: the paired difference of the final reward (mean over seeds, 95% bootstrap CI
over seeds) and the fraction of the reference's compute at which the method's seed-mean curve
first reaches the reference's final seed-mean reward (linear interpolation; 95% bootstrap CI)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from progrpo_fast.bench.cost_model import flops_per_iteration
from progrpo_fast.bench.methods import Method, build_trainer, method_config, paired_methods, select_methods
from progrpo_fast.bench.results import (
    add_to_results,
    load_results,
    locked,
    markdown_table,
    pyplot,
    save_figure,
    save_results,
    seed_range,
    write_results,
)

DESCRIPTION = "reward per compute, paired seeds, resumable (bootstrap CIs of the final difference and the compute to reach)"
SUMMARY_COLUMNS = {"method": "method", "seeds": "paired seeds", "reward_start": "reward at 0", "reward_final": "final (seed mean)",
                   "final_minus_reference": "final - reference", "final_minus_reference_ci": "95% CI",
                   "fraction_of_reference_compute": "compute to reach the reference's final", "fraction_ci": "95% CI"}


def default_methods(base: str | None, overrides=()) -> list[Method]:
    from progrpo_fast.train.config import load_config

    return paired_methods(load_config(base, overrides).sampler.schedule)


def evaluation_iterations(iterations: int, evaluations: int) -> list[int]:
    """``evaluations`` evenly spaced iterations in (0, iterations], the last one included."""
    return sorted({max(1, round(i * iterations / evaluations)) for i in range(1, evaluations + 1)})


def train_curve(base: str | None, method: Method, seed: int, iterations: int, evaluations: int, overrides=(), observe=None) -> list[dict]:
    """Trains ``method`` for ``iterations`` with train.seed = ``seed``; one record per evaluation
    (iteration 0 included): iteration, training wall seconds so far, held-out evaluation reward and
    its standard error over the evaluation prompts. ``observe(trainer)``, if given, runs after every
    iteration."""
    from progrpo_fast.train.evaluate import evaluate, standard_error

    config = method_config(base, method, [*overrides, f"train.seed={seed}", f"train.iterations={iterations}"])
    trainer = build_trainer(config)
    due = set(evaluation_iterations(iterations, evaluations))

    def point(seconds: float) -> dict:
        result = evaluate(config, trainer.model, trainer.reward, held_out=True, step_context=trainer.step_context)
        return {"iteration": trainer.iteration, "train_wall_s": seconds, "eval_reward": result["reward_mean"],
                "eval_se": standard_error(result["rewards"].mean(1))}

    points, seconds = [point(0.0)], 0.0
    for _ in range(iterations):
        started = time.perf_counter()
        trainer.train_iteration()
        seconds += time.perf_counter() - started
        if observe is not None:
            observe(trainer)
        if trainer.iteration in due:
            points.append(point(seconds))
    return points


def setup_of(base, methods, budget_iterations, evaluations, overrides) -> dict:
    """What decides a results file's numbers (the resolved config included, so a changed default is
    noticed): a rerun adds to a file only with the same setup."""
    from progrpo_fast.train.config import load_config

    return {"config": base, "overrides": list(overrides), "resolved": load_config(base, overrides).to_dict(),
            "budget_iterations": budget_iterations, "evaluations": evaluations, "reference": methods[0].name}


def reward_per_compute(base: str | None, methods: list[Method], seeds: list[int], budget_iterations: int, evaluations: int,
                       path: Path, command: str, overrides=(), only: set[str] | None = None, label: str = "bench reward") -> list[dict]:
    """Trains every (method, seed) not yet in ``path`` (of the methods named in ``only``, when
    given) on the FLOP budget of ``budget_iterations`` iterations of the first method, adding each
    to ``path`` when it finishes; returns all rows (method, seed, iteration, tflops, train_wall_s,
    eval_reward, eval_se). ``label`` prefixes the progress lines."""
    overrides = [*overrides, "log.progress=false"]
    setup, empty = setup_of(base, methods, budget_iterations, evaluations, overrides), {"flops_per_iteration": {}, "rows": []}
    per_iteration = dict(load_results(path, setup, empty)["flops_per_iteration"])
    for method in methods:
        if method.name not in per_iteration:
            per_iteration[method.name] = flops_per_iteration(
                build_trainer(method_config(base, method, [*overrides, "log.eval_prompts=0"])), method)
    payload = add_to_results(path, setup, empty, command, lambda payload: payload["flops_per_iteration"].update(per_iteration))
    budget = budget_iterations * per_iteration[methods[0].name]
    for seed in seeds:  # seed-major: an interrupted table holds whole pairs
        for method in methods:
            if (only is not None and method.name not in only) or (method.name, seed) in finished(load_results(path, setup, empty)):
                continue
            iterations = max(1, round(budget / per_iteration[method.name]))
            print(f"[{label}] {method.name} seed {seed}: {iterations} iterations "
                  f"({per_iteration[method.name] / 1e12:.4f} TFLOPs each)", flush=True)
            points = train_curve(base, method, seed, iterations, evaluations, overrides)
            rows = [{"method": method.name, "seed": seed, **p, "tflops": p["iteration"] * per_iteration[method.name] / 1e12}
                    for p in points]
            payload = add_to_results(path, setup, empty, command,
                                     lambda payload, method=method, seed=seed, rows=rows:
                                     None if (method.name, seed) in finished(payload) else payload["rows"].extend(rows))
    return payload["rows"]


def summarize_file(path: Path, command: str, reference: str, order: list[str], summarize) -> tuple[list[dict], list[str], list[dict]]:
    """``summarize(rows, names)`` of every method in the results file (other processes' included),
    ``reference`` first, then those of ``order`` present; stored as the file's "summary" under its
    lock. Returns (rows, names, summary)."""
    with locked(path):
        payload = json.loads(path.read_text())
        present = {r["method"] for r in payload["rows"]}
        names = [reference, *(name for name in order if name in present and name != reference)]
        summary = payload["summary"] = summarize(payload["rows"], names)
        save_results(path, payload, command)
    return payload["rows"], names, summary


def finished(payload: dict) -> set[tuple[str, int]]:
    return {(r["method"], r["seed"]) for r in payload["rows"]}


# ----------------------------------------------------------------------------------- statistics
def curves(rows: list[dict], method: str) -> dict[int, list[tuple[float, float]]]:
    """seed -> [(TFLOPs, evaluation reward)] of ``method``, in order."""
    out: dict[int, list[tuple[float, float]]] = {}
    for r in sorted((r for r in rows if r["method"] == method), key=lambda r: (r["seed"], r["iteration"])):
        out.setdefault(r["seed"], []).append((r["tflops"], r["eval_reward"]))
    return out


def mean_curve(per_seed: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Seed-mean (TFLOPs, reward) of curves evaluated at the same iterations."""
    return [(points[0][0], sum(p[1] for p in points) / len(points)) for points in zip(*per_seed)]


def compute_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """TFLOPs at which ``curve`` first reaches ``target`` (linear interpolation), None if never."""
    if curve and curve[0][1] >= target:
        return curve[0][0]
    for (c0, r0), (c1, r1) in zip(curve, curve[1:]):
        if r1 >= target:
            return c0 + (c1 - c0) * (target - r0) / (r1 - r0)
    return None


def bootstrap_picks(count: int, draws: int, seed: int = 0) -> torch.Tensor:
    """(draws, count) indices drawn with replacement from range(count): the bootstrap's resamples."""
    return torch.randint(count, (draws, count), generator=torch.Generator().manual_seed(seed))


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of ``values`` by sorted position (inf values sort last; NaN
    values are dropped; NaN bounds when nothing is left): the percentile bootstrap's CI."""
    values = sorted(v for v in map(float, values) if not math.isnan(v))
    if not values:
        return math.nan, math.nan
    return values[int((1 - level) / 2 * len(values))], values[min(len(values) - 1, int((1 + level) / 2 * len(values)))]


def bootstrap_ci(statistic, seeds: list[int], draws: int = 10000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of statistic(resampled seeds) over seeds drawn with replacement
    (a statistic may return inf, e.g. "never reached"; NaN draws are dropped)."""
    picks = bootstrap_picks(len(seeds), draws, seed).tolist()
    return percentile_interval((statistic([seeds[i] for i in pick]) for pick in picks), level)


def summarize(rows: list[dict], methods: list[str], draws: int = 10000) -> list[dict]:
    """Per method, against the reference methods[0], on the seeds both finished (see module doc)."""
    reference = curves(rows, methods[0])
    summary = []
    for name in methods:
        own = curves(rows, name)
        seeds = sorted(set(own) & set(reference))
        if not seeds:
            continue

        def difference(chosen, own=own):
            return sum(own[s][-1][1] - reference[s][-1][1] for s in chosen) / len(chosen)

        def fraction(chosen, own=own):
            ref = mean_curve([reference[s] for s in chosen])
            reach = compute_to_reach(mean_curve([own[s] for s in chosen]), ref[-1][1])
            return math.inf if reach is None else reach / ref[-1][0]

        mine = mean_curve([own[s] for s in seeds])
        point_fraction = fraction(seeds)
        d_low, d_high = bootstrap_ci(difference, seeds, draws)
        f_low, f_high = bootstrap_ci(fraction, seeds, draws)
        summary.append({
            "method": name, "seeds": len(seeds), "reward_start": mine[0][1], "reward_final": mine[-1][1], "tflops_final": mine[-1][0],
            "final_minus_reference": difference(seeds), "final_minus_reference_ci_low": d_low, "final_minus_reference_ci_high": d_high,
            "final_minus_reference_ci": f"[{d_low:+.3f}, {d_high:+.3f}]",
            "fraction_of_reference_compute": point_fraction, "fraction_ci_low": f_low, "fraction_ci_high": f_high,
            "fraction_ci": f"[{f_low:.2f}, {f_high:.2f}]",
            "per_seed_final_minus_reference": [own[s][-1][1] - reference[s][-1][1] for s in seeds],
        })
    return summary


def plot(rows: list[dict], methods: list[str], path: Path) -> Path:
    """Per-seed curves (thin) and the seed mean (thick) of each method against TFLOPs."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, name in enumerate(methods):
        own = curves(rows, name)
        if not own:
            continue
        colour = f"C{i}"
        for points in own.values():
            ax.plot(*zip(*points), color=colour, alpha=0.25, lw=0.8)
        ax.plot(*zip(*mean_curve(list(own.values()))), color=colour, lw=2, label=f"{name} ({len(own)} seeds)")
    ax.set_xlabel("training compute (TFLOPs, cost model)")
    ax.set_ylabel("held-out reward (thin: per seed, thick: mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def add_paired_arguments(parser, methods: str, seeds: int, budget: int, evaluations: int) -> None:
    """The options of a paired, resumable benchmark (bench reward, bench convergence) with its
    defaults (``methods``: the default list in words)."""
    parser.add_argument("--methods", default=None, help="comma-separated methods, the first the reference and the budget's unit "
                                                        f"(default: {methods})")
    parser.add_argument("--only", default=None, help="train only these of --methods (comma-separated), e.g. while another process "
                                                     "trains the others into the same file")
    parser.add_argument("--seeds", type=seed_range, default=str(seeds), help=f"seeds per method: N for 0..N-1, or A-B (default {seeds})")
    parser.add_argument("--budget", type=int, default=budget, help=f"FLOP budget in iterations of the first method (default {budget})")
    parser.add_argument("--evaluations", type=int, default=evaluations,
                        help=f"evaluations along the budget, besides iteration 0 (default {evaluations})")


def train_paired(args, command: str, methods_of, path: Path, label: str) -> list[Method]:
    """reward_per_compute for the options of add_paired_arguments, the methods from
    ``methods_of(config, overrides)``; returns the methods of --methods."""
    methods = select_methods(methods_of(args.config, args.overrides), args.methods)
    only = None if args.only is None else {m.name for m in select_methods(methods, args.only)}
    reward_per_compute(args.config, methods, args.seeds, args.budget, args.evaluations, path, command, args.overrides, only, label)
    return methods


def add_arguments(parser) -> None:
    add_paired_arguments(parser, "naive-G_max, naive-K, static-ovf, pro-grpo-<each proxy>", seeds=8, budget=40, evaluations=4)


def run(args, command: str, tag: str) -> Path:
    path = args.out / f"reward_per_compute_{tag}.json"
    methods = train_paired(args, command, default_methods, path, "bench reward")
    order = [m.name for m in default_methods(args.config, args.overrides)]
    rows, names, summary = summarize_file(path, command, methods[0].name, order, summarize)
    write_results(args.out, f"reward_per_compute_summary_{tag}", summary, command)
    plot(rows, names, args.out / f"reward_per_compute_{tag}.png")
    print(markdown_table(summary, SUMMARY_COLUMNS))
    return path
