"""Convergence per compute on the built-in task (``progrpo-fast bench convergence``): how many
TFLOPs each method needs to reach 25, 50, 75 and 90% of naive GRPO's gain, on paired seeds.

Methods (from the pruned sampler.schedule S, G -> ... -> K; the default 16:2=8,3=4@5): naive GRPO
at G (the reference) and at K (the survivors' count), static OVF, Pro-GRPO with the reward and the
hidden proxy on S, and Pro-GRPO in the paper's shape 2G -> G -> G/2 (S with every size doubled,
32:2=16,3=8@5, suffix "-2g") against the same naive G. All trajectory ids are p * 2G + j, so every
method of a seed sees the same prompts, the same keyed noise (a smaller group takes the first ids of
the largest) and the same evaluation captions and noise. Each method trains on the FLOP budget of
``--budget`` naive-G iterations and is evaluated ``--evaluations`` times along it (bench reward's
train_curve): rows (method, seed, iteration, tflops, eval_reward, eval_se), eval_se the standard
error of the evaluation mean over the evaluation prompts. Resumable and splittable as bench reward
(``--seeds A-B``, ``--only``; rows added under a lock).

Summary, per method against the reference on the seeds both have, from the seed-mean curves
r(c) (reward against TFLOPs c, linear between evaluations):

    gain    = max_c r_ref(c) - r_ref(0)                     the reference's best seed-mean gain
    level_q = r_ref(0) + q * gain                           q in THRESHOLDS
    c_m(q)  = the first c with r_m(c) = level_q             inf when the curve never reaches it
    speed-up(q) = c_ref(q) / c_m(q)                         0 when the method never reaches it
    area per TFLOP = (1 / C) * integral_0^C (r_m(c) - r_m(0)) dc,  C = the smallest final TFLOPs of all methods
    end - reference = r_m(C) - r_ref(C)                     where each stands at the end of the common range

with paired percentile-bootstrap 95% CIs over seeds: each draw resamples seed indices once for both
methods, and recomputes both mean curves, the levels and the crossings (draws where the reference
does not gain are dropped), so per-seed offsets shared by both methods cancel.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from progrpo_fast.bench.methods import Method, mean, paired_methods
from progrpo_fast.bench.results import markdown_table, pyplot, save_figure, write_results
from progrpo_fast.bench.reward import add_paired_arguments, bootstrap_picks, curves, percentile_interval, summarize_file, train_paired
from progrpo_fast.sampling.schedule import PruneSchedule

DESCRIPTION = "convergence per compute: TFLOPs to reach fractions (0.25-0.9) of naive GRPO's gain, paired bootstrap speed-ups, resumable"
THRESHOLDS = (0.25, 0.5, 0.75, 0.9)
PROXIES = ("reward", "hidden")


def percent(q: float) -> int:
    """A threshold's key: 0.25 -> 25."""
    return round(100 * q)


SUMMARY_COLUMNS = {"method": "method", "seeds": "paired seeds", "reward_start": "reward at 0", "reward_best": "best (seed mean)",
                   "eval_se": "eval SE", **{f"speedup_{percent(q)}_text": f"speed-up to {percent(q)}% [95% CI]" for q in THRESHOLDS},
                   "area_per_tflop": "area / TFLOP (mean gain)", "area_per_tflop_minus_reference_text": "- reference [95% CI]",
                   "reward_at_end": "reward at the end", "reward_at_end_minus_reference_text": "end - reference [95% CI]"}


def default_methods(base: str | None, overrides=()) -> list[Method]:
    """The methods of the module docstring for the config's (pruned) sampler.schedule, all on the
    trajectory ids of the largest group."""
    from progrpo_fast.train.config import load_config

    schedule = PruneSchedule.from_string(load_config(base, overrides).sampler.schedule)
    if schedule.is_naive:
        raise ValueError(f"bench convergence compares against a pruned sampler.schedule (e.g. 16:2=8,3=4@5), got {schedule}")
    doubled = PruneSchedule(2 * schedule.group_size_max, schedule.checkpoints, tuple(2 * k for k in schedule.keep), schedule.num_steps)
    methods = [*paired_methods(str(schedule), PROXIES), Method("pro-grpo-reward-2g", str(doubled), proxy="reward")]
    return [dataclasses.replace(m, id_stride=doubled.group_size_max) for m in methods]


# ----------------------------------------------------------------------------------- statistics
def seed_curves(rows: list[dict], method: str) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(seeds, TFLOPs of the evaluations (E,), eval rewards (S, E)) of ``method``'s finished seeds."""
    per_seed = curves(rows, method)
    seeds = sorted(per_seed)
    tflops = torch.tensor([c for c, _ in per_seed[seeds[0]]], dtype=torch.float64)
    return seeds, tflops, torch.tensor([[r for _, r in per_seed[s]] for s in seeds], dtype=torch.float64)


def reach(curve: torch.Tensor, tflops: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """TFLOPs at which each row of ``curve`` (D, E), piecewise linear over ``tflops`` (E,), first
    reaches its ``target`` (D,); inf where it never does."""
    reached = curve >= target[:, None]
    first = reached.int().argmax(1)
    before = (first - 1).clamp_min(0)
    r0, r1 = curve.gather(1, before[:, None])[:, 0], curve.gather(1, first[:, None])[:, 0]
    fraction = torch.where(first > 0, (target - r0) / (r1 - r0), 0.0)
    at = tflops[before] + (tflops[first] - tflops[before]) * fraction
    return torch.where(reached.any(1), at, math.inf)


def area_weights(tflops: torch.Tensor, upto: float) -> torch.Tensor:
    """w (E,) with curve @ w = integral_0^upto of the piecewise-linear curve over ``tflops`` (which
    starts at 0 and reaches ``upto``): the trapezoid rule, its last segment cut at ``upto``."""
    weights = torch.zeros_like(tflops)
    for i in range(len(tflops) - 1):
        c0, c1 = float(tflops[i]), float(tflops[i + 1])
        if c0 >= upto:
            break
        length, a = min(c1, upto) - c0, (min(c1, upto) - c0) / (c1 - c0)  # value at the cut: (1 - a) r_i + a r_i+1
        weights[i] += length * (2 - a) / 2
        weights[i + 1] += length * a / 2
    return weights


def interpolation_weights(tflops: torch.Tensor, at: float) -> torch.Tensor:
    """w (E,) with curve @ w = the piecewise-linear curve over ``tflops`` at ``at`` (within its range)."""
    weights = torch.zeros_like(tflops)
    i = min(int(torch.searchsorted(tflops, torch.tensor(at, dtype=tflops.dtype), right=True)) - 1, len(tflops) - 2)
    a = (at - float(tflops[i])) / float(tflops[i + 1] - tflops[i])
    weights[i], weights[i + 1] = 1 - a, a
    return weights


def paired_rows(own: tuple, reference: tuple) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """From two seed_curves results: the seeds both finished and each one's eval rewards on them,
    (S, E) and (S, E_reference), row s of both from the same seed."""
    (seeds, _, rewards), (ref_seeds, _, ref_rewards) = own, reference
    paired = sorted(set(seeds) & set(ref_seeds))
    return paired, rewards[[seeds.index(s) for s in paired]], ref_rewards[[ref_seeds.index(s) for s in paired]]


def paired_differences(rows: list[dict], method: str, reference: str, upto: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the reference's evaluation TFLOPs below ``upto``, then ``upto`` (K,), r_method(c) - r_reference(c)
    per paired seed (S, K)): both curves read at those points, each linear between its evaluations."""
    own_curves, ref_curves = seed_curves(rows, method), seed_curves(rows, reference)
    tflops, ref_tflops = own_curves[1], ref_curves[1]
    _, own, ref = paired_rows(own_curves, ref_curves)
    grid = torch.cat([ref_tflops[ref_tflops < upto], torch.tensor([upto], dtype=ref_tflops.dtype)])

    def read(curves: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        return curves @ torch.stack([interpolation_weights(at, float(c)) for c in grid], 1)

    return grid, read(own, tflops) - read(ref, ref_tflops)


def paired_statistics(reference: torch.Tensor, reference_tflops: torch.Tensor, own: torch.Tensor, own_tflops: torch.Tensor,
                      upto: float) -> dict[str, torch.Tensor]:
    """The module docstring's statistics of mean curves (D, E) of the reference and a method (row d:
    the means over one draw of seeds), each (D,): per threshold q its level, both crossings and the
    speed-up (NaN where the reference does not gain), both areas per TFLOP and both rewards at ``upto``."""
    start = reference[:, 0]
    gain = reference.max(1).values - start
    out = {"area_per_tflop": (own - own[:, :1]) @ area_weights(own_tflops, upto) / upto,
           "reference_area_per_tflop": (reference - reference[:, :1]) @ area_weights(reference_tflops, upto) / upto,
           "reward_at_end": own @ interpolation_weights(own_tflops, upto),
           "reference_reward_at_end": reference @ interpolation_weights(reference_tflops, upto)}
    for q in THRESHOLDS:
        level = start + q * gain
        theirs, mine = reach(reference, reference_tflops, level), reach(own, own_tflops, level)
        out.update({f"target_{percent(q)}": level, f"reference_tflops_to_{percent(q)}": theirs, f"tflops_to_{percent(q)}": mine,
                    f"speedup_{percent(q)}": torch.where(gain > 0, theirs / mine, math.nan)})
    return out


def speedup_text(value: float, low: float, high: float) -> str:
    """A speed-up and its CI for the table: "never" when the method never reaches the level, "no
    gain" when the reference does not gain (no levels)."""
    if math.isnan(value):
        return "no gain"
    return f"{'never' if value == 0 else f'{value:.2f}'} [{low:.2f}, {high:.2f}]"


def summarize(rows: list[dict], methods: list[str], draws: int = 10000) -> list[dict]:
    """One row per method against the reference methods[0], on the seeds both finished (see the
    module docstring); point estimates on those seeds, CIs over ``draws`` paired resamples. Empty
    while the reference has no finished seed."""
    if not curves(rows, methods[0]):
        return []
    per_method = {name: seed_curves(rows, name) for name in methods}
    ref_tflops = per_method[methods[0]][1]
    upto = min(float(tflops[-1]) for _, tflops, _ in per_method.values())
    summary = []
    for name in methods:
        tflops = per_method[name][1]
        paired, own, reference = paired_rows(per_method[name], per_method[methods[0]])
        if not paired:
            continue
        picks = torch.cat([torch.arange(len(paired))[None], bootstrap_picks(len(paired), draws)])  # row 0: the seeds themselves
        stats = paired_statistics(reference[picks].mean(1), ref_tflops, own[picks].mean(1), tflops, upto)
        curve = own.mean(0)
        row = {"method": name, "seeds": len(paired), "reward_start": float(curve[0]), "reward_best": float(curve.max()),
               "reward_final": float(curve[-1]), "tflops_final": float(tflops[-1]),
               "eval_se": mean(r["eval_se"] for r in rows if r["method"] == name and r["seed"] in paired), "tflops_range": upto}
        for q in THRESHOLDS:
            key = f"speedup_{percent(q)}"
            low, high = percentile_interval(stats[key][1:].tolist())
            row.update({k: float(stats[k][0]) for k in (f"target_{percent(q)}", f"reference_tflops_to_{percent(q)}",
                                                       f"tflops_to_{percent(q)}", key)})
            row.update({f"{key}_ci_low": low, f"{key}_ci_high": high, f"{key}_text": speedup_text(row[key], low, high)})
        for key in ("area_per_tflop", "reward_at_end"):
            difference = stats[key] - stats[f"reference_{key}"]
            low, high = percentile_interval(difference[1:].tolist())
            row.update({key: float(stats[key][0]), f"{key}_minus_reference": float(difference[0]),
                        f"{key}_minus_reference_ci_low": low, f"{key}_minus_reference_ci_high": high,
                        f"{key}_minus_reference_text": f"{float(difference[0]):+.4f} [{low:+.4f}, {high:+.4f}]"})
        summary.append(row)
    return summary


def band(samples: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    """Mean over the rows of ``samples`` (S, E) and its 95% band, mean +- 1.96 standard errors."""
    centre = samples.mean(0)
    half = 1.96 * samples.std(0) / math.sqrt(len(samples)) if len(samples) > 1 else torch.zeros_like(centre)
    return centre.tolist(), (centre - half).tolist(), (centre + half).tolist()


def plot(rows: list[dict], methods: list[str], summary: list[dict], path: Path) -> Path:
    """Top: each method's seed-mean curve against TFLOPs with its 95% band (mean +- 1.96 standard
    errors over seeds) and the reference's threshold levels as dotted lines. Bottom: each method minus
    the reference, paired per seed, with its 95% band: where it clears 0 the difference is resolved."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 7.0), sharex=True, height_ratios=(3, 2))
    upto = summary[0]["tflops_range"]
    for i, name in enumerate(methods):
        seeds, tflops, rewards = seed_curves(rows, name)
        centre, low, high = band(rewards)
        top.plot(tflops.tolist(), centre, color=f"C{i}", lw=2, label=f"{name} ({len(seeds)} seeds)")
        top.fill_between(tflops.tolist(), low, high, color=f"C{i}", alpha=0.12, lw=0)
        if not i:
            continue
        grid, differences = paired_differences(rows, name, methods[0], upto)
        if len(differences):  # a method with no seed paired with the reference has no difference curve
            centre, low, high = band(differences)
            bottom.plot(grid.tolist(), centre, color=f"C{i}", lw=2)
            bottom.fill_between(grid.tolist(), low, high, color=f"C{i}", alpha=0.12, lw=0)
    reference = summary[0]
    for q in THRESHOLDS:
        top.axhline(reference[f"target_{percent(q)}"], color="grey", ls=":", lw=0.8)
        top.annotate(f"{percent(q)}%", (0, reference[f"target_{percent(q)}"]), fontsize=7, color="grey", va="bottom")
    bottom.axhline(0.0, color="C0", lw=1)
    top.set_ylabel(f"held-out reward (seed mean, 95% band)\ndotted: 25-90% of {methods[0]}'s gain")
    bottom.set_ylabel(f"minus {methods[0]}, paired\n(seed mean, 95% band)")
    bottom.set_xlabel("training compute (TFLOPs, cost model)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=7)
    return save_figure(fig, path)


def add_arguments(parser) -> None:
    add_paired_arguments(parser, "naive-G, naive-G/4, static-ovf, pro-grpo-reward, pro-grpo-hidden, pro-grpo-reward-2g",
                         seeds=16, budget=60, evaluations=12)


def run(args, command: str, tag: str) -> Path:
    path = args.out / f"convergence_{tag}.json"
    methods = train_paired(args, command, default_methods, path, "bench convergence")
    order = [m.name for m in default_methods(args.config, args.overrides)]
    rows, names, summary = summarize_file(path, command, methods[0].name, order, summarize)
    if not summary:
        print(f"no summary yet: {methods[0].name}, the reference, has no finished seed in {path}")
        return path
    write_results(args.out, f"convergence_summary_{tag}", summary, command)
    plot(rows, names, summary, args.out / f"convergence_{tag}.png")
    print(markdown_table(summary, SUMMARY_COLUMNS))
    return path
