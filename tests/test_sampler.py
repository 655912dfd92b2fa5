"""The expand-and-prune sampler on a small row-independent denoiser (any diffusers adapter
plugs into the same code; see test_adapters.py)."""
import pytest
import torch

from progrpo_fast.sampling import PruneSchedule
from progrpo_fast.sampling.proxies import PROXIES, ProbeProxy, RewardProxy, spearman
from progrpo_fast.sampling.sampler import ExpandPruneSampler
from progrpo_fast.sampling.sde import keyed_noise


class ToyFlow(torch.nn.Module):
    """A flow 'model' whose velocity pulls each latent towards a prompt-dependent target;
    row-independent, so pruning cannot change a survivor's trajectory."""

    kind = "flow"
    dtype = torch.float32

    def __init__(self, channels=3, size=8, guidance_scale=2.0):
        super().__init__()
        self.device = torch.device("cpu")
        self.size, self.channels, self.guidance_scale = size, channels, guidance_scale
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        torch.nn.init.normal_(self.conv.weight, std=0.1)

    def encode(self, prompts):
        target = torch.stack([torch.full((self.channels,), float(len(p) % 5) - 2.0) for p in prompts])
        return {"target": target, "negative_target": torch.zeros_like(target)}

    def latent_shape(self):
        return (self.channels, self.size, self.size)

    def schedule(self, num_steps):
        sigmas = torch.linspace(1.0, 0.0, num_steps + 1)
        return {"sigmas": sigmas, "timesteps": sigmas[:-1] * 1000}

    def predict(self, latents, timestep, cond):
        def v(target):
            x0 = target[:, :, None, None] + 0.1 * self.conv(latents)
            return (latents - x0) / (timestep / 1000).clamp_min(1e-3)

        uncond = v(cond["negative_target"])
        return uncond + self.guidance_scale * (v(cond["target"]) - uncond)

    def decode(self, latents):
        return torch.sigmoid(latents[:, :3])


PROMPTS = ["a", "bb", "ccc"]


def sampler(schedule, proxy=None, method="sde"):
    torch.manual_seed(0)
    return ExpandPruneSampler(ToyFlow(), PruneSchedule.from_string(schedule), proxy, method=method)


def test_no_checkpoints_is_plain_grpo_sampling():
    rollout = sampler("6@5").sample(PROMPTS, seed=3)
    assert rollout.latents.shape == (18, 6, 3, 8, 8) and rollout.log_probs.shape == (18, 5)
    assert torch.equal(rollout.trajectory_ids, torch.arange(18))
    assert rollout.prune_log == [] and rollout.trajectory_steps == 18 * 5
    assert torch.isfinite(rollout.log_probs).all()


@pytest.mark.parametrize("proxy", ["latent", "random", "probe", "reward"])
def test_survivors_follow_their_unpruned_trajectories(proxy):
    full = sampler("8@6").sample(PROMPTS, seed=5)
    make = {"reward": lambda: RewardProxy(lambda images, prompts: images.mean((1, 2, 3)))}.get(proxy, PROXIES[proxy])
    pruned = sampler("8:2=5,4=3@6", make()).sample(PROMPTS, seed=5)
    assert pruned.latents.shape[0] == 9 and pruned.group_size == 3
    ids = pruned.trajectory_ids
    assert torch.equal(ids // 8, torch.arange(3).repeat_interleave(3)), "groups stay consecutive per prompt"
    assert torch.equal(pruned.prompt_index, ids // 8)
    assert torch.equal(pruned.latents[:, 0], full.latents[ids, 0]), "initial noise keyed by trajectory id"
    torch.testing.assert_close(pruned.latents, full.latents[ids], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pruned.log_probs, full.log_probs[ids], rtol=1e-5, atol=1e-5)
    assert torch.equal(pruned.cond["target"], full.cond["target"][ids])
    assert pruned.trajectory_steps == 3 * (8 * 2 + 5 * 2 + 3 * 2)
    first, second = pruned.prune_log
    assert (first.step, first.rows_before, second.step, second.rows_before) == (2, 24, 4, 15)
    assert first.kept_ids.shape == (3, 5) and torch.equal(second.kept_ids.flatten(), ids)
    assert set(second.kept_ids.flatten().tolist()) <= set(first.kept_ids.flatten().tolist())


def test_latent_proxy_keeps_the_higher_variance_subset():
    rollout = sampler("8:3=4@6").sample(PROMPTS, seed=2)
    record = rollout.prune_log[0]
    assert (record.variance_kept >= record.variance_all).all()


def test_sampling_is_deterministic_and_seed_dependent():
    a = sampler("8:2=4@5").sample(PROMPTS, seed=7)
    b = sampler("8:2=4@5").sample(PROMPTS, seed=7)
    c = sampler("8:2=4@5").sample(PROMPTS, seed=8)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.trajectory_ids, b.trajectory_ids)
    assert not torch.equal(a.latents, c.latents)


@pytest.mark.parametrize("method", ["sde", "cps"])
def test_recomputed_log_probs_equal_the_recorded_ones(method):
    smp = sampler("6:2=3@5", method=method)
    rollout = smp.sample(PROMPTS, seed=4)
    for step in range(5):
        x = rollout.latents[:, step]
        out = smp.stepper(step, x, smp.model.predict(x, smp.stepper.timesteps[step], rollout.cond), x_next=rollout.latents[:, step + 1])
        torch.testing.assert_close(out.log_prob, rollout.log_probs[:, step], rtol=0, atol=1e-5)


def test_ode_is_deterministic_in_the_noise_after_the_start():
    rollout = sampler("4@4", method="ode").sample(PROMPTS, seed=0)
    assert (rollout.log_probs == 0).all()


@pytest.mark.parametrize("method", ["sde", "cps"])
def test_noise_window_adds_noise_only_at_its_steps(method):
    """Steps outside noise_steps are the eta = 0 step (no log-prob), the window's steps draw the
    same keyed noise as the all-noise sampler, and the final samples still differ per trajectory."""
    torch.manual_seed(0)
    model = ToyFlow()
    window = ExpandPruneSampler(model, PruneSchedule.naive(4, 5), method=method, noise_steps=[1, 2])
    full = ExpandPruneSampler(model, PruneSchedule.naive(4, 5), method=method)
    ode = ExpandPruneSampler(model, PruneSchedule.naive(4, 5), method="ode")
    rollout, reference, deterministic = (s.sample(PROMPTS, seed=3) for s in (window, full, ode))
    assert (rollout.log_probs[:, [0, 3, 4]] == 0).all() and (rollout.log_probs[:, [1, 2]] != 0).all()
    torch.testing.assert_close(rollout.latents[:, 1], deterministic.latents[:, 1])  # step 0: the ODE step
    for step in (1, 2):  # the window's steps draw the noise keyed by (seed, trajectory id, step)
        x = rollout.latents[:, step]
        out = window.stepper(step, x, model.predict(x, window.stepper.timesteps[step], rollout.cond), x_next=rollout.latents[:, step + 1])
        eps = keyed_noise(3, rollout.trajectory_ids, step + 1, x.shape)
        torch.testing.assert_close(rollout.latents[:, step + 1], out.mean + out.std * eps, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.log_prob, rollout.log_probs[:, step], rtol=0, atol=1e-5)
    assert not torch.allclose(rollout.final_latents, deterministic.final_latents)
    assert not torch.allclose(rollout.final_latents, reference.final_latents)
    assert [window.stepper.deterministic(t) for t in range(5)] == [True, False, False, True, True]
    with pytest.raises(ValueError, match=r"noise_steps must be a non-empty list of steps in \[0, 5\)"):
        ExpandPruneSampler(model, PruneSchedule.naive(4, 5), noise_steps=[5])


def test_probe_fits_and_reports_spearman():
    probe = ProbeProxy(grid=2, min_samples=8)
    smp = sampler("8:2=4@5", probe)
    for seed in range(3):
        rollout = smp.sample(PROMPTS, seed=seed)
        final = rollout.final_latents.mean((1, 2, 3))
        report = probe.observe(rollout, final)
    assert probe.probes[2].weights is not None and 2 in report and -1 <= report[2] <= 1


def test_spearman():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)


def test_bad_prompts():
    with pytest.raises(ValueError, match="prompts must be"):
        sampler("4@4").sample([], seed=0)
