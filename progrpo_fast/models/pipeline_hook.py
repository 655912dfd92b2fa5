"""Pruning inside stock diffusers pipelines through ``callback_on_step_end``.

    hook = PruneCallback(pipe, PruneSchedule.from_string("8:5=4,7=2@10"))
    out = pipe(prompts, num_images_per_prompt=8, num_inference_steps=10,
               callback_on_step_end=hook, callback_on_step_end_tensor_inputs=hook.tensor_inputs)
    # out.images holds 2 images per prompt; hook.kept are their rows in the unpruned batch

The pipeline's batch must be consecutive groups of ``group_size_max`` rows per prompt (what
``num_images_per_prompt`` gives). Before checkpoint step c the hook takes x0_hat of step c-1 from
the pipeline's own prediction: it wraps ``pipe.scheduler.step`` (until ``close()``) to see the
(guided) model output and the latent it was applied to, and computes x0_hat = x - sigma * v (flow
matching) or from the epsilon / v prediction and alphas_cumprod (DDPM-style schedulers). That is
exact for stochastic steps too (FlowMatchEuler with ``stochastic_sampling=True``, DDIM with eta > 0),
where a difference of two consecutive latents is not. Schedulers it cannot read x0_hat from are
refused at construction (use ``progrpo_fast.integrations.StepPruner`` in your own loop then). It
selects survivors with ``ops.prune_select`` and compacts the latents and every per-row conditioning
tensor in place, CFG pairs included. Conditioning the pipeline does not pass
to callbacks (FLUX's pooled embeddings and guidance, negative embeddings of true CFG, Qwen-Image's
text masks and negative embeddings) is narrowed by a forward pre-hook on the network. Works on
SD3, FLUX, SD1.x, Qwen-Image (packed latents, true CFG) and Wan (video latents (B, C, F, H, W),
both CFG halves passed to the callback).
"""
from __future__ import annotations

import torch

from progrpo_fast import ops
from progrpo_fast.sampling.schedule import PruneSchedule

BATCHED_NETWORK_INPUTS = ("encoder_hidden_states", "encoder_hidden_states_mask", "pooled_projections", "guidance")
CALLBACK_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds")


class PruneCallback:
    def __init__(self, pipe, schedule: PruneSchedule, grid: int = 4):
        self.pipe, self.schedule, self.grid = pipe, schedule, grid
        self.network = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
        self.tensor_inputs = [name for name in CALLBACK_INPUTS if name in pipe._callback_tensor_inputs]
        self.prediction = prediction_kind(pipe.scheduler)
        self.kept = None  # rows of the unpruned batch that are still running
        self.unpruned_rows = 0
        self.step_inputs = None  # (model output, sample) of the scheduler's latest step
        self._handle = None
        self._patched = False
        self._wrap_scheduler_step()

    def __call__(self, pipe, step: int, timestep, kwargs: dict) -> dict:
        latents = kwargs["latents"]
        if step == 0:
            self.unpruned_rows = latents.shape[0]
            self.kept = torch.arange(latents.shape[0], device=latents.device)
            self._handle = self.network.register_forward_pre_hook(self._narrow_inputs, with_kwargs=True)
            if not self._patched:  # a second pipeline call with this hook: step 0's scheduler step was not seen
                self._wrap_scheduler_step()
                self.step_inputs = None
        next_step = step + 1
        keep = self.schedule.keep_at(next_step)
        if keep is not None:
            if self.step_inputs is None:
                raise ValueError(f"the hook saw no scheduler step before its checkpoint at step {next_step}; construct a "
                                 "PruneCallback per pipeline call (it wraps pipe.scheduler.step from construction until the last step)")
            x0_hat = self._x0_hat(step, *self.step_inputs)
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
        self.step_inputs = None
        if next_step == self.schedule.num_steps:
            self.close()
        return kwargs

    def close(self) -> None:
        """Removes the network hook and the scheduler.step wrapper (done by the last step's callback)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._patched:
            scheduler = self.pipe.scheduler
            if self._own_step is None:
                del scheduler.step
            else:
                scheduler.step = self._own_step
            self._patched = False

    def _wrap_scheduler_step(self) -> None:
        """pipe.scheduler.step, recording the model output and the sample of every call."""
        scheduler = self.pipe.scheduler
        self._own_step = scheduler.__dict__.get("step")  # an instance attribute someone else set, restored by close()
        original = scheduler.step

        def step(*args, **kwargs):
            model_output = kwargs["model_output"] if "model_output" in kwargs else args[0]
            sample = kwargs["sample"] if "sample" in kwargs else args[2]
            self.step_inputs = (model_output, sample)
            return original(*args, **kwargs)

        scheduler.step = step
        self._patched = True

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

    def _x0_hat(self, step: int, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0_hat of ``step`` from the pipeline's own (guided) model output and the latent x it was applied to."""
        scheduler = self.pipe.scheduler
        x, output = x.float(), model_output.float()
        if self.prediction == "flow":
            return x - float(scheduler.sigmas[step]) * output
        a_t = float(torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)[int(scheduler.timesteps[step])])
        if self.prediction == "epsilon":
            return (x - (1 - a_t) ** 0.5 * output) / a_t**0.5
        if self.prediction == "v_prediction":
            return a_t**0.5 * x - (1 - a_t) ** 0.5 * output
        return output  # "sample"


def prediction_kind(scheduler) -> str:
    """How x0_hat follows from a scheduler step's model output: "flow" (x - sigma v), "epsilon",
    "v_prediction" or "sample" (alphas_cumprod schedulers); raises ValueError for the others."""
    if hasattr(scheduler, "sigmas") and not hasattr(scheduler, "alphas_cumprod"):
        return "flow"
    kind = getattr(scheduler.config, "prediction_type", None)
    if hasattr(scheduler, "alphas_cumprod") and kind in ("epsilon", "v_prediction", "sample"):
        return kind
    raise ValueError(f"PruneCallback cannot read x0_hat from {type(scheduler).__name__}'s step (prediction_type={kind!r}); "
                     "prune in your own sampling loop with progrpo_fast.integrations.StepPruner instead")
