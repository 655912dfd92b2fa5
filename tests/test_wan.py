"""The Wan text-to-video adapter (WanDenoiser) on the tiny random-weight WanPipeline: video latents
(B, C, F, H, W), the stock pipeline reproduced, pruning, decoding, argument checks."""
import pytest
import torch
from adapter_checks import check_from_pretrained, check_pruned_sampling
from diffusers import UniPCMultistepScheduler

from progrpo_fast.models.pipeline_hook import PruneCallback
from progrpo_fast.models.tiny import tiny_wan_pipeline
from progrpo_fast.models.wan import WanDenoiser
from progrpo_fast.sampling import PruneSchedule
from progrpo_fast.sampling.sampler import ExpandPruneSampler

PROMPTS = ["a red circle", "two blue squares left of a green triangle"]
SIZE = dict(num_frames=9, height=32, width=32, max_sequence_length=16)


def build(expand_timesteps=False, **overrides):
    pipe = tiny_wan_pipeline(expand_timesteps=expand_timesteps)
    pipe.set_progress_bar_config(disable=True)
    return pipe, WanDenoiser(pipe, **{**SIZE, **overrides})


@pytest.mark.parametrize("expand_timesteps", [False, True], ids=["wan2.1", "wan2.2-ti2v"])
@pytest.mark.parametrize("guidance", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_deterministic_sampling_equals_the_stock_pipeline(expand_timesteps, guidance):
    pipe, model = build(expand_timesteps, guidance_scale=guidance)
    rollout = ExpandPruneSampler(model, PruneSchedule.naive(2, 4), method="ode").sample(PROMPTS, seed=0)
    x0 = rollout.latents[:, 0].clone()
    assert x0.shape == (4, 4, 3, 8, 8)  # 9 frames -> 3 latent frames, 32 px -> 8
    rows = [p for p in PROMPTS for _ in range(2)]
    stock = pipe(prompt=rows, latents=x0, num_inference_steps=4, guidance_scale=guidance, output_type="latent", **SIZE).frames
    assert not torch.allclose(rollout.final_latents, x0)
    torch.testing.assert_close(rollout.final_latents, stock.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("guidance", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_pruned_video_sampling_follows_the_unpruned_trajectories(guidance):
    _, model = build(guidance_scale=guidance)
    assert model.cfg == (guidance > 1)
    check_pruned_sampling(model, PROMPTS, "sde")


def test_decode_gives_videos_of_4k_plus_1_frames():
    _, model = build()
    latents = torch.randn(2, *model.latent_shape())
    video = model.decode(latents)
    assert video.shape == (2, 3, 9, 32, 32) and video.min() >= 0 and video.max() <= 1
    assert not torch.allclose(video[:, :, 0], video[:, :, -1])


def test_from_pretrained_loads_a_local_folder(tmp_path):
    pipe, model = build()
    check_from_pretrained(WanDenoiser, pipe, model, PROMPTS, tmp_path, **SIZE)


def test_unipc_flow_scheduler_becomes_flow_match_euler_with_its_shift():
    pipe = tiny_wan_pipeline()
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    model = WanDenoiser(pipe, **SIZE)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.scheduler.config.shift == 5.0
    sigmas = model.schedule(4)["sigmas"]
    assert sigmas[0] == 1 and sigmas[-1] == 0 and bool((sigmas[1:] < sigmas[:-1]).all())


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_frames=8), "num_frames must be 4k \\+ 1"),
    (dict(height=36), "height must be a multiple of 8"),
    (dict(width=20), "width must be a multiple of 8"),
])
def test_bad_sizes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(**kwargs)


def test_two_expert_pipeline_is_refused():
    pipe = tiny_wan_pipeline()
    pipe.register_modules(transformer_2=tiny_wan_pipeline(seed=1).transformer)
    with pytest.raises(ValueError, match="two-expert"):
        WanDenoiser(pipe, **SIZE)


@pytest.mark.parametrize("guidance", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_stock_pipeline_prunes_like_the_sampler(guidance):
    """PruneCallback inside WanPipeline: video latents and both CFG halves (prompt_embeds,
    negative_prompt_embeds) compacted by the callback, the sampler's survivors and final latents."""
    pipe, model = build(guidance_scale=guidance)
    schedule = PruneSchedule.from_string("4:2=3,3=2@5")
    ours = ExpandPruneSampler(model, schedule, method="ode").sample(PROMPTS, seed=1)
    noise = ExpandPruneSampler(model, PruneSchedule.naive(4, 5), method="ode").sample(PROMPTS, seed=1).latents[:, 0]
    hook = PruneCallback(pipe, schedule)
    out = pipe(prompt=PROMPTS, num_videos_per_prompt=4, latents=noise, guidance_scale=guidance, num_inference_steps=5, output_type="latent",
               callback_on_step_end=hook, callback_on_step_end_tensor_inputs=hook.tensor_inputs, **SIZE).frames
    assert hook.tensor_inputs == ["latents", "prompt_embeds", "negative_prompt_embeds"] and out.shape == (4, 4, 3, 8, 8)
    assert torch.equal(hook.kept, ours.trajectory_ids)
    torch.testing.assert_close(out.float(), ours.final_latents, rtol=1e-4, atol=1e-4)
    assert hook._handle is None


def test_wan21_1p3b_sized_random_model_matches_the_published_config():
    """model.kind=wan21_1p3b_random: Wan2.1-T2V-1.3B's published transformer
    (Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json: 30 blocks, 12 heads x 128, FFN 8960,
    text_dim 4096, patch (1, 2, 2)) and the Wan2.1 VAE, built on the meta device."""
    from progrpo_fast.models.tiny import wan21_1p3b_sized_pipeline

    pipe = wan21_1p3b_sized_pipeline(device="meta")
    config = pipe.transformer.config
    assert (config.num_layers, config.num_attention_heads, config.attention_head_dim, config.ffn_dim) == (30, 12, 128, 8960)
    assert (config.text_dim, config.in_channels, tuple(config.patch_size), config.freq_dim) == (4096, 16, (1, 2, 2), 256)
    assert sum(p.numel() for p in pipe.transformer.parameters()) == pytest.approx(1.419e9, rel=1e-3)  # "1.3B"
    assert sum(p.numel() for p in pipe.vae.parameters()) == pytest.approx(1.269e8, rel=1e-3)
    assert (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal, pipe.tokenizer.model_max_length) == (8, 4, 512)
    model = WanDenoiser(pipe)  # the published default video: 81 frames of 480 x 832
    assert model.latent_shape() == (16, 21, 60, 104)


def test_build_model_makes_wan_kinds(monkeypatch, tmp_path):
    from progrpo_fast.models import tiny
    from progrpo_fast.train.build import build_model
    from progrpo_fast.train.config import load_config

    monkeypatch.setattr(tiny, "wan21_1p3b_sized_pipeline", lambda device: tiny_wan_pipeline())
    overrides = ["model.resolution=32", "model.width=16", "model.num_frames=5", "model.max_sequence_length=16"]
    model = build_model(load_config(None, ["model.kind=wan21_1p3b_random", *overrides]).model, device="cpu")
    assert isinstance(model, WanDenoiser) and model.latent_shape() == (4, 2, 8, 4)
    tiny_wan_pipeline().save_pretrained(tmp_path)
    model = build_model(load_config(None, ["model.kind=wan", f"model.path={tmp_path}", *overrides]).model, device="cpu")
    assert isinstance(model, WanDenoiser) and (model.height, model.width, model.num_frames) == (32, 16, 5)
