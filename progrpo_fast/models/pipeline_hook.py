"""Pruning inside stock diffusers pipelines through ``callback_on_step_end``.

    hook = PruneCallback(pipe, PruneSchedule.from_string("8:5=4,7=2@10"))
    out = pipe(prompts, num_images_per_prompt=8, num_inference_steps=10,
               callback_on_step_end=hook, callback_on_step_end_tensor_inputs=hook.tensor_inputs)
    # out.images holds 2 images per prompt; hook.kept are their rows in the unpruned batch

The pipeline's batch must be consecutive groups of ``group_size_max`` rows per prompt (what
``num_images_per_prompt`` gives). Before checkpoint step c the hook rebuilds x0_hat of step c-1
from the two latents around it (exact for the deterministic Euler / DDIM(eta=0) steps the stock
pipelines take), selects survivors with ``ops.prune_select`` and compacts the latents and every
per-row conditioning tensor in place, CFG pairs included. Conditioning the pipeline does not pass
to callbacks (FLUX's pooled embeddings and guidance, negative embeddings of true CFG, Qwen-Image's
text masks and negative embeddings) is narrowed by a forward pre-hook on the network. Works on
SD3, FLUX, SD1.x, Qwen-Image (packed latents, true CFG) and Wan (video latents (B, C, F, H, W),
both CFG halves passed to the callback). Needs checkpoints >= 2.
"""
from __future__ import annotations

import torch

from progrpo_fast import ops
from progrpo_fast.models.schedules import ddim_alpha_pairs
from progrpo_fast.sampling.schedule import PruneSchedule

BATCHED_NETWORK_INPUTS = ("encoder_hidden_states", "encoder_hidden_states_mask", "pooled_projections", "guidance")
CALLBACK_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds")


class PruneCallback:
    def __init__(self, pipe, schedule: PruneSchedule, grid: int = 4):
        if schedule.checkpoints and schedule.checkpoints[0] < 2:
            raise ValueError("checkpoints must be >= 2 for the pipeline hook (x0_hat comes from two consecutive latents), "
                             f"got {schedule.checkpoints}")
        self.pipe, self.schedule, self.grid = pipe, schedule, grid
        self.network = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
        self.tensor_inputs = [name for name in CALLBACK_INPUTS if name in pipe._callback_tensor_inputs]
        self.kept = None  # rows of the unpruned batch that are still running
        self.unpruned_rows = 0
        self.previous_latents = None
        self._handle = None

    def __call__(self, pipe, step: int, timestep, kwargs: dict) -> dict:
        latents = kwargs["latents"]
        if step == 0:
            self.unpruned_rows = latents.shape[0]
            self.kept = torch.arange(latents.shape[0], device=latents.device)
            self._handle = self.network.register_forward_pre_hook(self._narrow_inputs, with_kwargs=True)
        next_step = step + 1
        keep = self.schedule.keep_at(next_step)
        if keep is not None:
            x0_hat = self._x0_hat(step, self.previous_latents, latents)
            rows = latents.shape[0]
            group = self.schedule.sizes()[step]
            if rows % group:
                raise ValueError(f"the pipeline batch has {rows} rows, not whole groups of {group}; "
                                 f"pass num_images_per_prompt={self.schedule.group_size_max}")
            index = ops.prune_select(self._unpacked(x0_hat), group, keep, self.grid, check_finite=False)
            self.kept = self.kept[index]
            kwargs["latents"] = ops.compact_(index, latents, check_values=False, as_tuple=False)
            for name in self.tensor_inputs[1:]:
                value = kwargs[name]
                if value is None:  # e.g. Wan's negative_prompt_embeds without CFG
                    continue
                pairs = value.shape[0] // rows  # 2 under CFG: [negative; positive]
                both = torch.cat([index + half * rows for half in range(pairs)])
                kwargs[name] = ops.compact_(both, value, check_values=False, as_tuple=False)
        if self.schedule.keep_at(next_step + 1) is not None:
            self.previous_latents = kwargs["latents"].clone()
        if next_step == self.schedule.num_steps:
            self.close()
        return kwargs

    def close(self) -> None:
        """Removes the network hook (done by the last step's callback)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _narrow_inputs(self, module, args, kwargs):
        """Gathers the kept rows of conditioning that still has the unpruned batch size."""
        full = self.unpruned_rows
        if full == self.kept.shape[0]:
            return args, kwargs
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        for name in BATCHED_NETWORK_INPUTS:
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor) and value.shape[0] == full and hidden.shape[0] != full:
                kwargs[name] = value[self.kept]
        return args, kwargs

    def _unpacked(self, x: torch.Tensor) -> torch.Tensor:
        """FLUX's / Qwen-Image's packed latents (B, (H/2)(W/2), 4C) -> (B, C, H, W) (Qwen-Image:
        (B, C, 1, H, W)) for pooling (square images); image and video latents as they are."""
        if x.dim() != 3:
            return x
        side = int(round(x.shape[1] ** 0.5))
        if side * side != x.shape[1]:
            raise ValueError(f"packed latents with {x.shape[1]} tokens are not square; the pipeline hook prunes square images")
        scale = self.pipe.vae_scale_factor
        return self.pipe._unpack_latents(x, 2 * side * scale, 2 * side * scale, scale)

    def _x0_hat(self, step: int, x: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
        """x0_hat of ``step`` from the latents before (x) and after (x_next) it."""
        scheduler = self.pipe.scheduler
        x, x_next = x.float(), x_next.float()
        if hasattr(scheduler, "sigmas") and not hasattr(scheduler, "alphas_cumprod"):
            sigma, sigma_next = float(scheduler.sigmas[step]), float(scheduler.sigmas[step + 1])
            v = (x_next - x) / (sigma_next - sigma)
            return x - sigma * v
        a_t, a_prev = (float(a[0])
                       for a in ddim_alpha_pairs(scheduler, scheduler.timesteps[step : step + 1], scheduler.num_inference_steps))
        # x = sqrt(a_t) x0 + sqrt(1-a_t) eps and x_next = sqrt(a_prev) x0 + sqrt(1-a_prev) eps, solved for x0
        denom = a_t**0.5 * (1 - a_prev) ** 0.5 - a_prev**0.5 * (1 - a_t) ** 0.5
        return ((1 - a_prev) ** 0.5 * x - (1 - a_t) ** 0.5 * x_next) / denom
