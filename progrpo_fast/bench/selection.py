"""How well each proxy's checkpoint selection keeps the final-reward spread of a group
(``progrpo-fast bench selection``), against the exact OVF optimum on the final rewards (the
oracle, which sees the future) and a random subset of the same size."""
from __future__ import annotations

from pathlib import Path

import torch

from progrpo_fast.bench.methods import Method, build_trainer, mean, method_config, paired_methods
from progrpo_fast.bench.results import markdown_table, write_results
from progrpo_fast.sampling.denoiser import decode_rows
from progrpo_fast.sampling.schedule import PruneSchedule

DESCRIPTION = "proxy selection quality against the OVF oracle and random subsets, per checkpoint"
COLUMNS = {"method": "proxy", "checkpoint_step": "checkpoint", "groups": "groups", "std_all": "std all G", "std_kept": "std kept",
           "std_oracle": "std oracle", "std_random": "std random", "kept_over_oracle": "kept / oracle",
           "random_over_oracle": "random / oracle", "kept_minus_random": "std kept - random (per group)",
           "kept_minus_random_ci": "95% CI over groups", "proxy_ms_per_call": "proxy ms / checkpoint"}


def selection_quality(base: str | None, methods: list[Method], batches: int, prompts_per_batch: int, random_draws: int = 64,
                      overrides=()) -> list[dict]:
    """For each pruning method and checkpoint: the mean over groups of the final-reward std of the
    rows the proxy kept, of the exact-OVF optimum on the final rewards (the oracle), and of a
    random subset of the same size (with the per-group margin kept - random, its standard error
    over groups and a normal 95% CI); and the proxy's mean wall time per checkpoint call. Survivors'
    trajectories equal the same trajectory ids of an unpruned rollout (noise is keyed by trajectory
    id), so one unpruned rollout gives every row's final reward. Proxies that learn (probe, hidden)
    observe every batch's survivors and are scored on the second half of the batches. Prompts and
    noise are keyed by train.seed (``--set train.seed=S`` draws another set)."""
    from progrpo_fast import ops
    from progrpo_fast.sampling.proxies import build_proxy
    from progrpo_fast.sampling.sampler import ExpandPruneSampler
    from progrpo_fast.train.build import build_prompts
    from progrpo_fast.train.trainer import iteration_seed, score_images

    config = method_config(base, methods[0], overrides)
    seed = config.train.seed
    trainer = build_trainer(config)
    model, reward = trainer.model, trainer.reward
    schedule = PruneSchedule.from_string(methods[0].schedule)
    full = ExpandPruneSampler.from_config(model, PruneSchedule.naive(schedule.group_size_max, schedule.num_steps), config.sampler)
    draw_prompts = build_prompts(config, stream=2000)
    samplers = {}
    for m in methods:
        sampler_config = method_config(base, m, overrides).sampler
        proxy = build_proxy(sampler_config.proxy, reward=reward, network=model.network, grid=sampler_config.grid,
                            batch_size=sampler_config.forward_rows)
        samplers[m.name] = ExpandPruneSampler.from_config(model, PruneSchedule.from_string(m.schedule), sampler_config, proxy)
    sums: dict[tuple[str, int], dict[str, list[float]]] = {}
    seconds: dict[str, list[float]] = {name: [] for name in samplers}
    gen = torch.Generator().manual_seed(seed)
    for batch in range(batches):
        prompts = draw_prompts(batch, 0, prompts_per_batch)
        rollout_seed = iteration_seed(seed, batch, 2000)
        unpruned = full.sample(prompts, seed=rollout_seed)
        final = score_images(reward, decode_rows(model, unpruned.final_latents, config.sampler.forward_rows), unpruned.row_prompts)[1].cpu()
        final_of = final[unpruned.trajectory_ids.argsort().cpu()]  # by trajectory id
        groups = final_of.view(len(prompts), -1)
        for name, sampler in samplers.items():
            rollout = sampler.sample(prompts, seed=rollout_seed)
            proxy = sampler.proxy
            if proxy.learns:
                proxy.observe(rollout, final_of[rollout.trajectory_ids.cpu()].to(rollout.latents.device))
                if batch < batches // 2:
                    continue
            seconds[name].append(rollout.proxy_seconds / len(rollout.prune_log))
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
        margin = torch.tensor(entry["kept"], dtype=torch.float64) - torch.tensor(entry["random"], dtype=torch.float64)
        margin_se = float(margin.std() / len(margin) ** 0.5) if len(margin) > 1 else float("nan")
        rows.append({"method": name, "checkpoint_step": step, "groups": len(entry["kept"]), "std_kept": kept, "std_oracle": oracle,
                     "std_random": rand, "std_all": mean(entry["all"]), "kept_over_oracle": kept / oracle if oracle else float("nan"),
                     "random_over_oracle": rand / oracle if oracle else float("nan"),
                     "kept_minus_random": float(margin.mean()), "kept_minus_random_se": margin_se,
                     "kept_minus_random_ci": f"[{float(margin.mean()) - 1.96 * margin_se:+.3f}, "
                                             f"{float(margin.mean()) + 1.96 * margin_se:+.3f}]",
                     "proxy_ms_per_call": 1000 * mean(seconds[name])})
    return rows


def add_arguments(parser) -> None:
    parser.add_argument("--batches", type=int, default=8, help="rollouts (learning proxies observe all, are scored on the second half)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per rollout")


def run(args, command: str, tag: str) -> Path:
    from progrpo_fast.train.config import load_config

    schedule = load_config(args.config, args.overrides).sampler.schedule
    methods = [m for m in paired_methods(schedule) if m.name.startswith("pro-grpo")]
    rows = selection_quality(args.config, methods, args.batches, args.prompts, overrides=args.overrides)
    path = write_results(args.out, f"selection_{tag}", rows, command)
    print(markdown_table(rows, COLUMNS))
    return path
