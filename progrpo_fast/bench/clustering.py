"""The paper's two observations on the built-in task (``progrpo-fast bench clustering``).

(a) Reward clustering: the distribution of |A_i| = |R_i - mu_G| / (sigma_G + eps) over the rows of
    naive GRPO's groups (G = G_max) in the first and the last ``--window`` iterations of training,
    and the fraction with |A_i| < 0.5 (rows that add little to the gradient yet cost a full rollout
    and backward pass).
(b) "Less is more": static OVF (sample G_max, train on the exact max-variance K of each group)
    against naive GRPO training on all G_max, paired seeds, the same iterations: the held-out
    reward before and after, and the paired difference of the after-training reward with a 95%
    bootstrap CI over seeds.

Resumable like ``bench reward``: each finished (method, seed) is added to the results JSON."""
from __future__ import annotations

from pathlib import Path

from progrpo_fast.bench.methods import Method, paired_methods
from progrpo_fast.bench.results import load_results, markdown_table, pyplot, save_figure, save_results, seed_range, write_results
from progrpo_fast.bench.reward import bootstrap_ci, train_curve
from progrpo_fast.sampling.schedule import PruneSchedule

DESCRIPTION = "|A_i| distribution of naive groups at the start and end of training; static OVF's K of G vs all G"
THRESHOLD = 0.5
COLUMNS = {"method": "method", "seeds": "seeds", "trained_rows_per_group": "rows trained / group",
           "abs_adv_below_half_start": "|A| < 0.5, first iterations", "abs_adv_below_half_end": "|A| < 0.5, last iterations",
           "eval_before": "held-out before", "eval_after": "held-out after", "after_minus_naive": "after - naive (paired)",
           "after_minus_naive_ci": "95% CI"}


def clustering_methods(schedule: str) -> tuple[Method, Method]:
    """(naive GRPO at G_max, static OVF keeping K) of a pruned schedule."""
    by_name = {m.name: m for m in paired_methods(schedule, proxies=())}
    return by_name[f"naive-{PruneSchedule.from_string(schedule).group_size_max}"], by_name["static-ovf"]


def run_pair(base, method: Method, seed: int, iterations: int, window: int, overrides) -> dict:
    """One (method, seed): held-out reward before/after ``iterations`` and the |advantages| of the
    first and last ``window`` iterations."""
    start, end = [], []

    def observe(trainer):
        values = trainer.last_advantages.abs().flatten().tolist()
        if trainer.iteration <= window:
            start.extend(round(v, 4) for v in values)
        if trainer.iteration > iterations - window:
            end.extend(round(v, 4) for v in values)

    points = train_curve(base, method, seed, iterations, 1, [*overrides, "log.progress=false"], observe=observe)
    return {"method": method.name, "seed": seed, "iterations": iterations, "eval_before": points[0]["eval_reward"],
            "eval_after": points[-1]["eval_reward"], "abs_adv_start": start, "abs_adv_end": end}


def below(values: list[float]) -> float:
    return sum(v < THRESHOLD for v in values) / len(values)


def summarize(rows: list[dict], naive: str, draws: int = 10000) -> list[dict]:
    by = {(r["method"], r["seed"]): r for r in rows}
    summary = []
    for name in dict.fromkeys(r["method"] for r in rows):
        seeds = sorted(s for (m, s) in by if m == name and (naive, s) in by)
        if not seeds:
            continue
        own = [by[(name, s)] for s in seeds]

        def difference(chosen, name=name):
            return sum(by[(name, s)]["eval_after"] - by[(naive, s)]["eval_after"] for s in chosen) / len(chosen)

        low, high = bootstrap_ci(difference, seeds, draws)
        summary.append({
            "method": name, "seeds": len(seeds), "trained_rows_per_group": None,
            "abs_adv_below_half_start": below([v for r in own for v in r["abs_adv_start"]]),
            "abs_adv_below_half_end": below([v for r in own for v in r["abs_adv_end"]]),
            "abs_adv_below_half_start_per_seed": [below(r["abs_adv_start"]) for r in own],
            "abs_adv_below_half_end_per_seed": [below(r["abs_adv_end"]) for r in own],
            "eval_before": sum(r["eval_before"] for r in own) / len(own), "eval_after": sum(r["eval_after"] for r in own) / len(own),
            "after_minus_naive": difference(seeds), "after_minus_naive_ci": f"[{low:+.3f}, {high:+.3f}]",
            "after_minus_naive_ci_low": low, "after_minus_naive_ci_high": high,
            "per_seed_after_minus_naive": [by[(name, s)]["eval_after"] - by[(naive, s)]["eval_after"] for s in seeds],
        })
    return summary


def plot(rows: list[dict], naive: str, path: Path) -> Path:
    """Left: |A_i| histograms of naive GRPO's groups, first vs last iterations. Right: each seed's
    held-out reward before -> after, naive vs static OVF."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    naive_rows = [r for r in rows if r["method"] == naive]
    bins = [i * 0.1 for i in range(31)]
    for key, label in (("abs_adv_start", "first iterations"), ("abs_adv_end", "last iterations")):
        values = [v for r in naive_rows for v in r[key]]
        if values:
            left.hist(values, bins=bins, density=True, histtype="step", lw=1.5, label=f"{label}: {below(values):.0%} below {THRESHOLD}")
    left.axvline(THRESHOLD, color="grey", ls=":")
    left.set_xlabel(f"|A_i| in {naive}'s groups")
    left.set_ylabel("density")
    left.legend(fontsize=8)
    for i, name in enumerate(dict.fromkeys(r["method"] for r in rows)):
        for r in (r for r in rows if r["method"] == name):
            right.plot([0 + 0.04 * i, 1 + 0.04 * i], [r["eval_before"], r["eval_after"]], color=f"C{i}", marker="o", alpha=0.6,
                       label=name if r["seed"] == min(x["seed"] for x in rows if x["method"] == name) else None)
    right.set_xticks([0, 1], ["before", "after"])
    right.set_ylabel("held-out reward (per seed)")
    right.legend(fontsize=8)
    return save_figure(fig, path)


def add_arguments(parser) -> None:
    parser.add_argument("--seeds", type=seed_range, default="4", help="paired seeds 0..N-1, or A-B for seeds A..B (default 4)")
    parser.add_argument("--iterations", type=int, default=60, help="training iterations of each method (default 60)")
    parser.add_argument("--window", type=int, default=10, help="iterations at the start and at the end whose |A_i| are kept (default 10)")


def run(args, command: str, tag: str) -> Path:
    from progrpo_fast.train.config import load_config

    naive, static = clustering_methods(load_config(args.config, args.overrides).sampler.schedule)
    if not 1 <= args.window <= args.iterations:
        raise ValueError(f"--window must be in [1, --iterations={args.iterations}], got {args.window}")
    path = args.out / f"clustering_{tag}.json"
    setup = {"config": args.config, "overrides": list(args.overrides), "resolved": load_config(args.config, args.overrides).to_dict(),
             "iterations": args.iterations, "window": args.window}
    payload = load_results(path, setup, {"rows": []})
    done = {(r["method"], r["seed"]) for r in payload["rows"]}
    for seed in args.seeds:
        for method in (naive, static):
            if (method.name, seed) not in done:
                print(f"[bench clustering] {method.name} seed {seed}: {args.iterations} iterations", flush=True)
                payload["rows"].append(run_pair(args.config, method, seed, args.iterations, args.window, args.overrides))
                save_results(path, payload, command)
    summary = summarize(payload["rows"], naive.name)
    trained = {m.name: PruneSchedule.from_string(m.schedule).final_group_size for m in (naive, static)}
    for row in summary:
        row["trained_rows_per_group"] = trained[row["method"]]
    payload["summary"] = summary
    save_results(path, payload, command)
    write_results(args.out, f"clustering_summary_{tag}", summary, command)
    plot(payload["rows"], naive.name, args.out / f"clustering_{tag}.png")
    print(markdown_table(summary, COLUMNS))
    return path
