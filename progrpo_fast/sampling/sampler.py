"""The expand-and-prune sampler: P prompts x G_max trajectories, pruned at the schedule's
checkpoints, full trajectories and log-probs of the survivors recorded.

Pruning at checkpoint t happens before step t runs and looks at the x0_hat that step t - 1 already
computed (no extra network evaluation). Every per-row state is compacted in place: current latents,
the recorded latents x_0..x_t, log-probs, conditioning (CFG negatives included), trajectory and
prompt ids. Noise is keyed by (seed, trajectory id, step), so pruning never changes what a survivor
samples, and with no checkpoints the sampler is plain GRPO sampling.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from progrpo_fast import ops
from progrpo_fast.models.base import Denoiser, repeat_rows
from progrpo_fast.sampling.proxies import Checkpoint, LatentProxy
from progrpo_fast.sampling.schedule import PruneSchedule
from progrpo_fast.sampling.sde import keyed_noise
from progrpo_fast.sampling.stepper import Stepper


@dataclass
class PruneRecord:
    """One checkpoint: the step, rows before, the proxy's scalar scores of those rows (None for
    vector proxies), the kept trajectory ids (P, keep), and the proxy variance of each whole group
    and of its kept subset (P,)."""

    step: int
    rows_before: int
    scores: torch.Tensor | None
    kept_ids: torch.Tensor
    variance_all: torch.Tensor
    variance_kept: torch.Tensor


@dataclass
class Rollout:
    """The survivors of one expand-and-prune rollout, K per prompt, grouped by prompt.

    latents: (n, T+1, C, H, W) fp32, x_0 (noise) .. x_T (final sample) per survivor;
    log_probs: (n, T) fp32 log-prob of each recorded transition; trajectory_ids / prompt_index: (n,);
    cond: per-row conditioning; timesteps (T,); trajectory_steps: network row-evaluations spent;
    proxy_seconds: wall time spent choosing and compacting survivors (device synchronised)."""

    prompts: list[str]
    latents: torch.Tensor
    log_probs: torch.Tensor
    trajectory_ids: torch.Tensor
    prompt_index: torch.Tensor
    cond: dict[str, torch.Tensor]
    timesteps: torch.Tensor
    group_size: int
    seed: int
    trajectory_steps: int
    prune_log: list[PruneRecord] = field(default_factory=list)
    proxy_seconds: float = 0.0

    @property
    def final_latents(self) -> torch.Tensor:
        return self.latents[:, -1]

    @property
    def row_prompts(self) -> list[str]:
        return [self.prompts[i] for i in self.prompt_index.tolist()]


class ExpandPruneSampler:
    """sample(prompts, seed) runs the schedule on ``model`` (a Denoiser) with the step ``method``
    ("sde", "cps", "ode" for flow models, "ddim" for diffusion), noise at ``noise_steps`` (None:
    all) and ``proxy`` at checkpoints. Row j of prompt p is trajectory p * ``id_stride`` + j (None:
    G_max), so a naive group of G with id_stride = G' takes the noise of the first G of a G' group."""

    def __init__(self, model: Denoiser, schedule: PruneSchedule, proxy=None, method: str = "sde", eta: float = 0.7, noise_steps=None,
                 id_stride: int | None = None):
        if id_stride is not None and id_stride < schedule.group_size_max:
            raise ValueError(f"id_stride must be >= the schedule's G_max = {schedule.group_size_max} (or None), got {id_stride}")
        self.model, self.schedule, self.id_stride = model, schedule, id_stride
        self.proxy = proxy if proxy is not None else LatentProxy()
        self.step_context = lambda step: contextlib.nullcontext()  # step -> context around that step's network evaluation
        self.stepper = Stepper(model.kind, method, eta, model.schedule(schedule.num_steps), noise_steps)

    @classmethod
    def from_config(cls, model: Denoiser, schedule: PruneSchedule, sampler_config, proxy=None) -> "ExpandPruneSampler":
        """The sampler of a config's sampler section (method, eta, noise_steps) on ``schedule``."""
        return cls(model, schedule, proxy, method=sampler_config.method, eta=sampler_config.eta, noise_steps=sampler_config.noise_steps,
                   id_stride=sampler_config.trajectory_id_stride)

    @torch.no_grad()
    def sample(self, prompts: list[str], seed: int, progress=None) -> Rollout:
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a non-empty list of strings")
        model, schedule, stepper = self.model, self.schedule, self.stepper
        device, steps = model.device, schedule.num_steps
        group, rows = schedule.group_size_max, len(prompts) * schedule.group_size_max
        prompt_index = torch.arange(len(prompts), device=device).repeat_interleave(group)
        trajectory_ids = prompt_index * (self.id_stride or group) + torch.arange(group, device=device).repeat(len(prompts))
        cond = repeat_rows(model.encode(prompts), group)
        history = torch.empty(rows, steps + 1, *model.latent_shape(), device=device)
        history[:, 0] = keyed_noise(seed, trajectory_ids, 0, history[:, 0].shape)
        log_probs = torch.zeros(rows, steps, device=device)
        x0_hat, prune_log, proxy_seconds = None, [], 0.0
        for step in range(steps):
            keep = schedule.keep_at(step)
            if keep is not None:
                started = synchronized_clock(device)
                row_prompts = [prompts[i] for i in prompt_index.tolist()]
                selection = self.proxy(Checkpoint(step, x0_hat, row_prompts, trajectory_ids, group, keep, seed, model.decode))
                prune_log.append(PruneRecord(step, rows, selection.scores, trajectory_ids[selection.index].view(-1, keep),
                                             selection.variance_all, selection.variance_kept))
                written = history[:, : step + 1]
                written, log_probs, trajectory_ids, prompt_index, *values = ops.compact_(
                    selection.index, written, log_probs, trajectory_ids, prompt_index, *cond.values(), check_values=False
                )
                history = history[: written.shape[0]]
                cond = dict(zip(cond, values))
                group, rows = keep, written.shape[0]
                proxy_seconds += synchronized_clock(device) - started
            x = history[:, step]
            with self.step_context(step):
                velocity = model.predict(x, stepper.timesteps[step], cond)
            out = stepper(step, x, velocity,
                          eps=None if stepper.deterministic(step) else keyed_noise(seed, trajectory_ids, step + 1, x.shape))
            history[:, step + 1] = out.x_next
            log_probs[:, step] = out.log_prob
            x0_hat = out.x0_hat
            if progress is not None:
                progress(step, rows)
        return Rollout(list(prompts), history, log_probs, trajectory_ids, prompt_index, cond, stepper.timesteps,
                       group, seed, schedule.trajectory_steps(len(prompts)), prune_log, proxy_seconds)


def synchronized_clock(device: torch.device) -> float:
    """time.perf_counter() after the device's queued work has finished (seconds)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
