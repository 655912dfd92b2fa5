"""The README's first command over several seeds (``progrpo-fast bench default``): ``train`` with
the built-in defaults and ``train.seed`` = 0..N-1 (each seed its own caption pool, held-out
captions and noise), the pool's and the held-out captions' reward before and after, each change
with its standard error over the evaluation prompts, and over the seeds the mean change with its
standard error. Resumable: each finished seed is added to the results JSON."""
from __future__ import annotations

import math
from pathlib import Path

from progrpo_fast.bench.results import load_results, markdown_table, save_results, seed_range

DESCRIPTION = "the default training run over seeds: pool and held-out captions' reward before/after, with standard errors"
COLUMNS = {"seed": "seed", "pool_before": "pool before", "pool_after": "pool after", "pool_change": "pool change", "pool_change_se": "SE",
           "heldout_before": "held-out before", "heldout_after": "held-out after", "heldout_change": "held-out change",
           "heldout_change_se": "SE", "seconds": "training s"}


def run_seed(base: str | None, seed: int, out_dir: Path, overrides=()) -> dict:
    from progrpo_fast.train.config import load_config
    from progrpo_fast.train.evaluate import paired_change
    from progrpo_fast.train.run import train

    config = load_config(base, [*overrides, f"train.seed={seed}", f"log.out_dir={out_dir / f'seed{seed}'}", "log.progress=false"])
    summary = train(config, overwrite="delete")  # a seed that did not finish reruns from scratch (its before/after is the row)
    row = {"seed": seed, "iterations": summary["iterations"], "seconds": summary["seconds"]}
    for key, name in (("", "pool"), ("_held_out", "heldout")):
        before, after = summary["eval_before" + key], summary["eval_after" + key]
        change, se = paired_change(before, after)
        row.update({f"{name}_before": before["reward_mean"], f"{name}_after": after["reward_mean"], f"{name}_change": change,
                    f"{name}_change_se": se})
    return row


def across_seeds(rows: list[dict], name: str) -> tuple[float, float]:
    """(mean of the per-seed changes, its standard error over the seeds)."""
    changes = [r[f"{name}_change"] for r in rows]
    mean = sum(changes) / len(changes)
    if len(changes) < 2:
        return mean, float("nan")
    variance = sum((c - mean) ** 2 for c in changes) / (len(changes) - 1)
    return mean, math.sqrt(variance / len(changes))


def add_arguments(parser) -> None:
    parser.add_argument("--seeds", type=seed_range, default="3", help="seeds 0..N-1, or A-B for seeds A..B (default 3)")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-default"), help="run folders (default runs/bench-default)")


def run(args, command: str, tag: str) -> Path:
    from progrpo_fast.train.config import load_config

    if not load_config(args.config, args.overrides).prompts.pool:
        raise ValueError("bench default compares a caption pool with held-out captions: it needs prompts.pool > 0")
    path = args.out / f"default_run_{tag}.json"
    setup = {"config": args.config, "overrides": list(args.overrides), "resolved": load_config(args.config, args.overrides).to_dict()}
    payload = load_results(path, setup, {"rows": []})
    done = {r["seed"] for r in payload["rows"]}
    for seed in args.seeds:
        if seed not in done:
            print(f"[bench default] seed {seed}", flush=True)
            payload["rows"].append(run_seed(args.config, seed, args.runs, args.overrides))
            save_results(path, payload, command)
    rows = sorted(payload["rows"], key=lambda r: r["seed"])
    payload["summary"] = {f"{name}_change_{stat}": value for name in ("pool", "heldout")
                          for stat, value in zip(("mean", "se_over_seeds"), across_seeds(rows, name))}
    save_results(path, payload, command)
    print(markdown_table(rows, COLUMNS))
    print(", ".join(f"{key} {value:+.4f}" for key, value in payload["summary"].items()))
    return path
