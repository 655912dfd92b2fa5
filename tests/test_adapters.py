"""Diffusers adapters (SD3, FLUX, SD1.x) on tiny random-weight pipelines built from configs."""
import pytest
import torch

from progrpo_fast.models.flux import FluxDenoiser
from progrpo_fast.models.sd1 import SD1Denoiser
from progrpo_fast.models.sd3 import SD3Denoiser
from progrpo_fast.models.tiny import tiny_flux_pipeline, tiny_sd1_pipeline, tiny_sd3_pipeline
from progrpo_fast.sampling import PruneSchedule
from progrpo_fast.sampling.sampler import ExpandPruneSampler

PROMPTS = ["a red circle", "two blue squares"]
ADAPTERS = {
    "sd3": (tiny_sd3_pipeline, SD3Denoiser, dict(max_sequence_length=4, resolution=16), "ode", "sde"),
    "flux": (tiny_flux_pipeline, FluxDenoiser, dict(max_sequence_length=8, resolution=16), "ode", "cps"),
    "sd1": (tiny_sd1_pipeline, SD1Denoiser, dict(resolution=16), "ddim", "ddim"),
}


def build(name, **overrides):
    make_pipe, adapter, kwargs, _, _ = ADAPTERS[name]
    pipe = make_pipe()
    pipe.set_progress_bar_config(disable=True)
    return pipe, adapter(pipe, **{**kwargs, **overrides})


def stock_final_latents(name, pipe, model, x0, steps):
    prompts = [p for p in PROMPTS for _ in range(x0.shape[0] // len(PROMPTS))]
    common = dict(prompt=prompts, num_inference_steps=steps, output_type="latent", height=16, width=16)
    if name == "sd3":
        return pipe(latents=x0, guidance_scale=model.guidance_scale, max_sequence_length=4, **common).images
    if name == "flux":
        packed = pipe._pack_latents(x0, *x0.shape)
        out = pipe(latents=packed, guidance_scale=model.distilled_guidance, max_sequence_length=8, **common).images
        return pipe._unpack_latents(out, 16, 16, pipe.vae_scale_factor)
    return pipe(latents=x0, guidance_scale=model.guidance_scale, eta=0.0, **common).images


@pytest.mark.parametrize("name", ADAPTERS)
def test_deterministic_sampling_equals_the_stock_pipeline(name):
    pipe, model = build(name)
    deterministic = ADAPTERS[name][3]
    rollout = ExpandPruneSampler(model, PruneSchedule.naive(3, 4), method=deterministic, eta=0.0).sample(PROMPTS, seed=0)
    stock = stock_final_latents(name, pipe, model, rollout.latents[:, 0].clone(), 4)
    assert not torch.allclose(rollout.final_latents, rollout.latents[:, 0])
    torch.testing.assert_close(rollout.final_latents, stock.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ADAPTERS)
@pytest.mark.parametrize("guidance", ["cfg", "no-cfg"])
def test_pruned_sampling_with_and_without_cfg(name, guidance):
    overrides = {} if guidance == "cfg" else ({"true_cfg_scale": 1.0, "guidance_scale": 1.0} if name == "flux" else {"guidance_scale": 1.0})
    if name == "flux" and guidance == "cfg":
        overrides = {"true_cfg_scale": 2.0}
    _, model = build(name, **overrides)
    assert model.cfg == (guidance == "cfg")
    method = ADAPTERS[name][4]
    full = ExpandPruneSampler(model, PruneSchedule.naive(4, 4), method=method).sample(PROMPTS, seed=2)
    pruned = ExpandPruneSampler(model, PruneSchedule.from_string("4:1=3,2=2@4"), method=method).sample(PROMPTS, seed=2)
    ids = pruned.trajectory_ids
    assert pruned.latents.shape == (4, 5, *model.latent_shape())
    assert set(pruned.cond) == set(full.cond) and all(v.shape[0] == 4 for v in pruned.cond.values())
    for key, value in pruned.cond.items():
        assert torch.equal(value, full.cond[key][ids]), key
    torch.testing.assert_close(pruned.latents, full.latents[ids], rtol=1e-4, atol=1e-4)
    images = model.decode(pruned.final_latents)
    assert images.shape == (4, 3, 16, 16) and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("name", ADAPTERS)
def test_from_pretrained_loads_a_local_folder(name, tmp_path):
    pipe, model = build(name)
    pipe.save_pretrained(tmp_path)
    loaded = ADAPTERS[name][1].from_pretrained(tmp_path, **ADAPTERS[name][2])
    x = torch.randn(2, *model.latent_shape())
    t = model.schedule(4)["timesteps"][1]
    cond = model.encode(PROMPTS)
    torch.testing.assert_close(loaded.predict(x, t, loaded.encode(PROMPTS)), model.predict(x, t, cond))


def test_missing_model_path_says_how_to_fix(tmp_path):
    with pytest.raises(ValueError, match="not a local diffusers pipeline folder"):
        SD3Denoiser.from_pretrained(tmp_path / "nowhere")
