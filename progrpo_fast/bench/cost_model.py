"""The analytic cost model of one GRPO iteration, per P prompts::

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

from dataclasses import dataclass

import torch

from progrpo_fast.bench.methods import Method
from progrpo_fast.sampling.schedule import PruneSchedule


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
    objective (the units of the cost model), in the sampler's calls of sampler.forward_rows rows."""
    from torch.utils.flop_counter import FlopCounterMode

    from progrpo_fast.sampling.denoiser import decode_rows, repeat_rows
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
            trainer.sampler.predict(x, stepper.timesteps[step], cond)

    # programmatic rewards cost what the image holds: score real samples, not decoded noise
    sample = trainer.sampler.sample(prompt, seed=0).final_latents[:1]
    sample = sample.expand(rows, *sample.shape[1:]).contiguous()

    def score():
        score_images(trainer.reward, decode_rows(model, sample, trainer.config.sampler.forward_rows), prompt * rows)

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


def flops_per_iteration(trainer, method: Method) -> float:
    """The cost model's FLOPs of one iteration of ``method`` on ``trainer`` (built for that method)."""
    counts = iteration_counts(method, trainer.config.sampler.prompts_per_iteration, len(trainer.trained_steps(0)))
    return predict(counts, measure_units(trainer, rows=trainer.schedule.group_size_max, repeats=1)[0])["total"]
