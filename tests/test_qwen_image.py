"""The Qwen-Image adapter (QwenImageDenoiser) on the tiny random-weight QwenImagePipeline: packed
2x2 latents, true CFG with its norm rescale, the stock pipeline reproduced, pruning, decoding."""
import pytest
import torch
from adapter_checks import check_from_pretrained, check_pruned_sampling

from progrpo_fast.models.pipeline_hook import PruneCallback
from progrpo_fast.models.qwen_image import QwenImageDenoiser
from progrpo_fast.models.tiny import tiny_qwen_image_pipeline
from progrpo_fast.sampling import PruneSchedule
from progrpo_fast.sampling.sampler import ExpandPruneSampler

PROMPTS = ["a red circle", "two blue squares left of a green triangle"]  # different lengths: padded, with a mask
SIZE = dict(resolution=32, max_sequence_length=64)


def build(**overrides):
    pipe = tiny_qwen_image_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe, QwenImageDenoiser(pipe, **{**SIZE, **overrides})


@pytest.mark.parametrize("guidance", [4.0, 1.0], ids=["true-cfg", "no-cfg"])
def test_deterministic_sampling_equals_the_stock_pipeline(guidance):
    pipe, model = build(guidance_scale=guidance)
    rollout = ExpandPruneSampler(model, PruneSchedule.naive(2, 4), method="ode").sample(PROMPTS, seed=0)
    x0 = rollout.latents[:, 0].clone()
    assert x0.shape == (4, 4, 8, 8)
    rows = [p for p in PROMPTS for _ in range(2)]
    packed = pipe._pack_latents(x0, *x0.shape)
    out = pipe(prompt=rows, negative_prompt=[" "] * len(rows) if guidance > 1 else None, true_cfg_scale=guidance, latents=packed,
               height=32, width=32, num_inference_steps=4, max_sequence_length=64, output_type="latent").images
    stock = pipe._unpack_latents(out, 32, 32, pipe.vae_scale_factor)[:, :, 0]
    assert not torch.allclose(rollout.final_latents, x0)
    torch.testing.assert_close(rollout.final_latents, stock.float(), rtol=1e-4, atol=1e-4)


def test_conditioning_holds_masks_for_padded_prompts():
    _, model = build()
    cond = model.encode(PROMPTS)
    assert set(cond) == {"prompt_embeds", "prompt_embeds_mask", "negative_prompt_embeds"}  # " " alone: no padding, no mask
    assert cond["prompt_embeds_mask"].sum(1).tolist()[0] < cond["prompt_embeds"].shape[1]
    assert set(model.encode(PROMPTS[:1])) == {"prompt_embeds", "negative_prompt_embeds"}


def test_norm_rescale_keeps_the_positive_velocity_norm_per_token():
    _, model = build()
    x, t, cond = torch.randn(2, *model.latent_shape()), model.schedule(4)["timesteps"][1], model.encode(PROMPTS)
    guided = model.predict(x, t, cond)
    plain = QwenImageDenoiser(model.pipe, guidance_scale=1.0, **SIZE).predict(x, t, {"prompt_embeds": cond["prompt_embeds"],
                                                                                   "prompt_embeds_mask": cond["prompt_embeds_mask"]})
    token_norm = lambda v: model.pipe._pack_latents(v, *v.shape).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(token_norm(guided), token_norm(plain), rtol=1e-5, atol=1e-5)
    unscaled = QwenImageDenoiser(model.pipe, norm_rescale=False, **SIZE).predict(x, t, cond)
    assert not torch.allclose(token_norm(unscaled), token_norm(plain))


@pytest.mark.parametrize("guidance", [4.0, 1.0], ids=["true-cfg", "no-cfg"])
def test_pruned_sampling_follows_the_unpruned_trajectories(guidance):
    _, model = build(guidance_scale=guidance)
    check_pruned_sampling(model, PROMPTS, "cps")


def test_decode_gives_images():
    _, model = build()
    images = model.decode(torch.randn(3, *model.latent_shape()))
    assert images.shape == (3, 3, 32, 32) and images.min() >= 0 and images.max() <= 1


def test_from_pretrained_loads_a_local_folder(tmp_path):
    pipe, model = build()
    check_from_pretrained(QwenImageDenoiser, pipe, model, PROMPTS, tmp_path, **SIZE)


def test_bad_sequence_length_is_refused():
    with pytest.raises(ValueError, match="max_sequence_length must be an int in \\[1, 1024\\]"):
        build(max_sequence_length=2000)


def test_stock_pipeline_prunes_like_the_sampler():
    """PruneCallback inside QwenImagePipeline (packed latents, masks and the negative pass narrowed
    by the network hook) keeps the sampler's survivors and ends at their latents. Each prompt is
    passed 4 times instead of num_images_per_prompt=4: the installed QwenImagePipeline repeats a
    2-D text mask with ``mask.repeat(1, n, 1).view(B * n, L)``, which interleaves the prompts'
    masks when they pad to different lengths."""
    pipe, model = build()
    schedule = PruneSchedule.from_string("4:2=3,3=2@5")
    ours = ExpandPruneSampler(model, schedule, method="ode").sample(PROMPTS, seed=1)
    noise = ExpandPruneSampler(model, PruneSchedule.naive(4, 5), method="ode").sample(PROMPTS, seed=1).latents[:, 0]
    hook = PruneCallback(pipe, schedule)
    rows = [p for p in PROMPTS for _ in range(4)]
    out = pipe(prompt=rows, negative_prompt=[" "] * len(rows), true_cfg_scale=model.guidance_scale,
               latents=pipe._pack_latents(noise, *noise.shape), height=32, width=32, num_inference_steps=5, max_sequence_length=64,
               output_type="latent", callback_on_step_end=hook, callback_on_step_end_tensor_inputs=hook.tensor_inputs).images
    assert hook.tensor_inputs == ["latents", "prompt_embeds"] and out.shape[0] == 4
    assert torch.equal(hook.kept, ours.trajectory_ids)
    torch.testing.assert_close(pipe._unpack_latents(out, 32, 32, pipe.vae_scale_factor)[:, :, 0], ours.final_latents, rtol=1e-4, atol=1e-4)
    assert hook._handle is None


def test_qwen_image_sized_random_model_matches_the_published_config():
    """model.kind=qwen_image_random: Qwen-Image's published transformer (Qwen/Qwen-Image
    transformer/config.json: 60 blocks, 24 heads x 128, joint_attention_dim 3584, in_channels 64,
    RoPE axes (16, 56, 56)) and VAE, built on the meta device (no memory)."""
    from progrpo_fast.models.tiny import qwen_image_sized_pipeline

    pipe = qwen_image_sized_pipeline(device="meta")
    config = pipe.transformer.config
    assert (config.num_layers, config.num_attention_heads, config.attention_head_dim, config.joint_attention_dim) == (60, 24, 128, 3584)
    assert (config.in_channels, config.out_channels, tuple(config.axes_dims_rope), config.guidance_embeds) == (64, 16, (16, 56, 56), False)
    assert sum(p.numel() for p in pipe.transformer.parameters()) == pytest.approx(2.043e10, rel=1e-3)  # "20B"
    assert sum(p.numel() for p in pipe.vae.parameters()) == pytest.approx(1.269e8, rel=1e-3) and pipe.vae_scale_factor == 8
    assert pipe.text_encoder.config.text_config.hidden_size == 3584
    model = QwenImageDenoiser(pipe, resolution=512)
    assert model.latent_shape() == (16, 64, 64)


def test_build_model_makes_qwen_image_kinds(monkeypatch, tmp_path):
    from progrpo_fast.models import tiny
    from progrpo_fast.train.build import build_model
    from progrpo_fast.train.config import load_config

    monkeypatch.setattr(tiny, "qwen_image_sized_pipeline", lambda device: tiny_qwen_image_pipeline())  # the 20B one is too big here
    config = load_config(None, ["model.kind=qwen_image_random", "model.resolution=32", "model.max_sequence_length=64", "model.dtype=bf16"])
    model = build_model(config.model, device="cpu")
    assert isinstance(model, QwenImageDenoiser) and model.dtype == torch.bfloat16 and model.latent_shape() == (4, 8, 8)
    tiny_qwen_image_pipeline().save_pretrained(tmp_path)
    config = load_config(None, ["model.kind=qwen_image", f"model.path={tmp_path}", "model.resolution=32", "model.guidance_scale=3.0"])
    model = build_model(config.model, device="cpu")
    assert isinstance(model, QwenImageDenoiser) and model.guidance_scale == 3.0 and model.max_sequence_length == 512
