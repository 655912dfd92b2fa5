"""Step schedules read from diffusers scheduler instances (so samplers never reimplement
scheduler logic): flow-matching sigmas and DDIM alphas, the tables a ``Denoiser.schedule`` returns."""
from __future__ import annotations

import torch

__all__ = ["flow_sigmas", "ddim_alphas", "ddim_alpha_pairs"]


def flow_sigmas(scheduler, num_steps: int, device=None, **set_timesteps_kwargs) -> torch.Tensor:
    """fp32 (num_steps + 1,) sigmas of a FlowMatchEulerDiscreteScheduler after
    ``set_timesteps(num_steps, **set_timesteps_kwargs)`` (shift / dynamic shifting ``mu`` included;
    the last entry is the terminal sigma, 0). Step i goes from sigmas[i] to sigmas[i + 1] and feeds
    the model ``scheduler.timesteps[i]``. Calls set_timesteps on the scheduler."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if getattr(scheduler.config, "stochastic_sampling", False):
        raise ValueError("the scheduler has stochastic_sampling=True; the SDE steps here add their own noise, "
                         "use a deterministic scheduler config")
    scheduler.set_timesteps(num_steps, **set_timesteps_kwargs)
    sigmas = torch.as_tensor(scheduler.sigmas, dtype=torch.float32)
    if sigmas.shape != (num_steps + 1,):
        raise ValueError(f"expected {num_steps + 1} sigmas (num_steps + terminal) from {type(scheduler).__name__}, "
                         f"got {tuple(sigmas.shape)}")
    return sigmas.to(device) if device is not None else sigmas


def ddim_alphas(scheduler, num_steps: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_t, a_prev), each fp32 (num_steps,): alphas_cumprod of a DDIMScheduler at its timesteps
    after ``set_timesteps(num_steps)`` and at prev = t - num_train_timesteps // num_steps
    (final_alpha_cumprod when prev < 0: 1 if set_alpha_to_one, else alphas_cumprod[0]), exactly as
    DDIMScheduler.step. Step i feeds the model ``scheduler.timesteps[i]``. Calls set_timesteps."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    config = scheduler.config
    if config.prediction_type != "epsilon":
        raise ValueError(f"ddim_step expects an epsilon-predicting model, the scheduler has prediction_type={config.prediction_type!r}")
    if config.clip_sample or config.thresholding:
        raise ValueError("ddim_step does not clip or threshold x0_hat; configure the scheduler with clip_sample=False, thresholding=False")
    scheduler.set_timesteps(num_steps)
    a_t, a_prev = ddim_alpha_pairs(scheduler, scheduler.timesteps, num_steps)
    if device is not None:
        a_t, a_prev = a_t.to(device), a_prev.to(device)
    return a_t, a_prev


def ddim_alpha_pairs(scheduler, timesteps, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_t, a_prev) fp32 on the CPU, one per timestep t of ``timesteps``: a DDIMScheduler's
    alphas_cumprod at t and at prev = t - num_train_timesteps // num_steps (final_alpha_cumprod
    when prev < 0), DDIMScheduler.step's rule. Reads the scheduler's tables only."""
    timesteps = torch.as_tensor(timesteps, dtype=torch.int64).cpu()
    alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32).cpu()
    prev = timesteps - scheduler.config.num_train_timesteps // num_steps
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32).cpu()
    return alphas_cumprod[timesteps], torch.where(prev >= 0, alphas_cumprod[prev.clamp_min(0)], final)
