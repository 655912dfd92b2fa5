"""StepPruner in a Flow-GRPO-style sampler loop written here (per-step flow SDE step with log-probs,
a stored latent history and log-prob list, CFG-stacked [negative; positive] embeddings with guidance,
num_images_per_prompt copies in copy-major order with explicit group ids, keyed noise) on the tiny SD3
pipeline: for every proxy the survivors' latents, histories and log-probs are bitwise the same
rows of the unpruned loop; group counts, trajectory ids, the finiteness check, keyed generators."""
import contextlib

import pytest
import torch

from progrpo_fast.integrations import StepPruner, keyed_generators, keyed_noise, keyed_seed
from progrpo_fast.models.sd3 import SD3Denoiser
from progrpo_fast.models.tiny import tiny_sd3_pipeline
from progrpo_fast.sampling import PruneSchedule, flow_sde_step
from progrpo_fast.sampling.proxies import HiddenProbeProxy, ProbeProxy, build_proxy

PROMPTS = ["a red circle", "two blue squares"]
SCHEDULE = "8:2=4,3=2@5"
COPIES, STEPS, GUIDANCE, SEED = 8, 5, 4.5, 3


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd3_pipeline()


@pytest.fixture(scope="module")
def unpruned(pipe):
    return flow_grpo_loop(pipe)


def flow_grpo_loop(pipe, pruner=None, nan_at=None, seed=SEED):
    """Flow-GRPO's conventions: row = copy * P + prompt; embeddings [negative; positive] (2B rows);
    the network sees [x; x] and guidance mixes the halves; latents and log-probs kept in lists.
    The network runs one [negative_b; positive_b] pair per call, so every row's output is independent
    of the batch size (CPU GEMMs may otherwise round differently at another batch size)."""
    model = SD3Denoiser(pipe, guidance_scale=GUIDANCE, max_sequence_length=4, resolution=16)
    schedule = model.schedule(STEPS)
    sigmas, timesteps = schedule["sigmas"], schedule["timesteps"]
    prompts = len(PROMPTS)
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=PROMPTS, prompt_2=None, prompt_3=None, do_classifier_free_guidance=True, negative_prompt=[""] * prompts,
            max_sequence_length=4)
    prompt_embeds = torch.cat([negative.repeat(COPIES, 1, 1), embeds.repeat(COPIES, 1, 1)])
    pooled_embeds = torch.cat([negative_pooled.repeat(COPIES, 1), pooled.repeat(COPIES, 1)])
    rows = prompts * COPIES
    group_ids = torch.arange(prompts).repeat(COPIES)
    trajectory_ids = torch.arange(rows)
    latents = keyed_noise(seed, trajectory_ids, 0, (rows, *model.latent_shape()))
    all_latents, all_log_probs = [latents], []
    hidden = isinstance(getattr(pruner, "proxy", None), HiddenProbeProxy)
    for i in range(STEPS):
        b = latents.shape[0]
        with torch.no_grad(), (pruner.proxy.one_pass() if hidden else contextlib.nullcontext()):
            out = torch.cat([pipe.transformer(hidden_states=torch.cat([latents[r : r + 1]] * 2), timestep=timesteps[i].expand(2),
                                              encoder_hidden_states=prompt_embeds[[r, b + r]], pooled_projections=pooled_embeds[[r, b + r]],
                                              return_dict=False)[0] for r in range(b)])
        uncond, cond = out[0::2], out[1::2]
        velocity = uncond + GUIDANCE * (cond - uncond)
        if pruner is not None:
            step = pruner.step(i, latents, velocity=velocity, sigma=sigmas[i], history=all_latents, log_probs=all_log_probs,
                               cond=[prompt_embeds, pooled_embeds], cfg_stacked=True, group_ids=group_ids)
            latents, velocity, all_latents, all_log_probs = step.latents, step.velocity, step.history, step.log_probs
            (prompt_embeds, pooled_embeds), group_ids, trajectory_ids = step.cond, step.group_ids, step.trajectory_ids
        noise = keyed_noise(seed, trajectory_ids, i + 1, latents.shape)
        result = flow_sde_step(latents, velocity, sigmas[i], sigmas[i + 1], eta=0.7, eps=noise)
        latents = result.x_next
        if nan_at == i:
            latents = latents.clone()
            latents[1] = float("nan")
        all_latents.append(latents)
        all_log_probs.append(result.log_prob)
    return latents, all_latents, all_log_probs, trajectory_ids, group_ids


def proxies(pipe):
    model = SD3Denoiser(pipe, guidance_scale=GUIDANCE, max_sequence_length=4, resolution=16)
    brightness = lambda images, prompts: images.mean((1, 2, 3)) + 0.01 * torch.tensor([len(p) for p in prompts])  # noqa: E731
    return {
        "latent": (build_proxy("latent", grid=2), {}),
        "probe": (ProbeProxy(grid=2, min_samples=4), {}),
        "hidden": (HiddenProbeProxy(pipe.transformer, min_samples=4), {}),
        "random": (build_proxy("random"), {}),
        "reward": (build_proxy("reward", reward=brightness), {"decode": model.decode, "prompts": PROMPTS}),
    }


def check_survivors(pruned, unpruned, schedule):
    latents, history, log_probs, ids, groups = pruned
    full_latents, full_history, full_log_probs, full_ids, _ = unpruned
    k = schedule.final_group_size
    assert latents.shape[0] == len(PROMPTS) * k
    assert torch.equal(ids, ids.sort().values) and torch.equal(groups, ids % len(PROMPTS))  # copy-major: id = copy * P + prompt
    assert torch.bincount(groups).tolist() == [k] * len(PROMPTS)
    assert torch.equal(latents, full_latents[ids]) and latents is history[-1]
    assert len(history) == STEPS + 1 and len(log_probs) == STEPS
    for mine, theirs in zip(history, full_history):
        assert torch.equal(mine, theirs[ids])
    for mine, theirs in zip(log_probs, full_log_probs):
        assert torch.equal(mine, theirs[ids])


@pytest.mark.parametrize("name", ["latent", "probe", "hidden", "random", "reward"])
def test_survivors_are_bitwise_the_unpruned_rows(pipe, unpruned, name):
    proxy, kwargs = proxies(pipe)[name]
    schedule = PruneSchedule.from_string(SCHEDULE)
    pruner = StepPruner(schedule, proxy, seed=SEED, **kwargs)
    try:
        pruned = flow_grpo_loop(pipe, pruner)
        pruner.check_finite()
        check_survivors(pruned, unpruned, schedule)
        assert [r.step for r in pruner.prune_log] == [2, 3] and [r.rows_before for r in pruner.prune_log] == [16, 8]
        assert torch.equal(pruner.trajectory_ids, pruned[3])
        assert set(pruner.prune_log[-1].kept_ids.flatten().tolist()) == set(pruned[3].tolist())
        if name in ("probe", "hidden"):  # learn from this rollout, then prune a second one with the fitted probe
            pruner.observe(pruned[0].mean((1, 2, 3)))
            fitted = proxy.weights if name == "hidden" else {s: p.weights for s, p in proxy.probes.items() if p.weights is not None}
            assert set(fitted) == {2, 3}
            again = flow_grpo_loop(pipe, pruner, seed=SEED + 1)
            pruner.check_finite()
            check_survivors(again, flow_grpo_loop(pipe, seed=SEED + 1), schedule)
    finally:
        if name == "hidden":
            proxy.hook.remove()


def test_random_proxy_keeps_what_the_engine_keeps_with_consecutive_groups(pipe):
    """With the engine's layout (groups consecutive, ids p * G + j) the random proxy's choice is the engine's."""
    from progrpo_fast.sampling.sampler import ExpandPruneSampler

    schedule = PruneSchedule.from_string(SCHEDULE)
    model = SD3Denoiser(pipe, guidance_scale=GUIDANCE, max_sequence_length=4, resolution=16)
    ours = ExpandPruneSampler(model, schedule, build_proxy("random")).sample(PROMPTS, seed=SEED)
    pruner = StepPruner(schedule, build_proxy("random"), seed=SEED)
    x = torch.zeros(16, 4, 2, 2)
    pruner.step(0, x)
    kept = pruner.step(1, x, x0_hat=x)
    small = kept.latents
    assert pruner.step(2, small, x0_hat=small).pruned
    assert torch.equal(pruner.trajectory_ids, ours.trajectory_ids)


def test_a_nan_makes_check_finite_name_the_step(pipe):
    pruner = StepPruner(PruneSchedule.from_string(SCHEDULE), build_proxy("latent", grid=2))
    flow_grpo_loop(pipe, pruner, nan_at=0)  # x_1 of row 1 is NaN: the checkpoint before step 2 sees it
    with pytest.raises(ValueError, match=r"before step 2 \(pruner.step\(1, \.\.\.\)\)"):
        pruner.check_finite()
    pruner.check_finite()  # read once: the flags are gone


def test_non_checkpoint_steps_return_the_inputs_and_misuse_is_refused():
    pruner = StepPruner(PruneSchedule.from_string("4:2=2@4"))
    x = torch.randn(8, 4, 4, 4)
    history, cond = [x], {"e": torch.randn(16, 3)}
    out = pruner.step(0, x, history=history, cond=cond, cfg_stacked=True)
    assert not out.pruned and out.latents is x and out.history is history and out.cond is cond
    assert torch.equal(out.trajectory_ids, torch.arange(8))
    with pytest.raises(ValueError, match="pass x0_hat= .* or velocity= and sigma="):
        pruner.step(1, x)
    out = pruner.step(1, x, velocity=torch.zeros_like(x), sigma=0.5, history=history, cond=cond, cfg_stacked=True)
    assert out.pruned and out.latents is out.history[0] and out.cond["e"].shape == (8, 3)
    assert torch.equal(out.cond["e"], torch.cat([cond["e"][out.kept], cond["e"][8 + out.kept]]))
    with pytest.raises(ValueError, match="step 2 has 8 rows"):
        pruner.step(2, x)
    with pytest.raises(ValueError, match="before pruner.step\\(0"):
        StepPruner(PruneSchedule.from_string("4:2=2@4")).step(1, x)
    with pytest.raises(ValueError, match="group_size=3 differs"):
        StepPruner(PruneSchedule.from_string("4:2=2@4"), group_size=3)


def test_keyed_generators_depend_only_on_seed_id_and_step():
    a = keyed_generators(7, torch.tensor([5, 9, 2]), 3)
    b = keyed_generators(7, [2, 5], 3)
    draw = lambda gens: torch.stack([torch.randn(6, generator=g) for g in gens])  # noqa: E731
    x, y = draw(a), draw(b)
    assert torch.equal(x[0], y[1]) and torch.equal(x[2], y[0])
    assert not torch.equal(draw(keyed_generators(7, [5], 4))[0], x[0]) and not torch.equal(draw(keyed_generators(8, [5], 3))[0], x[0])
    assert 0 <= keyed_seed(2**62, 2**40, 2**31) < 2**63
