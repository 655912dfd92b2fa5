"""Sampler step math against independent formulas, torch.distributions, and diffusers' own
schedulers; keyed noise (Philox known answers, row independence, distribution)."""
import math

import pytest
import torch

try:
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
except ImportError:  # the scheduler comparisons skip; everything else runs
    DDIMScheduler = FlowMatchEulerDiscreteScheduler = None

from progrpo_fast.models.schedules import ddim_alphas, flow_sigmas
from progrpo_fast.sampling import (
    ddim_step,
    flow_cps_step,
    flow_sde_step,
    gaussian_log_prob,
    keyed_noise,
)
from progrpo_fast.sampling.sde import philox4x32

SHAPE = (6, 4, 8, 8)
needs_diffusers = pytest.mark.skipif(DDIMScheduler is None, reason="needs diffusers")


def sd14_ddim(**overrides) -> DDIMScheduler:
    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                  steps_offset=1)
    config.update(overrides)
    return DDIMScheduler(**config)


def fake_velocity(x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic stand-in for the model: smooth in x, depends on the timestep."""
    return torch.tanh(x) * (float(t) / 1000) - 0.3 * x


def normal_log_prob(x_next, mean, std) -> torch.Tensor:
    """Independent reference: torch.distributions.Normal in float64, averaged over dims 1..."""
    density = torch.distributions.Normal(mean.double(), std.double().expand_as(mean)).log_prob(x_next.double())
    return density.mean(dim=tuple(range(1, density.dim())))


def random_state(seed=0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def all_steps(eta):
    """(name, step(x, model_output, eps=..., x_next=...)) with a mid-schedule setting for each sampler."""
    return [
        ("sde", lambda x, out, **kw: flow_sde_step(x, out, 0.6, 0.45, eta=eta, **kw)),
        ("sde_first", lambda x, out, **kw: flow_sde_step(x, out, 1.0, 0.9, eta=eta, **kw)),
        ("cps", lambda x, out, **kw: flow_cps_step(x, out, 0.6, 0.45, eta=eta, **kw)),
        ("ddim", lambda x, out, **kw: ddim_step(x, out, 0.3, 0.5, eta=eta, **kw)),
    ]


# ----------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("name,step", all_steps(eta=0.7))
def test_log_prob_matches_torch_normal(name, step):
    x, out, eps = random_state()
    sampled = step(x, out, eps=eps)
    torch.testing.assert_close(sampled.log_prob.double(), normal_log_prob(sampled.x_next, sampled.mean, sampled.std), rtol=1e-5, atol=1e-5)
    # scoring a different recorded transition (off the mean by more than the noise)
    recorded = sampled.mean + 2.5 * sampled.std * torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    scored = step(x, out, x_next=recorded)
    torch.testing.assert_close(scored.log_prob.double(), normal_log_prob(recorded, scored.mean, scored.std), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,step", all_steps(eta=0.7))
def test_recorded_transition_gives_the_sampled_log_prob(name, step):
    """The trainer recomputes from the recorded x_next: identical outputs (ratio = 1)."""
    x, out, eps = random_state()
    sampled = step(x, out, eps=eps)
    scored = step(x, out, x_next=sampled.x_next)
    for field in sampled._fields:
        assert torch.equal(getattr(sampled, field), getattr(scored, field)), field


def test_gaussian_log_prob_zero_std_rows_are_zero():
    mean = torch.zeros(3, 5)
    std = torch.tensor([0.0, 0.5, 0.0]).view(3, 1)
    x_next = torch.ones(3, 5)
    log_prob = gaussian_log_prob(x_next, mean, std)
    assert log_prob[0] == 0 and log_prob[2] == 0
    torch.testing.assert_close(log_prob[1].double(), normal_log_prob(x_next[1:2], mean[1:2], std[1:2])[0])


def test_log_prob_gradient_reaches_model_output_not_x_next():
    x, out, eps = random_state()
    out.requires_grad_(True)
    result = flow_sde_step(x, out, 0.6, 0.45, eps=eps)
    result.log_prob.sum().backward()
    # x_next = mean + std eps depends on out, but is detached inside the log-prob: d/d out of
    # log N(x_next; mean, std) with x_next held fixed at mean + std eps is (eps / std) * d mean / d out.
    dt, s2 = 0.45 - 0.6, (0.7**2) * 0.6 / 0.4
    dmean_dout = dt * (1 + s2 / (2 * 0.6) * 0.4)
    expected = eps / result.std * dmean_dout / eps[0].numel()
    torch.testing.assert_close(out.grad, expected, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- formulas


def test_flow_sde_matches_flow_grpo_form_in_float64():
    """Flow-GRPO writes mean = x (1 + s^2 dt / (2 sigma)) + v (1 + s^2 (1 - sigma) / (2 sigma)) dt with
    s = eta sqrt(sigma / (1 - sigma)), and sigma = 1 replaced by sigmas[1] in the denominator."""
    x, v, eps = (t.double() for t in random_state())
    eta = 0.7
    for sigma, sigma_next in [(1.0, 0.95), (0.6, 0.45), (0.1, 0.0)]:
        denominator = 1 - (sigma_next if sigma == 1 else sigma)
        s = eta * math.sqrt(sigma / denominator)
        dt = sigma_next - sigma
        mean = x * (1 + s**2 / (2 * sigma) * dt) + v * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
        std = s * math.sqrt(-dt)
        got = flow_sde_step(x, v, sigma, sigma_next, eta=eta, eps=eps)
        torch.testing.assert_close(got.mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.std.double(), torch.full((SHAPE[0], 1, 1, 1), std, dtype=torch.float64))
        torch.testing.assert_close(got.x_next.double(), mean + std * eps, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.x0_hat.double(), x - sigma * v, rtol=1e-6, atol=1e-6)


def test_per_row_schedule_values_match_scalar_calls():
    x, v, eps = random_state()
    sigma = torch.tensor([1.0, 0.8, 0.6, 0.6, 0.3, 0.1])
    sigma_next = torch.tensor([0.9, 0.7, 0.45, 0.45, 0.2, 0.0])
    batched = flow_sde_step(x, v, sigma, sigma_next, eps=eps)
    for row in range(SHAPE[0]):
        alone = flow_sde_step(x[row : row + 1], v[row : row + 1], float(sigma[row]), float(sigma_next[row]), eps=eps[row : row + 1])
        torch.testing.assert_close(batched.x_next[row : row + 1], alone.x_next)
        torch.testing.assert_close(batched.log_prob[row : row + 1], alone.log_prob)


@pytest.mark.parametrize("eta", [0.3, 0.7, 1.0])
def test_cps_preserves_marginal_coefficients(eta):
    """With the true velocity v = n - x0 at x = (1 - sigma) x0 + sigma n, CPS gives
    x_next = (1 - sigma') x0 + sigma' n' where n' = (sqrt(sigma'^2 - std^2) n + std eps) / sigma'
    is again standard normal, with correlation cos(eta pi / 2) to n."""
    g = torch.Generator().manual_seed(1)
    shape = (4, 64, 32, 32)
    x0, n, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    sigma, sigma_next = 0.7, 0.5
    x = (1 - sigma) * x0 + sigma * n
    result = flow_cps_step(x, n - x0, sigma, sigma_next, eta=eta, eps=eps)
    torch.testing.assert_close(result.x0_hat, x0, rtol=1e-5, atol=1e-5)
    assert torch.allclose(result.std, torch.tensor(sigma_next * math.sin(eta * math.pi / 2)))
    new_noise = (result.x_next - (1 - sigma_next) * x0) / sigma_next
    assert abs(new_noise.mean().item()) < 0.01
    assert abs(new_noise.var().item() - 1) < 0.01
    correlation = (new_noise * n).mean().item()
    assert abs(correlation - math.cos(eta * math.pi / 2)) < 0.01


@pytest.mark.parametrize("name,step", all_steps(eta=0.7))
def test_sampled_x_next_is_distributed_as_mean_plus_std_noise(name, step):
    """x_next from keyed noise: (x_next - mean) / std is standard normal (moments, tail masses)."""
    shape = (8, 16, 32, 32)
    x, out, _ = random_state(2, shape)
    noise = keyed_noise(1234, torch.arange(shape[0]), 0, shape)
    result = step(x, out, eps=noise)
    z = ((result.x_next - result.mean) / result.std).double()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    for k, mass in [(1, 0.682689), (2, 0.954500), (3, 0.997300)]:
        assert abs((z.abs() < k).double().mean().item() - mass) < 5 * math.sqrt(mass * (1 - mass) / n)


def test_ddim_std_is_ddpo_variance():
    a_t, a_prev, eta = 0.3, 0.5, 0.8
    x, out, eps = random_state()
    result = ddim_step(x, out, a_t, a_prev, eta=eta, eps=eps)
    std = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    torch.testing.assert_close(result.std, torch.full((SHAPE[0], 1, 1, 1), std))
    x0_hat = (x - math.sqrt(1 - a_t) * out) / math.sqrt(a_t)
    mean = math.sqrt(a_prev) * x0_hat + math.sqrt(1 - a_prev - std**2) * out
    torch.testing.assert_close(result.mean, mean)
    torch.testing.assert_close(result.x_next, mean + std * eps)


# ----------------------------------------------------------------------------- against diffusers


@needs_diffusers
@pytest.mark.parametrize("step_fn", [flow_sde_step, flow_cps_step], ids=["sde", "cps"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_eta0_matches_diffusers_euler_over_full_schedule(step_fn, shift):
    num_steps = 10
    ours = FlowMatchEulerDiscreteScheduler(shift=shift)
    sigmas = flow_sigmas(ours, num_steps)
    reference = FlowMatchEulerDiscreteScheduler(shift=shift)
    reference.set_timesteps(num_steps)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (num_steps + 1,)
    assert sigmas[0] == 1 and sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    x_ref = x.clone()
    for i, t in enumerate(reference.timesteps):
        assert torch.isclose(ours.timesteps[i], t)
        result = step_fn(x, fake_velocity(x, t), sigmas[i], sigmas[i + 1], eta=0.0)
        x_ref = reference.step(fake_velocity(x_ref, t), t, x_ref).prev_sample
        assert torch.equal(result.std, torch.zeros_like(result.std)) and torch.equal(result.log_prob, torch.zeros(SHAPE[0]))
        x = result.x_next
    torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)


@needs_diffusers
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers_over_full_schedule(set_alpha_to_one, eta):
    num_steps = 20
    ours, reference = sd14_ddim(set_alpha_to_one=set_alpha_to_one), sd14_ddim(set_alpha_to_one=set_alpha_to_one)
    a_t, a_prev = ddim_alphas(ours, num_steps)
    reference.set_timesteps(num_steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    x_ref = x.clone()
    for i, t in enumerate(reference.timesteps):
        eps = keyed_noise(5, torch.arange(SHAPE[0]), i, SHAPE)
        result = ddim_step(x, fake_velocity(x, t), a_t[i], a_prev[i], eta=eta, eps=eps)
        variance_noise = eps if eta > 0 else None
        x_ref = reference.step(fake_velocity(x_ref, t), t, x_ref, eta=eta, variance_noise=variance_noise).prev_sample
        torch.testing.assert_close(result.x_next, x_ref, rtol=1e-5, atol=1e-5)
        x = result.x_next
    # the last step lands on final_alpha_cumprod
    assert a_prev[-1] == (1.0 if set_alpha_to_one else ours.alphas_cumprod[0])


@needs_diffusers
def test_scheduler_helpers_reject_unsupported_configs():
    with pytest.raises(ValueError, match="prediction_type"):
        ddim_alphas(sd14_ddim(prediction_type="v_prediction"), 10)
    with pytest.raises(ValueError, match="clip_sample"):
        ddim_alphas(sd14_ddim(clip_sample=True), 10)
    with pytest.raises(ValueError, match="num_steps"):
        flow_sigmas(FlowMatchEulerDiscreteScheduler(), 0)
    with pytest.raises(ValueError, match="stochastic_sampling"):
        flow_sigmas(FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), 10)


# ----------------------------------------------------------------------------- dtypes, checks


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,step", all_steps(eta=0.7))
def test_half_inputs_give_fp32_outputs_equal_to_upcast_inputs(dtype, name, step):
    x, out, eps = (t.to(dtype) for t in random_state())
    result = step(x, out, eps=eps)
    upcast = step(x.float(), out.float(), eps=eps.float())
    for field in result._fields:
        value = getattr(result, field)
        assert value.dtype == torch.float32, field
        assert torch.equal(value, getattr(upcast, field)), field


def test_step_argument_errors():
    x, v, eps = random_state()
    with pytest.raises(ValueError, match="eps"):
        flow_sde_step(x, v, 0.6, 0.45)
    with pytest.raises(ValueError, match="v must have"):
        flow_sde_step(x, v[:2], 0.6, 0.45, eps=eps)
    with pytest.raises(ValueError, match="sigma"):
        flow_sde_step(x, v, torch.ones(3), 0.45, eps=eps)
    with pytest.raises(ValueError, match="x_next"):
        flow_cps_step(x, v, 0.6, 0.45, x_next=x[:, :2])
    # eta = 0 is deterministic and needs no noise
    torch.testing.assert_close(flow_sde_step(x, v, 0.6, 0.45, eta=0.0).x_next, x + (0.45 - 0.6) * v)


def test_steps_are_deterministic_on_cpu():
    x, v, eps = random_state()
    first = flow_sde_step(x, v, 0.6, 0.45, eps=eps)
    second = flow_sde_step(x.clone(), v.clone(), 0.6, 0.45, eps=eps.clone())
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# ----------------------------------------------------------------------------- keyed noise


def test_philox_known_answers():
    """Random123's philox4x32_10 known-answer vectors."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, expected in cases:
        words = philox4x32(tuple(torch.tensor([c]) for c in counter), key)
        assert tuple(int(w) for w in words) == expected


def test_keyed_noise_rows_independent_of_other_rows_bitwise():
    shape_row = (4, 9, 7)  # 252 elements, not a multiple of 4 per row
    alone = keyed_noise(42, torch.tensor([3, 7, 11]), 5, (3, *shape_row))
    mixed_ids = torch.tensor([11, 0, 3, 2**40 + 3, 7])
    mixed = keyed_noise(42, mixed_ids, 5, (5, *shape_row))
    assert torch.equal(mixed[[2, 4, 0]], alone)
    # element n is the same whatever the row's size
    longer = keyed_noise(42, torch.tensor([3]), 5, (1, 300))
    assert torch.equal(longer[0, :252], alone[0].flatten())


def test_keyed_noise_is_independent_of_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = keyed_noise(3, torch.arange(8), 2, (8, 4, 32, 32))
        torch.set_num_threads(max(2, threads))
        multi = keyed_noise(3, torch.arange(8), 2, (8, 4, 32, 32))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, multi)


def test_keyed_noise_depends_on_every_key_part():
    ids = torch.arange(4)
    base = keyed_noise(1, ids, 0, (4, 256))
    assert torch.equal(base, keyed_noise(1, ids, 0, (4, 256)))
    for other in [keyed_noise(2, ids, 0, (4, 256)), keyed_noise(1, ids, 1, (4, 256)), keyed_noise(1, ids + 4, 0, (4, 256)),
                  keyed_noise(1, ids + 2**32, 0, (4, 256))]:
        assert not torch.isclose(base, other).any()
    # rows with different ids are not copies of one another
    assert not torch.isclose(base[0], base[1]).any()


def test_keyed_noise_is_standard_normal_and_uncorrelated():
    z = keyed_noise(7, torch.arange(16), 3, (16, 16384)).double()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs((z**4).mean().item() - 3) < 5 * math.sqrt(96 / n)
    # lag-1..4 correlations inside a row (covers the Box-Muller pairs) and across rows
    for lag in range(1, 5):
        assert abs((z[:, lag:] * z[:, :-lag]).mean().item()) < 5 / math.sqrt(n)
    assert abs((z[1:] * z[:-1]).mean().item()) < 5 / math.sqrt(n)


def test_keyed_noise_transcendentals_match_torch():
    from progrpo_fast.sampling.sde import _cos_sin_quarter, _log_unit

    u = torch.linspace(2**-24, 1, 100001)
    torch.testing.assert_close(_log_unit(u), torch.log(u), rtol=3e-7, atol=1e-7)
    phi = torch.linspace(0, math.pi / 2, 100001)
    cos, sin = _cos_sin_quarter(phi)
    torch.testing.assert_close(cos, torch.cos(phi), rtol=0, atol=3e-7)
    torch.testing.assert_close(sin, torch.sin(phi), rtol=0, atol=3e-7)


def test_keyed_noise_argument_errors():
    with pytest.raises(ValueError, match="traj_ids"):
        keyed_noise(0, torch.arange(3, dtype=torch.int32), 0, (3, 4))
    with pytest.raises(ValueError, match="shape"):
        keyed_noise(0, torch.arange(3), 0, (4, 4))
    with pytest.raises(ValueError, match="seed"):
        keyed_noise(-1, torch.arange(3), 0, (3, 4))
    with pytest.raises(ValueError, match="step"):
        keyed_noise(0, torch.arange(3), -1, (3, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_keyed_noise_and_steps_identical_on_cpu_and_cuda():
    ids = torch.tensor([0, 5, 2**33 + 1])
    cpu = keyed_noise(99, ids, 4, (3, 4, 16, 16))
    cuda = keyed_noise(99, ids.cuda(), 4, (3, 4, 16, 16))
    assert torch.equal(cpu, cuda.cpu())
    x, v, _ = random_state(shape=(3, 4, 16, 16))
    on_cpu = flow_sde_step(x, v, 0.6, 0.45, eps=cpu)
    on_cuda = flow_sde_step(x.cuda(), v.cuda(), 0.6, 0.45, eps=cuda)
    torch.testing.assert_close(on_cuda.x_next.cpu(), on_cpu.x_next, rtol=1e-6, atol=1e-6)
