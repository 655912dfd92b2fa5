"""One object that runs the step math for a model's schedule, shared by sampler and trainer so
both compute numerically identical means, stds and log-probs."""
from __future__ import annotations

import torch

from progrpo_fast.sampling.sde import StepOutput, ddim_step, flow_cps_step, flow_sde_step

FLOW_METHODS = ("sde", "cps", "ode")
DIFFUSION_METHODS = ("ddim",)


class Stepper:
    """method: "sde" (Flow-GRPO), "cps" (coefficients-preserving), "ode" (eta = 0) for flow models;
    "ddim" (DDIM with eta) for diffusion models. ``schedule`` is ``Denoiser.schedule(num_steps)``."""

    def __init__(self, kind: str, method: str, eta: float, schedule: dict[str, torch.Tensor]):
        allowed = FLOW_METHODS if kind == "flow" else DIFFUSION_METHODS
        if method not in allowed:
            raise ValueError(f"method must be one of {allowed} for a {kind} model, got {method!r}")
        if not isinstance(eta, (int, float)) or eta < 0:
            raise ValueError(f"eta must be a float >= 0, got {eta!r}")
        self.kind, self.method, self.eta = kind, method, float(eta)
        self.timesteps = schedule["timesteps"]
        self.num_steps = self.timesteps.shape[0]
        if kind == "flow":
            self.sigmas = schedule["sigmas"].float()
        else:
            self.alphas, self.alphas_prev = schedule["alphas"].float(), schedule["alphas_prev"].float()

    @property
    def deterministic(self) -> bool:
        return self.method == "ode" or self.eta == 0

    def __call__(self, step: int, x: torch.Tensor, model_output: torch.Tensor, *, eps=None, x_next=None) -> StepOutput:
        """Step ``step`` from x with the network output (v or eps_hat); samples with ``eps`` or
        scores the recorded ``x_next``."""
        if self.kind == "diffusion":
            return ddim_step(x, model_output, self.alphas[step], self.alphas_prev[step], eta=self.eta, eps=eps, x_next=x_next)
        sigma, sigma_next = self.sigmas[step], self.sigmas[step + 1]
        if self.method == "ode":
            return flow_sde_step(x, model_output, sigma, sigma_next, eta=0.0, eps=None, x_next=x_next)
        step_fn = flow_sde_step if self.method == "sde" else flow_cps_step
        return step_fn(x, model_output, sigma, sigma_next, eta=self.eta, eps=eps, x_next=x_next)
