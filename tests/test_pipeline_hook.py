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


def test_hook_refuses_a_checkpoint_before_step_2():
    pipe, _ = build("sd3")
    with pytest.raises(ValueError, match="checkpoints must be >= 2"):
        PruneCallback(pipe, PruneSchedule.from_string("4:1=2@5"))
