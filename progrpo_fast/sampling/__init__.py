"""Sampling: fp32 SDE/ODE/DDIM step math with log-probs, keyed noise, scheduler helpers and
expand-and-prune schedules."""
from progrpo_fast.sampling.schedule import PruneSchedule
from progrpo_fast.sampling.sde import (
    StepOutput,
    ddim_alphas,
    ddim_step,
    flow_cps_step,
    flow_sde_step,
    flow_sigmas,
    gaussian_log_prob,
    keyed_noise,
)

__all__ = [
    "PruneSchedule",
    "StepOutput",
    "ddim_alphas",
    "ddim_step",
    "flow_cps_step",
    "flow_sde_step",
    "flow_sigmas",
    "gaussian_log_prob",
    "keyed_noise",
]
