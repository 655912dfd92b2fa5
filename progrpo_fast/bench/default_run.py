"""The README's first command over several seeds (``progrpo-fast bench default``): ``train`` with
the built-in defaults and ``train.seed`` = 0..N-1 (each seed its own caption pool, held-out
captions and noise). Per seed: the pool's and the held-out captions' reward at every evaluation
(before, every log.eval_every iterations, after), each with its standard error over the evaluation
prompts, and the before -> after change with its paired standard error. Over the seeds, for each of
pool and held-out, from the seed-mean curve:

    gain       = mean_s (r_s(final) - r_s(0))                 +- its standard error over seeds
    decay      = mean_s (r_s(final) - r_s(best))              best: the iteration of the mean curve's maximum
    rises      = gain > 2 SE(gain)
    holds      = decay >= -SE(decay)                          (the final is within 1 SE of the best point)

Resumable and splittable: each finished seed is added to the results JSON under its lock, so
``--seeds 0-1`` and ``--seeds 2-3`` may run as two processes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from progrpo_fast.bench.results import add_to_results, load_results, markdown_table, pyplot, save_figure, save_results, seed_range

DESCRIPTION = "the default training run over seeds: pool and held-out reward at every evaluation, gain and decay with standard errors"
CURVES = (("", "pool"), ("_held_out", "heldout"))
COLUMNS = {"seed": "seed", "pool_before": "pool before", "pool_best": "pool best", "pool_after": "pool after", "pool_change": "pool change",
           "pool_change_se": "SE", "heldout_before": "held-out before", "heldout_best": "held-out best", "heldout_after": "held-out after",
           "heldout_change": "held-out change", "heldout_change_se": "SE", "seconds": "training s"}


def evaluation_points(summary: dict, log_jsonl: Path) -> list[dict]:
    """[{"iteration", "pool", "pool_se", "heldout", "heldout_se"}] of a finished run: before, every
    logged evaluation, after."""
    from progrpo_fast.train.evaluate import standard_error

    def point(when):
        out = {"iteration": summary[f"eval_{when}"]["iteration"]}
        for key, name in CURVES:
            entry = summary[f"eval_{when}{key}"]
            out.update({name: entry["reward_mean"], f"{name}_se": standard_error(torch.tensor(entry["prompt_means"], dtype=torch.float64))})
        return out

    logged = [json.loads(line) for line in log_jsonl.read_text().splitlines() if line.strip()]
    middle = [{"iteration": r["iteration"] + 1, **{name: r["eval_reward" + key] for key, name in CURVES},
               **{f"{name}_se": r.get(f"eval_reward{key}_se", math.nan) for key, name in CURVES}}
              for r in logged if "eval_reward" in r]
    return [point("before"), *middle, point("after")]


def run_seed(base: str | None, seed: int, out_dir: Path, overrides=()) -> dict:
    from progrpo_fast.train.config import load_config
    from progrpo_fast.train.run import train

    run_dir = out_dir / f"seed{seed}"
    config = load_config(base, [*overrides, f"train.seed={seed}", f"log.out_dir={run_dir}", "log.progress=false"])
    summary = train(config, overwrite="delete")  # a seed that did not finish reruns from scratch (its curve is the row)
    return seed_row(seed, summary, run_dir)


def seed_row(seed: int, summary: dict, run_dir: Path) -> dict:
    """The results row of a finished run of ``seed`` (its summary and run folder)."""
    from progrpo_fast.train.evaluate import paired_change

    curve = evaluation_points(summary, run_dir / "log.jsonl")
    row = {"seed": seed, "iterations": summary["iterations"], "seconds": summary["seconds"], "curve": curve}
    for key, name in CURVES:
        change, se = paired_change(summary["eval_before" + key], summary["eval_after" + key])
        row.update({f"{name}_before": curve[0][name], f"{name}_best": max(p[name] for p in curve), f"{name}_after": curve[-1][name],
                    f"{name}_change": change, f"{name}_change_se": se})
    return row


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """(mean, its standard error: sd with n - 1 over sqrt(n); NaN for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def across_seeds(rows: list[dict]) -> dict:
    """The module docstring's gain, decay, rises and holds per curve, with the seed-mean curve."""
    iterations = [p["iteration"] for p in rows[0]["curve"]]
    if any([p["iteration"] for p in r["curve"]] != iterations for r in rows):
        raise ValueError("bench default: the seeds' evaluation iterations differ (rows from different log.eval_every or train.iterations)")
    out = {"iterations": iterations}
    for _, name in CURVES:
        per_seed = [[p[name] for p in r["curve"]] for r in rows]
        curve = [sum(column) / len(column) for column in zip(*per_seed)]
        best = max(range(len(curve)), key=curve.__getitem__)
        gain, gain_se = mean_and_se([c[-1] - c[0] for c in per_seed])
        decay, decay_se = mean_and_se([c[-1] - c[best] for c in per_seed])
        out.update({f"{name}_curve": curve, f"{name}_best_iteration": iterations[best], f"{name}_gain": gain, f"{name}_gain_se": gain_se,
                    f"{name}_decay": decay, f"{name}_decay_se": decay_se, f"{name}_rises": gain > 2 * gain_se,
                    f"{name}_holds": decay >= -decay_se})
    return out


def plot(rows: list[dict], summary: dict, path: Path) -> Path:
    """Per-seed curves (thin) and the seed-mean curve with its 95% band (mean +- 1.96 SE over
    seeds) of the pool and held-out captions against iterations."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    iterations = summary["iterations"]
    for i, (_, name) in enumerate(CURVES):
        per_seed = [[p[name] for p in r["curve"]] for r in rows]
        for c in per_seed:
            ax.plot(iterations, c, color=f"C{i}", lw=0.6, alpha=0.35)
        half = [1.96 * mean_and_se(list(column))[1] for column in zip(*per_seed)] if len(rows) > 1 else [0.0] * len(iterations)
        centre = summary[f"{name}_curve"]
        label = {"pool": "training-pool captions", "heldout": "held-out captions"}[name]
        ax.plot(iterations, centre, color=f"C{i}", lw=2, marker="o", ms=3, label=f"{label}: mean of {len(rows)} seeds")
        low, high = [c - h for c, h in zip(centre, half)], [c + h for c, h in zip(centre, half)]
        ax.fill_between(iterations, low, high, color=f"C{i}", alpha=0.15, lw=0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("evaluation reward (thin: per seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def add_row(rows: list[dict], row: dict) -> None:
    """Adds a seed's row unless another process added that seed first."""
    if row["seed"] not in {r["seed"] for r in rows}:
        rows.append(row)


def add_arguments(parser) -> None:
    parser.add_argument("--seeds", type=seed_range, default="4", help="seeds 0..N-1, or A-B for seeds A..B (default 4)")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-default"), help="run folders (default runs/bench-default)")


def run(args, command: str, tag: str) -> Path:
    from progrpo_fast.train.config import load_config

    config = load_config(args.config, args.overrides)
    if not config.prompts.pool:
        raise ValueError("bench default compares a caption pool with held-out captions: it needs prompts.pool > 0")
    if not config.log.eval_prompts:
        raise ValueError("bench default measures evaluations: it needs log.eval_prompts > 0")
    path = args.out / f"default_run_{tag}.json"
    setup = {"config": args.config, "overrides": list(args.overrides), "resolved": config.to_dict()}
    for seed in args.seeds:
        if seed not in {r["seed"] for r in load_results(path, setup, {"rows": []})["rows"]}:
            print(f"[bench default] seed {seed}", flush=True)
            row = run_seed(args.config, seed, args.runs, args.overrides)
            add_to_results(path, setup, {"rows": []}, command, lambda payload, row=row: add_row(payload["rows"], row))
    payload = load_results(path, setup, {"rows": []})
    rows = sorted(payload["rows"], key=lambda r: r["seed"])
    payload["summary"] = across_seeds(rows)
    save_results(path, payload, command)
    plot(rows, payload["summary"], args.out / f"default_run_{tag}.png")
    print(markdown_table(rows, COLUMNS))
    print(summary_text(payload["summary"], len(rows)))
    return path


def summary_text(summary: dict, seeds: int) -> str:
    """The verdict lines: per curve the gain and the decay from the best point, each +- SE over seeds."""
    lines = []
    for _, name in CURVES:
        s = {k[len(name) + 1:]: v for k, v in summary.items() if k.startswith(name + "_")}
        rise = "rises: > 2 SE" if s["rises"] else "does not rise: <= 2 SE"
        lines.append(f"{name}: gain {s['gain']:+.4f} +- {s['gain_se']:.4f} ({rise}), "
                     f"final - best (iteration {s['best_iteration']}) {s['decay']:+.4f} +- {s['decay_se']:.4f} "
                     f"({'holds: within 1 SE' if s['holds'] else 'decays: more than 1 SE below'}), over {seeds} seeds")
    return "\n".join(lines)
