"""One object that runs the step math for a model's schedule, shared by sampler and trainer so
both compute numerically identical means, stds and log-probs."""
from __future__ import annotations

import torch

from progrpo_fast.sampling.sde import StepOutput, ddim_step, flow_cps_step, flow_sde_step

FLOW_METHODS = ("sde", "cps", "ode")
DIFFUSION_METHODS = ("ddim",)


class Stepper:
    """method: "sde" (Flow-GRPO), "cps" (coefficients-preserving), "ode" (eta = 0) for flow models;
    "ddim" (DDIM with eta) for diffusion models. ``schedule`` is ``Denoiser.schedule(num_steps)``.
    ``noise_steps``: the steps that add noise (an SDE window, as in Flow-GRPO-Fast and MixGRPO);
    the others take the method's eta = 0 step (Euler / DDIM). None: every step adds noise."""

    def __init__(self, kind: str, method: str, eta: float, schedule: dict[str, torch.Tensor], noise_steps=None):
        allowed = FLOW_METHODS if kind == "flow" else DIFFUSION_METHODS
        if method not in allowed:
            raise ValueError(f"method must be one of {allowed} for a {kind} model, got {method!r}")
        if not isinstance(eta, (int, float)) or eta < 0:
            raise ValueError(f"eta must be a float >= 0, got {eta!r}")
        self.kind, self.method, self.eta = kind, method, float(eta)
        self.timesteps = schedule["timesteps"]
        self.num_steps = self.timesteps.shape[0]
        if noise_steps is not None:
            noise_steps = sorted(set(noise_steps))
            if not noise_steps or not all(isinstance(t, int) and 0 <= t < self.num_steps for t in noise_steps):
                raise ValueError(f"noise_steps must be a non-empty list of steps in [0, {self.num_steps}), got {noise_steps!r}")
        self.noise_steps = tuple(range(self.num_steps)) if noise_steps is None else tuple(noise_steps)
        if kind == "flow":
            self.sigmas = schedule["sigmas"].float()
        else:
            self.alphas, self.alphas_prev = schedule["alphas"].float(), schedule["alphas_prev"].float()

    def deterministic(self, step: int) -> bool:
        """Whether step ``step`` adds no noise (its transitions have no log-prob to train)."""
        return self.method == "ode" or self.eta == 0 or step not in self.noise_steps

    def __call__(self, step: int, x: torch.Tensor, model_output: torch.Tensor, *, eps=None, x_next=None) -> StepOutput:
        """Step ``step`` from x with the network output (v or eps_hat); samples with ``eps`` or
        scores the recorded ``x_next``."""
        eta = 0.0 if self.deterministic(step) else self.eta
        if self.kind == "diffusion":
            return ddim_step(x, model_output, self.alphas[step], self.alphas_prev[step], eta=eta, eps=eps, x_next=x_next)
        sigma, sigma_next = self.sigmas[step], self.sigmas[step + 1]
        step_fn = flow_cps_step if self.method == "cps" else flow_sde_step
        return step_fn(x, model_output, sigma, sigma_next, eta=eta, eps=eps, x_next=x_next)
