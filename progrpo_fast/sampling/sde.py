"""One denoising step of each sampler, with the Gaussian log-prob of the transition.

All math runs in fp32 (inputs may be bf16/fp16/fp32) and every output is fp32, so that the
sampler and the trainer, which both call these functions, compute numerically identical
log-probs (ratio = 1 on the first inner step).

Conventions (diffusers):
- Flow matching: x_sigma = (1 - sigma) x0 + sigma eps, the model predicts v = eps - x0, sigma runs
  from 1 to 0 and dt = sigma_next - sigma < 0.
- Diffusion (DDIM): x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, the model predicts eps_hat; a_t is
  alphas_cumprod at the current timestep and a_prev at the next (smaller) one.

Each step either samples (``eps`` given: x_next = mean + std * eps) or scores a recorded
transition (``x_next`` given, as the trainer does). Schedule values (sigma, alpha) may be Python
floats, 0-dim tensors or per-row (B,) tensors; inside CUDA-graph capture pass them as tensors
already on the latent's device (a Python float becomes a host-to-device copy).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from progrpo_fast.ops import backends
from progrpo_fast.ops._checks import is_int

__all__ = [
    "StepOutput",
    "flow_sde_step",
    "flow_cps_step",
    "ddim_step",
    "gaussian_log_prob",
    "keyed_noise",
    "seed_tensor",
    "philox4x32",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class StepOutput(NamedTuple):
    """Result of one step, all fp32.

    x_next: (B, ...) the next latent (sampled, or the recorded one passed in).
    mean: (B, ...) the mean of the Gaussian transition.
    std: (B, 1, ..., 1) the transition's std per row (0 for a deterministic step).
    log_prob: (B,) log N(x_next; mean, std^2) averaged over the non-batch elements (0 where std == 0).
    x0_hat: (B, ...) the one-step estimate of the clean sample.
    """

    x_next: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob: torch.Tensor
    x0_hat: torch.Tensor


def per_row(value, x: torch.Tensor, name: str) -> torch.Tensor:
    """A float, 0-dim or (B,) schedule value -> fp32 (B, 1, ..., 1) on x's device."""
    value = torch.as_tensor(value, dtype=torch.float32, device=x.device)
    if value.dim() == 0:
        value = value.expand(x.shape[0])
    if value.dim() != 1 or value.shape[0] != x.shape[0]:
        raise ValueError(f"{name} must be a float, a 0-dim tensor or a ({x.shape[0]},) tensor, got shape {tuple(value.shape)}")
    return value.reshape(-1, *([1] * (x.dim() - 1)))


def _check_pair(x: torch.Tensor, model_output: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of shape (B, ...) with at least 2 dims, got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(model_output, torch.Tensor) or model_output.shape != x.shape:
        raise ValueError(f"{name} must have x's shape {tuple(x.shape)}, got {getattr(model_output, 'shape', type(model_output).__name__)}")


def gaussian_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) fp32: mean over dims 1.. of -(x_next - mean)^2 / (2 std^2) - log(std) - log(sqrt(2 pi)).

    Rows with std == 0 (deterministic steps) have no density and get 0; they must not be trained.
    """
    x_next, mean, std = x_next.float(), mean.float(), std.float()
    stochastic = std > 0
    safe_std = torch.where(stochastic, std, torch.ones_like(std))
    log_density = -((x_next - mean) ** 2) / (2 * safe_std**2) - torch.log(safe_std) - _LOG_SQRT_2PI
    log_density = torch.where(stochastic, log_density, torch.zeros_like(log_density))
    return log_density.mean(dim=tuple(range(1, log_density.dim())))


def _finish(mean, std, x0_hat, eps, x_next, deterministic: bool) -> StepOutput:
    """Samples x_next = mean + std * eps (or takes the recorded x_next) and scores it; gradients
    reach log_prob through mean and std only (x_next is detached, as in Flow-GRPO)."""
    if x_next is None:
        if eps is None:
            if not deterministic:
                raise ValueError("pass eps (standard normal noise of x's shape) to sample, or x_next to score a recorded transition")
            x_next = mean
        else:
            if eps.shape != mean.shape:
                raise ValueError(f"eps must have x's shape {tuple(mean.shape)}, got {tuple(eps.shape)}")
            x_next = mean + std * eps.float()
    else:
        if x_next.shape != mean.shape:
            raise ValueError(f"x_next must have x's shape {tuple(mean.shape)}, got {tuple(x_next.shape)}")
        x_next = x_next.float()
    return StepOutput(x_next, mean, std, gaussian_log_prob(x_next.detach(), mean, std), x0_hat)


def flow_sde_step(x, v, sigma, sigma_next, *, eta: float = 0.7, eps=None, x_next=None) -> StepOutput:
    """Flow-GRPO SDE step (flow matching), from sigma to sigma_next < sigma.

    s = eta * sqrt(sigma / (1 - sigma)), where at sigma == 1 the denominator uses sigma_next
    instead: 1 - sigma_next (Flow-GRPO's sigmas[1] at the first step, the only step that starts at
    sigma = 1);
    mean = x + dt * [v + s^2 / (2 sigma) * (x + (1 - sigma) v)], dt = sigma_next - sigma;
    std = s * sqrt(-dt);  x_next = mean + std * eps.  eta = 0 is the deterministic Euler (ODE)
    step x + dt * v and needs no eps.
    """
    _check_pair(x, v, "v")
    x, v = x.float(), v.float()
    sigma, sigma_next = per_row(sigma, x, "sigma"), per_row(sigma_next, x, "sigma_next")
    dt = sigma_next - sigma
    one_minus_sigma = 1 - torch.where(sigma == 1, sigma_next, sigma)
    s = eta * torch.sqrt(sigma / one_minus_sigma)
    mean = x + dt * (v + s**2 / (2 * sigma) * (x + (1 - sigma) * v))
    std = s * torch.sqrt(-dt)
    return _finish(mean, std, x - sigma * v, eps, x_next, deterministic=eta == 0)


def flow_cps_step(x, v, sigma, sigma_next, *, eta: float = 0.7, eps=None, x_next=None) -> StepOutput:
    """Coefficients-preserving step (flow matching), from sigma to sigma_next < sigma.

    std = sigma_next * sin(eta * pi / 2); x0_hat = x - sigma v; x1_hat = x + (1 - sigma) v;
    mean = (1 - sigma_next) x0_hat + sqrt(sigma_next^2 - std^2) x1_hat; x_next = mean + std * eps,
    so x_next keeps the marginal coefficients (1 - sigma_next) x0 + sigma_next * noise. The last
    step (sigma_next = 0) and eta = 0 are deterministic.
    """
    _check_pair(x, v, "v")
    x, v = x.float(), v.float()
    sigma, sigma_next = per_row(sigma, x, "sigma"), per_row(sigma_next, x, "sigma_next")
    std = sigma_next * math.sin(eta * math.pi / 2)
    x0_hat = x - sigma * v
    x1_hat = x + (1 - sigma) * v
    mean = (1 - sigma_next) * x0_hat + torch.sqrt((sigma_next**2 - std**2).clamp_min(0)) * x1_hat
    return _finish(mean, std, x0_hat, eps, x_next, deterministic=eta == 0)


def ddim_step(x, eps_hat, alpha, alpha_prev, *, eta: float = 1.0, eps=None, x_next=None) -> StepOutput:
    """DDIM step with eta (DDPO), from alphas_cumprod a_t = alpha to a_prev = alpha_prev.

    x0_hat = (x - sqrt(1 - a_t) eps_hat) / sqrt(a_t);
    std = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev);
    mean = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - std^2) eps_hat; x_next = mean + std * eps.
    No clipping or thresholding of x0_hat (models.schedules.ddim_alphas refuses schedulers configured for it).
    """
    _check_pair(x, eps_hat, "eps_hat")
    x, eps_hat = x.float(), eps_hat.float()
    a_t, a_prev = per_row(alpha, x, "alpha"), per_row(alpha_prev, x, "alpha_prev")
    x0_hat = (x - torch.sqrt(1 - a_t) * eps_hat) / torch.sqrt(a_t)
    std = eta * torch.sqrt((1 - a_prev) / (1 - a_t)) * torch.sqrt(1 - a_t / a_prev)
    mean = torch.sqrt(a_prev) * x0_hat + torch.sqrt((1 - a_prev - std**2).clamp_min(0)) * eps_hat
    return _finish(mean, std, x0_hat, eps, x_next, deterministic=eta == 0)


# ---------------------------------------------------------------------------------------------
# Keyed noise: Philox4x32-10 (Random123; the generator Triton's tl.philox implements) in int64
# torch ops, so it is vectorised, sync-free, graph-capturable and bit-identical on CPU and CUDA.
# Every uint32 lives in an int64; products are split so that no int64 operation overflows.

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments


def _mulhilo32(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a * b, a int64 in [0, 2^32), b a uint32 constant."""
    p_lo = a * (b & 0xFFFF)  # < 2^48
    p_hi = a * (b >> 16)  # < 2^48
    t = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2^49
    return (p_hi >> 16) + (t >> 32), t & _MASK32


def philox4x32(counter: tuple, key: tuple, rounds: int = 10) -> tuple:
    """Philox4x32-R of a 4-word counter under a 2-word key; words are int64 tensors or ints in
    [0, 2^32). Returns 4 int64 tensors in [0, 2^32)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        hi0, lo0 = _mulhilo32(c0, _PHILOX_M0)
        hi1, lo1 = _mulhilo32(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_W0) & _MASK32, (k1 + _PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


_LN2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)
_HALF_PI = math.pi / 2


def _log_unit(u: torch.Tensor) -> torch.Tensor:
    """ln(u) for fp32 u in (0, 1] from exact frexp and +, -, *, / only (IEEE correctly rounded,
    so bit-identical on every device): u = m 2^e with m in [sqrt(1/2), sqrt(2)),
    ln u = e ln 2 + 2 atanh(s), s = (m - 1)/(m + 1), |s| < 0.172, series to s^9 (error < 1e-9)."""
    m, e = torch.frexp(u)
    low = m < _SQRT_HALF
    m = torch.where(low, m * 2, m)
    e = torch.where(low, e - 1, e).to(torch.float32)
    s = (m - 1) / (m + 1)
    s2 = s * s
    series = (((s2 * (1 / 9) + 1 / 7) * s2 + 1 / 5) * s2 + 1 / 3) * s2 + 1
    return e * _LN2 + 2 * s * series


def _cos_sin_quarter(phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(phi), sin(phi) for phi in [0, pi/2] by Taylor series to degree 14 / 15 (error < 1e-9)
    in +, * only."""
    p2 = phi * phi
    cos, sin = torch.full_like(phi, 1.0), torch.full_like(phi, 1.0)
    for n in range(14, 0, -2):  # Horner: 1 - p2/(1*2) (1 - p2/(3*4) (...))
        cos = 1 - p2 * (1.0 / (n * (n - 1))) * cos
        sin = 1 - p2 * (1.0 / ((n + 1) * n)) * sin
    return cos, phi * sin


def _sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded fp32 sqrt of fp32 x >= 0 on every device (torch's CPU sqrt is not: it
    differs from IEEE sqrt in the last bit for ~15% of fp32 inputs). r = fp32(sqrt(fp64(x))) is
    within one fp32 ulp; it moves to its neighbour when x lies beyond the midpoint m between them,
    tested exactly in fp64: m has 25 significant bits, so m * m is exact."""
    r = torch.sqrt(x.double()).float()
    up, down = torch.nextafter(r, torch.full_like(r, math.inf)), torch.nextafter(r, torch.zeros_like(r))
    x64, r64 = x.double(), r.double()
    mid_up, mid_down = (r64 + up.double()) / 2, (r64 + down.double()) / 2
    r = torch.where(x64 > mid_up * mid_up, up, r)
    return torch.where(x64 < mid_down * mid_down, down, r)


def _box_muller(radius_bits: torch.Tensor, angle_bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two standard normals r cos(theta), r sin(theta) from two uint32 words (in int64):
    r = sqrt(-2 ln u), u = (hi24(radius_bits) + 1) / 2^24 in (0, 1]; theta = 2 pi w / 2^32 with
    w = hi24(angle_bits) << 8, taken as quadrant (top 2 bits) + angle (next 22 bits) * (pi/2) / 2^22."""
    u = ((radius_bits >> 8) + 1).to(torch.float32) * (1.0 / 2**24)  # exact in fp32
    r = _sqrt_rn(-2 * _log_unit(u))
    quadrant = angle_bits >> 30
    phi = ((angle_bits >> 8) & 0x3FFFFF).to(torch.float32) * (_HALF_PI / 2**22)
    c, s = _cos_sin_quarter(phi)
    # rotate by quadrant * pi/2: (c, s) -> (-s, c) -> (-c, -s) -> (s, -c)
    cos = torch.where(quadrant == 0, c, torch.where(quadrant == 1, -s, torch.where(quadrant == 2, -c, s)))
    sin = torch.where(quadrant == 0, s, torch.where(quadrant == 1, c, torch.where(quadrant == 2, -s, -c)))
    return r * cos, r * sin


def keyed_noise(seed, traj_ids: torch.Tensor, step: int, shape, device=None, *, backend: str | None = None) -> torch.Tensor:
    """fp32 standard normal noise of ``shape`` = (B, ...) whose row b depends only on
    (seed, traj_ids[b], step): the same bits whatever the other rows, the batch order, the shape's
    size (element n is always the same), the device or the backend (integer ops, exact frexp and
    correctly rounded +, -, *, /, sqrt only, see _sqrt_rn; no FMA contraction).

    Element n of a row is lane n % 4 of Philox4x32-10 (Random123) with key (seed low 32 bits,
    seed high 32 bits) and counter (n // 4, traj_id low 32 bits, step, traj_id high 32 bits);
    lanes (0, 1) and (2, 3) become two normals each by Box-Muller (see _box_muller).
    seed: an int in [0, 2^63), or a 0-dim int64 tensor on the noise's device holding one (not
    range-checked: reading it would sync the host; a CUDA graph then serves every seed);
    traj_ids >= 0 (int64); step in [0, 2^32). backend: "torch" (these int64 torch ops), "triton"
    (progrpo_fast/kernels/keyed_noise.py, one launch), None: ``ops.backends.keyed_noise_backend``'s
    choice (triton on CUDA when it loads, else torch).
    """
    shape = tuple(shape)
    if not isinstance(traj_ids, torch.Tensor) or traj_ids.dim() != 1 or traj_ids.dtype != torch.int64:
        raise ValueError(f"traj_ids must be a 1-D int64 tensor, got {getattr(traj_ids, 'shape', type(traj_ids).__name__)}")
    if len(shape) < 1 or shape[0] != traj_ids.shape[0]:
        raise ValueError(f"shape must be (B, ...) with B = len(traj_ids) = {traj_ids.shape[0]}, got {shape}")
    if not is_int(step) or not 0 <= step < 2**32:
        raise ValueError(f"step must be an int in [0, 2^32), got {step!r}")
    device = traj_ids.device if device is None else torch.device(device)
    seed = seed_tensor(seed, device)
    if backends.keyed_noise_backend(device, backend) == "triton":
        return backends.load("triton")[0].keyed_noise(seed, traj_ids.to(device), step, shape)
    traj = traj_ids.to(device).unsqueeze(1)  # (B, 1)
    per_row = math.prod(shape[1:])
    blocks = (per_row + 3) // 4
    size = (shape[0], blocks)
    c0 = torch.arange(blocks, device=device, dtype=torch.int64).unsqueeze(0).expand(size)
    c1 = (traj & _MASK32).expand(size)
    c3 = ((traj >> 32) & _MASK32).expand(size)
    w0, w1, w2, w3 = philox4x32((c0, c1, step, c3), (seed & _MASK32, seed >> 32))
    z0, z1 = _box_muller(w0, w1)
    z2, z3 = _box_muller(w2, w3)
    normals = torch.stack([z0, z1, z2, z3], dim=-1).reshape(shape[0], blocks * 4)
    return normals[:, :per_row].reshape(shape)


def seed_tensor(seed, device) -> torch.Tensor:
    """A seed as a 0-dim int64 tensor on ``device``: an int in [0, 2^63) is checked and filled in
    on the device (a fill kernel, no host-to-device copy); a 0-dim int64 tensor on ``device``
    passes through unchecked."""
    device = torch.device(device)
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 0 or seed.dtype != torch.int64 or seed.device.type != device.type:
            raise ValueError(f"seed must be an int or a 0-dim int64 tensor on {device}, got a {seed.dtype} tensor of shape "
                             f"{tuple(seed.shape)} on {seed.device}")
        return seed
    if not is_int(seed) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2^63), got {seed!r}")
    return torch.full((), seed, dtype=torch.int64, device=device)
