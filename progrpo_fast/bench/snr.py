"""The policy gradient's signal-to-noise ratio per GRPO iteration (``progrpo-fast bench snr``)."""
from __future__ import annotations

from pathlib import Path

import torch

from progrpo_fast.bench.methods import build_trainer
from progrpo_fast.bench.results import markdown_table, write_results

DESCRIPTION = "signal-to-noise ratio of the policy gradient per iteration, per trained step"
COLUMNS = {"step": "trained step", "batches": "iterations", "rows_per_batch": "rows / iteration", "snr_per_batch": "SNR / iteration",
           "rows_for_snr_1": "rows for SNR 1"}


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
            trainer.step_objective(t, rollout.latents[:, t], rollout.latents[:, t + 1], rollout.log_probs[:, t], advantages,
                                   rollout.cond)[0].backward()
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


def add_arguments(parser) -> None:
    parser.add_argument("--batches", type=int, default=8, help="independent iterations at fixed weights (>= 2)")


def run(args, command: str, tag: str) -> Path:
    from progrpo_fast.train.config import load_config

    rows = gradient_snr(build_trainer(load_config(args.config, ["log.eval_prompts=0", *args.overrides])), args.batches)
    path = write_results(args.out, f"gradient_snr_{tag}", rows, command)
    print(markdown_table(rows, COLUMNS))
    return path
