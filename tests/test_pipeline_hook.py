"""Pruning inside the stock diffusers pipelines equals the engine's own sampler."""
import pytest
import torch
from test_adapters import ADAPTERS, PROMPTS, build

from progrpo_fast.models.pipeline_hook import PruneCallback
from progrpo_fast.sampling import PruneSchedule
from progrpo_fast.sampling.sampler import ExpandPruneSampler

SCHEDULE = "4:2=3,3=2@5"


@pytest.mark.parametrize("name", ADAPTERS)
def test_stock_pipeline_prunes_like_the_sampler(name):
    overrides = {"true_cfg_scale": 2.0} if name == "flux" else {}
    pipe, model = build(name, **overrides)
    schedule = PruneSchedule.from_string(SCHEDULE)
    ours = ExpandPruneSampler(model, schedule, method=ADAPTERS[name][3], eta=0.0).sample(PROMPTS, seed=1)
    noise = ExpandPruneSampler(model, PruneSchedule.naive(4, 5), method=ADAPTERS[name][3], eta=0.0).sample(PROMPTS, seed=1).latents[:, 0]
    hook = PruneCallback(pipe, schedule)
    call = dict(prompt=PROMPTS, num_images_per_prompt=4, num_inference_steps=5, output_type="latent", height=16, width=16,
                callback_on_step_end=hook, callback_on_step_end_tensor_inputs=hook.tensor_inputs)
    if name == "sd3":
        out = pipe(latents=noise, guidance_scale=model.guidance_scale, max_sequence_length=4, **call).images
    elif name == "flux":
        out = pipe(latents=pipe._pack_latents(noise, *noise.shape), guidance_scale=model.distilled_guidance, true_cfg_scale=2.0,
                   negative_prompt=[""] * len(PROMPTS), max_sequence_length=8, **call).images
        out = pipe._unpack_latents(out, 16, 16, pipe.vae_scale_factor)
    else:
        out = pipe(latents=noise, guidance_scale=model.guidance_scale, eta=0.0, **call).images
    assert out.shape[0] == 4
    assert torch.equal(hook.kept, ours.trajectory_ids)
    torch.testing.assert_close(out.float(), ours.final_latents, rtol=1e-4, atol=1e-4)
    assert hook._handle is None


def test_hook_prunes_at_step_1_like_the_sampler():
    """x0_hat comes from the scheduler step's own model output, so a checkpoint at step 1 works."""
    pipe, model = build("sd3")
    schedule = PruneSchedule.from_string("4:1=2@4")
    ours = ExpandPruneSampler(model, schedule, method="ode", eta=0.0).sample(PROMPTS, seed=1)
    noise = ExpandPruneSampler(model, PruneSchedule.naive(4, 4), method="ode", eta=0.0).sample(PROMPTS, seed=1).latents[:, 0]
    hook = PruneCallback(pipe, schedule)
    out = pipe(prompt=PROMPTS, num_images_per_prompt=4, num_inference_steps=4, output_type="latent", height=16, width=16, latents=noise,
               guidance_scale=model.guidance_scale, max_sequence_length=4, callback_on_step_end=hook,
               callback_on_step_end_tensor_inputs=hook.tensor_inputs).images
    assert torch.equal(hook.kept, ours.trajectory_ids)
    torch.testing.assert_close(out.float(), ours.final_latents, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, kwargs", [("sd3", {}), ("sd1", {"eta": 1.0})])
def test_hook_takes_x0_hat_from_the_pipelines_own_prediction_on_stochastic_steps(name, kwargs):
    """FlowMatchEuler with stochastic_sampling=True and DDIM with eta=1 add noise at every step, so a
    difference of two latents is no velocity; the hook selects with the scheduler step's own x0_hat."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from progrpo_fast import ops

    pipe, _ = build(name)
    if name == "sd3":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
    seen, own_step = [], pipe.scheduler.step

    def spy(model_output, timestep, sample, *args, **kw):
        out = own_step(model_output, timestep, sample, *args, **kw)
        seen.append((model_output.float(), sample.float(), out[0].float()))
        return out

    pipe.scheduler.step = spy
    hook = PruneCallback(pipe, PruneSchedule.from_string("4:1=2@4"))
    torch.manual_seed(0)
    pipe(prompt=PROMPTS, num_images_per_prompt=4, num_inference_steps=4, output_type="latent", height=16, width=16,
         callback_on_step_end=hook, callback_on_step_end_tensor_inputs=hook.tensor_inputs, **kwargs)
    v, x, x_next = seen[0]
    if name == "sd3":
        sigma, sigma_next = (float(s) for s in pipe.scheduler.sigmas[:2])
        x0_hat = x - sigma * v
        from_latents = x - sigma * (x_next - x) / (sigma_next - sigma)  # what a latent difference gives
        assert (from_latents - x0_hat).abs().mean() > 0.1 * x0_hat.abs().mean()
    else:
        a_t = float(pipe.scheduler.alphas_cumprod[int(pipe.scheduler.timesteps[0])])
        x0_hat = (x - (1 - a_t) ** 0.5 * v) / a_t**0.5
    assert torch.equal(hook.kept, ops.prune_select(x0_hat, 4, 2, 4))
    assert hook._handle is None and pipe.scheduler.step is spy  # close() restored the scheduler


def test_hook_refuses_a_scheduler_it_cannot_read_x0_hat_from():
    pipe, _ = build("sd1")
    pipe.scheduler.register_to_config(prediction_type="unknown")
    with pytest.raises(ValueError, match="StepPruner"):
        PruneCallback(pipe, PruneSchedule.from_string("4:1=2@4"))
