"""Sampling: fp32 SDE/ODE/DDIM step math with log-probs, keyed noise, the Denoiser interface and
expand-and-prune schedules. (Schedules read from diffusers schedulers: ``progrpo_fast.models.schedules``.)"""
from progrpo_fast.sampling.schedule import PruneSchedule
from progrpo_fast.sampling.sde import (
    StepOutput,
    ddim_step,
    flow_cps_step,
    flow_sde_step,
    gaussian_log_prob,
    keyed_noise,
)

__all__ = [
    "PruneSchedule",
    "StepOutput",
    "ddim_step",
    "flow_cps_step",
    "flow_sde_step",
    "gaussian_log_prob",
    "keyed_noise",
]
