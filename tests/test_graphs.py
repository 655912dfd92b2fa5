"""GraphSampler on CPU: its static-buffer segments run eagerly and must equal ExpandPruneSampler
bitwise (the CUDA-graph replay itself is tested in test_graphs_cuda.py)."""
from __future__ import annotations

import pytest
import torch

from progrpo_fast.models.sd1 import SD1Denoiser
from progrpo_fast.models.sd3 import SD3Denoiser
from progrpo_fast.models.tiny import tiny_sd1_pipeline, tiny_sd3_pipeline
from progrpo_fast.sampling import PruneSchedule
from progrpo_fast.sampling.graphs import GraphSampler, build_sampler, graph_support
from progrpo_fast.sampling.proxies import HiddenProbeProxy, LatentProxy, ProbeProxy, RandomProxy, RewardProxy
from progrpo_fast.sampling.sampler import ExpandPruneSampler, segments
from progrpo_fast.train.config import available_presets, load_config

PROMPTS = ["a red circle", "two blue squares"]


def sd3(guidance_scale=4.5):
    pipe = tiny_sd3_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return SD3Denoiser(pipe, guidance_scale=guidance_scale, max_sequence_length=4, resolution=16)


def sd1():
    pipe = tiny_sd1_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return SD1Denoiser(pipe, resolution=16)


def assert_same_rollout(a, b):
    for name in ("latents", "log_probs", "trajectory_ids", "prompt_index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.cond.keys() == b.cond.keys() and all(torch.equal(a.cond[k], b.cond[k]) for k in a.cond)
    assert (a.group_size, a.trajectory_steps, a.seed) == (b.group_size, b.trajectory_steps, b.seed)
    assert len(a.prune_log) == len(b.prune_log)
    for ra, rb in zip(a.prune_log, b.prune_log):
        assert (ra.step, ra.rows_before) == (rb.step, rb.rows_before)
        for name in ("kept_ids", "variance_all", "variance_kept", "scores", "kept_features"):
            va, vb = getattr(ra, name), getattr(rb, name)
            assert (va is None and vb is None) or torch.equal(va, vb), name


def assert_close_rollout(a, b, tolerance=1e-5):
    """Same trajectories and survivors, tensors equal to ``tolerance``."""
    for name in ("trajectory_ids", "prompt_index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("latents", "log_probs"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=tolerance, rtol=tolerance, msg=name)
    assert len(a.prune_log) == len(b.prune_log)
    for ra, rb in zip(a.prune_log, b.prune_log):
        assert (ra.step, ra.rows_before) == (rb.step, rb.rows_before) and torch.equal(ra.kept_ids, rb.kept_ids)
        for name in ("variance_all", "variance_kept", "scores"):
            va, vb = getattr(ra, name), getattr(rb, name)
            assert (va is None and vb is None) or torch.allclose(va, vb, atol=tolerance, rtol=tolerance), name


def reward_proxy():
    return RewardProxy(lambda images, prompts: images.mean((1, 2, 3)) + torch.tensor([len(p) for p in prompts]) * 0.01)


PROXIES = {"latent": lambda model: LatentProxy(grid=2), "random": lambda model: RandomProxy(),
           "probe": lambda model: ProbeProxy(grid=2, min_samples=4), "hidden": lambda model: HiddenProbeProxy(model.network, min_samples=4),
           "reward": lambda model: reward_proxy()}
LEARNING = ("probe", "hidden")


@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize("cfg", [True, False])
@pytest.mark.parametrize("noise_steps", [None, [0, 2]])
def test_graph_sampler_equals_the_eager_sampler_bitwise(proxy, cfg, noise_steps):
    model = sd3(4.5 if cfg else 1.0)
    schedule = PruneSchedule.from_string("6:1=4,3=2@5")
    proxies = PROXIES[proxy](model), PROXIES[proxy](model)
    eager = ExpandPruneSampler(model, schedule, proxies[0], noise_steps=noise_steps)
    graphed = GraphSampler(model, schedule, proxies[1], noise_steps=noise_steps)
    for seed, prompts in ((1, PROMPTS), (2, PROMPTS[::-1]), (3, PROMPTS)):  # the static buffers are reused
        expected, got = eager.sample(prompts, seed), graphed.sample(prompts, seed)
        assert_same_rollout(got, expected)
        if proxy in LEARNING:  # both probes learn from their own rollouts and must stay identical
            for probe, rollout in zip(proxies, (expected, got)):
                probe.observe(rollout, rollout.final_latents.mean((1, 2, 3)))
    if proxy in LEARNING:
        assert proxies[1].graph_key()[-1], "the probe was fitted and sampled with its fitted branch"


@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize("cfg", [True, False])
@pytest.mark.parametrize("sampler_class", [ExpandPruneSampler, GraphSampler])
def test_forward_rows_chunks_equal_one_call_per_step(proxy, cfg, sampler_class):
    """sampler.forward_rows=5 on 12 rows (chunks 5, 5, 2, then 5, 3 after a prune) samples the
    rollout of one network call per step, with every proxy, CFG on and off: the same survivors,
    latents and log-probs to fp32 rounding (a matmul's result depends on its batch size)."""
    model = sd3(4.5 if cfg else 1.0)
    schedule = PruneSchedule.from_string("6:1=4,3=2@5")
    proxies = PROXIES[proxy](model), PROXIES[proxy](model)
    if proxy == "reward":  # as the trainer builds it: the checkpoint decodes and scores in batches of forward_rows
        proxies[1].batch_size = 5
    whole = ExpandPruneSampler(model, schedule, proxies[0])
    chunked = sampler_class(model, schedule, proxies[1], forward_rows=5)
    for seed in (1, 2):
        expected, got = whole.sample(PROMPTS, seed), chunked.sample(PROMPTS, seed)
        assert_close_rollout(got, expected)
        if proxy in LEARNING:  # fitted after the first rollout: the second selects with the fitted probe
            for probe, rollout in zip(proxies, (expected, got)):
                probe.observe(rollout, rollout.final_latents.mean((1, 2, 3)))
            assert proxies[1].graph_key()[-1]


@pytest.mark.parametrize("forward_rows", [0, -2, 2.5, "8"])
def test_forward_rows_must_be_a_positive_int(forward_rows):
    with pytest.raises(ValueError, match="forward_rows must be an int >= 1"):
        ExpandPruneSampler(sd3(), PruneSchedule.from_string("4:2=2@4"), forward_rows=forward_rows)


def preset_schedules():
    schedules = {}
    for preset in available_presets():
        config = load_config(preset, check_paths=False)
        schedules[preset] = (config.sampler.schedule, config.model.kind == "sd1")
    return schedules


@pytest.mark.parametrize("preset", sorted(preset_schedules()))
def test_graph_sampler_equals_the_eager_sampler_on_every_preset_schedule(preset):
    schedule, diffusion = preset_schedules()[preset]
    model = sd1() if diffusion else sd3()
    plan = PruneSchedule.from_string(schedule)
    method = "ddim" if diffusion else "sde"
    expected = ExpandPruneSampler(model, plan, LatentProxy(grid=2), method=method).sample(PROMPTS[:1], seed=5)
    got = GraphSampler(model, plan, LatentProxy(grid=2), method=method).sample(PROMPTS[:1], seed=5)
    assert_same_rollout(got, expected)
    assert got.latents.shape[0] == plan.final_group_size


def test_rollouts_are_copies_and_the_buffers_follow_the_call_shape():
    model = sd3()
    sampler = GraphSampler(model, PruneSchedule.from_string("4:2=2@4"), LatentProxy(grid=2))
    first = sampler.sample(PROMPTS, seed=1)
    kept = first.latents.clone()
    key = sampler.capture_key_now
    sampler.sample(PROMPTS, seed=2)
    assert torch.equal(first.latents, kept), "a later call must not overwrite an earlier rollout"
    assert sampler.capture_key_now == key and sampler.state.history.shape[0] == 8
    three = sampler.sample(PROMPTS + ["one green triangle"], seed=2)  # P changed: new buffers
    assert sampler.capture_key_now != key and sampler.state.history.shape[0] == 12 and three.latents.shape[0] == 6


def test_the_probe_changes_the_capture_key_when_it_is_fitted():
    model = sd3()
    probe = ProbeProxy(grid=2, min_samples=4)
    sampler = GraphSampler(model, PruneSchedule.from_string("4:2=2@4"), probe)
    rollout = sampler.sample(PROMPTS, seed=1)
    unfitted = sampler.capture_key_now
    probe.observe(rollout, rollout.final_latents.mean((1, 2, 3)))
    weights = probe.probes[2].weights
    sampler.sample(PROMPTS, seed=2)
    fitted = sampler.capture_key_now
    assert fitted != unfitted
    rollout = sampler.sample(PROMPTS, seed=3)
    probe.observe(rollout, rollout.final_latents.mean((1, 2, 3)))
    assert probe.probes[2].weights is weights, "refits write the weights in place (a graph keeps reading them)"
    sampler.sample(PROMPTS, seed=4)
    assert sampler.capture_key_now == fitted


def test_replacing_a_static_buffer_is_an_error():
    sampler = GraphSampler(sd3(), PruneSchedule.from_string("4:2=2@4"), LatentProxy(grid=2))
    sampler.sample(PROMPTS, seed=1)
    sampler.captured_pointers = sampler.static_pointers()
    sampler.state.history = sampler.state.history.clone()
    with pytest.raises(RuntimeError, match="static buffers were replaced"):
        sampler.replay(PROMPTS)


def test_segments_cut_the_schedule_at_its_checkpoints():
    plan = PruneSchedule.from_string("48:5=24,7=12@10")
    assert [(s.start, s.stop, s.keep) for s in segments(plan)] == [(0, 5, 24), (5, 7, 12), (7, 10, None)]
    assert [(s.start, s.stop, s.keep) for s in segments(PruneSchedule.naive(8, 4))] == [(0, 4, None)]


def test_build_sampler_follows_sampler_cuda_graphs():
    model = sd3()
    plan = PruneSchedule.from_string("4:2=2@4")
    config = load_config(None, check_paths=False).sampler
    ok, why = graph_support(model)
    assert not ok and "not a CUDA device" in why
    for mode in ("auto", "false"):
        config.cuda_graphs = mode
        assert type(build_sampler(model, plan, config, LatentProxy())) is ExpandPruneSampler
    config.cuda_graphs = "true"
    with pytest.raises(ValueError, match="sampler.cuda_graphs=true but CUDA graphs cannot run here: the model is on cpu"):
        build_sampler(model, plan, config, LatentProxy())
    with pytest.raises(ValueError, match="warmup"):
        GraphSampler(model, plan, warmup=0)


@pytest.mark.parametrize("history_dtype", [torch.float32, torch.bfloat16])
def test_graph_sampler_equals_the_eager_sampler_for_video_latents_and_half_histories(history_dtype):
    from progrpo_fast.models.tiny import tiny_wan_pipeline
    from progrpo_fast.models.wan import WanDenoiser

    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    model = WanDenoiser(pipe, num_frames=9, height=32, width=32, max_sequence_length=16)
    plan = PruneSchedule.from_string("4:1=3,2=2@4")
    eager = ExpandPruneSampler(model, plan, LatentProxy(grid=2), history_dtype=history_dtype)
    graphed = GraphSampler(model, plan, LatentProxy(grid=2), history_dtype=history_dtype)
    got = graphed.sample(PROMPTS, seed=4)
    assert got.latents.dtype == history_dtype and got.latents.dim() == 6  # (n, T+1, C, F, H, W)
    assert_same_rollout(got, eager.sample(PROMPTS, seed=4))


def test_graph_sampler_refuses_an_offloaded_history():
    model = sd3()
    with pytest.raises(ValueError, match="keeps the rollout history on the model's device"):
        GraphSampler(model, PruneSchedule.from_string("4:2=2@4"), history_device="meta")
