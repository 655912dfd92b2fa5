"""GraphSampler on a GPU: replays equal eager sampling, no host sync in a sampling call, one pool
for all segments, re-capture on a shape change. Skipped without CUDA."""
from __future__ import annotations

import contextlib

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from progrpo_fast.models.sd3 import SD3Denoiser  # noqa: E402
from progrpo_fast.models.tiny import tiny_sd3_pipeline  # noqa: E402
from progrpo_fast.sampling import PruneSchedule  # noqa: E402
from progrpo_fast.sampling.graphs import GraphSampler  # noqa: E402
from progrpo_fast.sampling.proxies import LatentProxy, ProbeProxy, RandomProxy, RewardProxy  # noqa: E402
from progrpo_fast.sampling.sampler import ExpandPruneSampler  # noqa: E402
from progrpo_fast.train.build import build_model  # noqa: E402
from progrpo_fast.train.config import load_config  # noqa: E402

PROMPTS = ["a red circle", "two blue squares", "one green triangle"]
SCHEDULE = PruneSchedule.from_string("8:2=4,4=2@6")
BF16_TOLERANCE = dict(rtol=2e-2, atol=2e-2)  # replay vs eager in bf16: kernels may differ by rounding


def tiny_model(dtype=torch.float32):
    pipe = tiny_sd3_pipeline().to("cuda", dtype)
    pipe.set_progress_bar_config(disable=True)
    return SD3Denoiser(pipe, max_sequence_length=4, resolution=16)


@contextlib.contextmanager
def sync_debug_errors(model):
    """Every host sync raises inside the block, except in prompt encoding (host tokenization)."""
    encode = model.encode

    def encode_allowing_syncs(prompts):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return encode(prompts)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    model.encode = encode_allowing_syncs
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)
        model.encode = encode


def same(a, b, exact: bool):
    for name in ("latents", "log_probs", "trajectory_ids"):
        x, y = getattr(a, name), getattr(b, name)
        if exact or not x.is_floating_point():
            assert torch.equal(x, y), name
        else:
            torch.testing.assert_close(x, y, **BF16_TOLERANCE)


@pytest.mark.parametrize("proxy", ["latent", "random", "probe", "reward"])
def test_replay_equals_eager_bitwise_in_fp32(proxy):
    model = tiny_model()
    make = {"latent": lambda: LatentProxy(grid=2), "random": RandomProxy, "probe": lambda: ProbeProxy(grid=2, min_samples=4),
            "reward": lambda: RewardProxy(lambda images, prompts: images.mean((1, 2, 3)))}[proxy]
    eager, graphed = ExpandPruneSampler(model, SCHEDULE, make()), GraphSampler(model, SCHEDULE, make())
    for seed in (1, 2, 3):  # one capture serves every seed
        same(graphed.sample(PROMPTS, seed), eager.sample(PROMPTS, seed), exact=True)
    assert graphed.captures == 1 and len(graphed.graphs) == 3


def test_replay_equals_eager_in_bf16_within_tolerance():
    model = tiny_model(torch.bfloat16)
    eager, graphed = ExpandPruneSampler(model, SCHEDULE, LatentProxy(grid=2)), GraphSampler(model, SCHEDULE, LatentProxy(grid=2))
    for seed in (1, 2):
        a, b = graphed.sample(PROMPTS, seed), eager.sample(PROMPTS, seed)
        assert torch.equal(a.latents[:, 0], b.latents[:, 0])  # same keyed x_0
        same(a, b, exact=False)


@pytest.mark.parametrize("proxy", ["latent", "random"])
def test_a_sampling_call_makes_no_host_sync(proxy):
    model = tiny_model()
    make = {"latent": lambda: LatentProxy(grid=2), "random": RandomProxy}[proxy]
    for sampler in (ExpandPruneSampler(model, SCHEDULE, make()), GraphSampler(model, SCHEDULE, make())):
        sampler.sample(PROMPTS, seed=0)  # the graph sampler captures here (capture synchronises)
        with sync_debug_errors(model):
            rollout = sampler.sample(PROMPTS, seed=1)
        assert rollout.latents.shape[0] == len(PROMPTS) * SCHEDULE.final_group_size


def test_all_segments_share_one_pool():
    model = build_model(load_config(None, check_paths=False).model, device="cuda")  # the shipped shapes model
    sampler = GraphSampler(model, PruneSchedule.from_string("48:5=24,7=12@10"), LatentProxy())
    sampler.sample(["a red circle"] * 4, seed=0)
    largest, total = sampler.capture_memory[0], sampler.capture_memory[-1]
    assert total < 1.1 * largest, sampler.capture_memory


def test_recapture_only_on_a_shape_change():
    model = tiny_model()
    sampler = GraphSampler(model, SCHEDULE, LatentProxy(grid=2))
    a = sampler.sample(PROMPTS, seed=1)
    b = sampler.sample(PROMPTS, seed=2)
    assert sampler.captures == 1 and not torch.equal(a.final_latents, b.final_latents)
    c = sampler.sample(PROMPTS[:2], seed=1)
    assert sampler.captures == 2 and c.latents.shape[0] == 2 * SCHEDULE.final_group_size
    torch.testing.assert_close(c.latents, a.latents[: c.latents.shape[0]])  # the first 2 prompts' survivors (other batch: rounding)
