"""Proxies: what a checkpoint looks at to choose each group's survivors.

Every proxy sees the one-step clean estimates x0_hat of the current rows (already computed by the
previous step, no extra network evaluation) and returns flat survivor rows, ascending.

- ``latent``: pooled x0_hat features, total-variance selection, fused in ``ops.prune_select``.
- ``reward``: the paper's: decode x0_hat, score with the reward, exact scalar OVF.
- ``probe``: a ridge-regression probe from pooled x0_hat features to the final reward, fitted
  online on earlier rollouts' survivors (one probe per checkpoint step); ``latent`` until fitted.
- ``random``: a uniformly random subset (the control).
- ``hidden``: a probe from the denoiser's own hidden features (``HiddenProbeProxy``).

Every proxy subclasses ``Proxy``, the contract the samplers and the trainer call directly.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Protocol

import torch

from progrpo_fast import ops
from progrpo_fast.sampling.sde import keyed_noise


@dataclass
class Checkpoint:
    """What a proxy sees at a checkpoint: x0_hat (rows, *latent_shape), the call's P prompts and
    each row's index into them, each row's trajectory id, the rows per group before and after,
    the step, the rollout's seed (a 0-dim int64 device tensor) and a decode function (latents ->
    images in [0, 1])."""

    step: int
    x0_hat: torch.Tensor
    prompts: list[str]
    prompt_index: torch.Tensor
    trajectory_ids: torch.Tensor
    group_size: int
    keep: int
    seed: torch.Tensor | int
    decode: object

    @property
    def row_prompts(self) -> list[str]:
        """One prompt per row (reads prompt_index back: syncs the host; capturable proxies must not use it)."""
        return [self.prompts[i] for i in self.prompt_index.tolist()]


@dataclass
class Selection:
    """Survivor rows (P*keep,), ascending; scalar proxy scores per row (None for vector proxies);
    proxy variance of each whole group and of its kept subset (P,); the per-row features the
    proxy looked at (rows, D), when it learns from them after the rollout (else None)."""

    index: torch.Tensor
    scores: torch.Tensor | None
    variance_all: torch.Tensor
    variance_kept: torch.Tensor
    features: torch.Tensor | None = None


class ProxyProtocol(Protocol):
    """What the samplers (sampler.py, graphs.py) and the trainer call on a proxy."""

    name: str
    capturable: bool
    learns: bool

    def __call__(self, ckpt: Checkpoint) -> Selection: ...

    def graph_key(self): ...

    def one_pass(self): ...

    def observe(self, rollout, final_rewards: torch.Tensor) -> dict[int, float]: ...

    def state_dict(self): ...

    def load_state_dict(self, state) -> None: ...


class Proxy:
    """Base of every proxy (``ProxyProtocol`` with defaults). Subclasses implement ``__call__``
    and override what applies to them:

    - ``name``: the proxy's name in PROXIES and logs.
    - ``capturable``: True when ``__call__`` is pure device work (no host sync), so a CUDA graph
      can capture it with the denoising steps; False runs it eagerly between captured segments.
    - ``learns``: True when ``observe`` fits the proxy to final rewards (the probes).
    - ``graph_key()``: the proxy state a captured graph depends on; a change re-captures.
    - ``one_pass()``: context around the row-chunked network calls of one denoising pass.
    - ``observe(rollout, final_rewards)``: learns from a finished rollout; returns a report per step.
    - ``state_dict()`` / ``load_state_dict(state)``: what a training checkpoint keeps (None: nothing).
    """

    name = ""
    capturable = False
    learns = False

    def __call__(self, ckpt: Checkpoint) -> Selection:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(ckpt) -> Selection")

    def graph_key(self):
        return None

    def one_pass(self):
        return contextlib.nullcontext()

    def observe(self, rollout, final_rewards: torch.Tensor) -> dict[int, float]:
        return {}

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass


def select_by_scores(scores: torch.Tensor, ckpt: Checkpoint, features: torch.Tensor | None = None) -> Selection:
    index, var_all, var_kept = ops.prune_select(scores, ckpt.group_size, ckpt.keep, return_variance=True, check_finite=False)
    return Selection(index, scores, var_all, var_kept, features)


def select_by_features(features: torch.Tensor, ckpt: Checkpoint, grid: int, keep_features: bool = False) -> Selection:
    """Total-variance selection on latents (pooled on a grid x grid grid) or features (rows, D)."""
    index, var_all, var_kept = ops.prune_select(features, ckpt.group_size, ckpt.keep, grid, return_variance=True, check_finite=False)
    return Selection(index, None, var_all, var_kept, features if keep_features else None)


class LatentProxy(Proxy):
    """Pooled x0_hat features, total-variance selection (one fused op)."""

    name = "latent"
    capturable = True

    def __init__(self, grid: int = 4):
        self.grid = grid

    def __call__(self, ckpt: Checkpoint) -> Selection:
        return select_by_features(ckpt.x0_hat, ckpt, self.grid)

    def graph_key(self):
        return self.grid


class RewardProxy(Proxy):
    """The paper's proxy: decode x0_hat, score with reward_fn(images (B, 3, H, W) in [0, 1],
    prompts) -> (B,) rewards, in batches of ``batch_size`` rows (None: all), exact scalar OVF. Host work (row prompts,
    the reward model's own preprocessing), so it runs between captured CUDA-graph segments, not inside them."""

    name = "reward"
    capturable = False

    def __init__(self, reward_fn, batch_size: int | None = None):
        self.reward_fn, self.batch_size = reward_fn, batch_size

    def __call__(self, ckpt: Checkpoint) -> Selection:
        rows = ckpt.x0_hat.shape[0]
        size = self.batch_size or rows
        prompts = ckpt.row_prompts
        scores = []
        for start in range(0, rows, size):
            images = ckpt.decode(ckpt.x0_hat[start : start + size])
            scores.append(torch.as_tensor(self.reward_fn(images, prompts[start : start + size]), dtype=torch.float32,
                                          device=ckpt.x0_hat.device))
        return select_by_scores(torch.cat(scores), ckpt)


class RandomProxy(Proxy):
    """A uniformly random subset per group, keyed by (seed, trajectory id, step) (the control)."""

    name = "random"
    capturable = True

    def __call__(self, ckpt: Checkpoint) -> Selection:
        noise = keyed_noise(ckpt.seed, ckpt.trajectory_ids, ckpt.step + (1 << 20), (ckpt.trajectory_ids.shape[0], 1))
        order = noise.view(-1, ckpt.group_size).argsort(dim=1)[:, : ckpt.keep].sort(dim=1).values
        offsets = torch.arange(order.shape[0], device=order.device)[:, None] * ckpt.group_size
        index = (order + offsets).flatten()
        var_all = ops.group_variance(noise, ckpt.group_size, check_finite=False)
        return Selection(index, noise[:, 0], var_all, ops.group_variance(noise[index], ckpt.keep, check_finite=False))


def ridge_fit(x: torch.Tensor, y: torch.Tensor, penalty: float, *, intercept: bool = False, standardise: bool = False) -> torch.Tensor:
    """fp32 weights w = (X^T X + penalty I)^-1 X^T y, solved in x's dtype (the probes pass fp64).
    ``intercept``: X = [x, 1], the last weight the bias (penalised too). ``standardise``: X = x / S,
    S the columns' std (floored at 1e-8), and w is returned for the raw x (w_X / S)."""
    if standardise:
        scale = x.std(0).clamp_min(1e-8)
        x = x / scale
    if intercept:
        x = torch.cat([x, torch.ones_like(x[:, :1])], 1)
    gram = x.T @ x + penalty * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x.T @ y)
    return (weights / scale if standardise else weights).float()


@dataclass
class _RidgeProbe:
    """reward ~ [features, 1] @ weights, fitted by ridge regression on a bounded buffer (CPU,
    fp64). ``weights`` (D + 1,) fp32 lives on the features' device and is refitted in place, so
    a captured CUDA graph that reads it sees every refit."""

    features: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    weights: torch.Tensor | None = None

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        weights = self.weights
        return features @ weights[:-1] + weights[-1]


class ProbeProxy(Proxy):
    """Linear probe from pooled x0_hat features (grid x grid mean pool) to the final reward.

    ``observe(rollout, final_rewards)`` after each rollout pairs the survivors' checkpoint
    features (kept in the rollout's prune log) with their true final rewards, reports the Spearman
    correlation of the current probe's predictions with them (before refitting: an out-of-sample
    figure), and refits w = (X^T X + ridge I)^-1 X^T y on the last ``buffer_size`` pairs. Until
    ``min_samples`` pairs exist the probe selects like the latent proxy."""

    name = "probe"
    capturable = True
    learns = True

    def __init__(self, grid: int = 4, ridge: float = 1.0, min_samples: int = 64, buffer_size: int = 4096):
        self.grid, self.ridge, self.min_samples, self.buffer_size = grid, ridge, min_samples, buffer_size
        self.probes: dict[int, _RidgeProbe] = {}
        self.spearman: dict[int, float] = {}

    def __call__(self, ckpt: Checkpoint) -> Selection:
        features = ops.pool_latents(ckpt.x0_hat, self.grid, check_finite=False)
        probe = self.probes.get(ckpt.step)
        if probe is None or probe.weights is None:
            return select_by_features(features, ckpt, self.grid, keep_features=True)
        if probe.weights.device != features.device:  # once, on the first (eager, uncaptured) call on this device
            probe.weights = probe.weights.to(features.device)
        return select_by_scores(probe.predict(features), ckpt, features)

    def graph_key(self):
        """The checkpoint steps whose probe is fitted (each switches latent selection to the probe)."""
        return self.grid, tuple(sorted(step for step, probe in self.probes.items() if probe.weights is not None))

    def observe(self, rollout, final_rewards: torch.Tensor) -> dict[int, float]:
        """Adds (checkpoint features, final reward) pairs of the rollout's survivors; returns the
        Spearman correlation per checkpoint step of the probe that made this rollout's choices."""
        report = {}
        survivors = rollout.trajectory_ids.cpu()
        for record in rollout.prune_log:
            if record.kept_features is None:
                continue
            kept = record.kept_ids.flatten().cpu()
            row_of = {int(t): r for r, t in enumerate(kept.tolist())}
            rows = torch.tensor([row_of[int(t)] for t in survivors.tolist()])
            x, y = record.kept_features.cpu()[rows].double(), final_rewards.double().cpu()
            probe = self.probes.setdefault(record.step, _RidgeProbe())
            if probe.weights is not None and y.numel() > 2:
                predicted = probe.predict(x.float().to(probe.weights.device)).double().cpu()
                report[record.step] = self.spearman[record.step] = spearman(predicted, y)
            probe.features.append(x)
            probe.rewards.append(y)
            stacked_x, stacked_y = torch.cat(probe.features)[-self.buffer_size :], torch.cat(probe.rewards)[-self.buffer_size :]
            probe.features, probe.rewards = [stacked_x], [stacked_y]
            if stacked_y.numel() >= self.min_samples:
                fitted = ridge_fit(stacked_x, stacked_y, self.ridge, intercept=True)
                if probe.weights is None:
                    probe.weights = fitted.to(record.kept_features.device)
                else:
                    probe.weights.copy_(fitted)
        return report

    def state_dict(self) -> dict:
        return {step: {"features": p.features, "rewards": p.rewards, "weights": None if p.weights is None else p.weights.cpu()}
                for step, p in self.probes.items()}

    def load_state_dict(self, state: dict) -> None:
        self.probes = {int(step): _RidgeProbe(**value) for step, value in state.items()}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (average ranks on ties)."""

    def ranks(v: torch.Tensor) -> torch.Tensor:
        order = v.argsort()
        r = torch.empty_like(v, dtype=torch.float64)
        r[order] = torch.arange(v.numel(), dtype=torch.float64)
        for value in v.unique():  # average ranks of ties
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.square().sum() * rb.square().sum()).sqrt()
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


PROXIES = {"latent": LatentProxy, "reward": RewardProxy, "probe": ProbeProxy, "random": RandomProxy}


def group_means(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each row's group mean: values (n, ...) averaged over the rows sharing its ``groups`` id (n,)."""
    count = torch.zeros(int(groups.max()) + 1, dtype=values.dtype, device=values.device).index_add_(
        0, groups, torch.ones_like(groups, dtype=values.dtype))
    sums = torch.zeros(count.shape[0], *values.shape[1:], dtype=values.dtype, device=values.device).index_add_(0, groups, values)
    return (sums / count.view(-1, *[1] * (values.dim() - 1)).clamp_min(1))[groups]


def pool_block_output(output) -> torch.Tensor:
    """A block's output (a tensor, or a tuple whose tensors are its streams, e.g. MMDiT's (context,
    image)) -> (batch, features) fp32: the mean and the max of each stream over its tokens (B, N, D)
    or pixels (B, C, H, W), side by side."""
    streams = output if isinstance(output, (tuple, list)) else (output,)
    pooled = []
    for s in streams:
        if isinstance(s, torch.Tensor) and s.dim() in (3, 4):
            flat = s.detach().float().flatten(2).transpose(1, 2) if s.dim() == 4 else s.detach().float()  # (B, tokens, D)
            pooled += [flat.mean(1), flat.amax(1)]
    return torch.cat(pooled, 1)


def default_probe_block(network: torch.nn.Module) -> torch.nn.Module:
    """The last block of the network's first block list (its output is the image stream the
    final layer turns into the prediction)."""
    for child in network.children():
        if isinstance(child, torch.nn.ModuleList) and len(child):
            return child[-1]
    raise ValueError(f"{type(network).__name__} has no block list (a ModuleList child) to read hidden features from; pass block=")


class HiddenProbeProxy(Proxy):
    """A probe from the denoiser's own hidden features to the final reward: never decodes, never
    calls the reward model.

    A forward hook on ``block`` (default: ``default_probe_block``, the last) keeps the token-pooled
    output of the network's latest pass (``pool_block_output``: mean and max over the tokens; under
    CFG both halves side by side per row; the calls inside ``one_pass()`` are the chunks of one pass). At a checkpoint
    that pass is the previous step's, the one that computed x0_hat, so the features cost a reduction over tokens. Scores s = f @ w_t (one
    w_t per checkpoint step) select by exact OVF. The strong default ridge (10, on standardised
    features) suits the few hundred within-group pairs an online fit has early on.

    ``observe(rollout, final_rewards)`` after each rollout pairs the survivors' features (kept in
    the rollout's prune log) with their final rewards, both minus their group's mean (only the order
    within a group decides a selection), reports the Spearman correlation of the current probe's
    scores with those deviations (before refitting: out of sample), and refits ridge regression on
    the last ``buffer_size`` pairs with standardised features: w = S^-1 (Z^T Z + ridge * n I)^-1 Z^T y,
    Z = X S^-1, S the features' std. w_t lives in a persistent tensor updated in place; until a
    step has ``min_samples`` pairs its checkpoint keeps a keyed uniformly random subset.
    ``__call__`` is device work only (no host sync); ``graph_key()`` names the fitted steps."""

    name = "hidden"
    capturable = True
    learns = True

    def __init__(self, network: torch.nn.Module, block: torch.nn.Module | None = None, ridge: float = 10.0, min_samples: int = 64,
                 buffer_size: int = 4096):
        self.ridge, self.min_samples, self.buffer_size = ridge, min_samples, buffer_size
        self.block = block if block is not None else default_probe_block(network)
        self.hook = self.block.register_forward_hook(self._keep)
        self.latest: list[torch.Tensor] | None = None  # the pooled outputs of the latest pass, one per network call
        self.chunked = False
        self.weights: dict[int, torch.Tensor] = {}  # step -> (D,) fp32, fitted steps only
        self.buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # step -> (centred features, centred rewards), fp64 CPU
        self.random = RandomProxy()

    def _keep(self, module, inputs, output) -> None:
        pooled = pool_block_output(output)
        if self.chunked:
            self.latest.append(pooled)
        else:
            self.latest = [pooled]

    @contextlib.contextmanager
    def one_pass(self):
        """The network calls inside are row chunks, in order, of one pass."""
        self.latest, self.chunked = [], True
        try:
            yield
        finally:
            self.chunked = False

    def features(self, rows: int) -> torch.Tensor:
        """(rows, D) features of the latest pass over ``rows`` rows (CFG halves side by side)."""
        if not self.latest:
            raise ValueError("the hidden proxy has seen no network pass yet: it scores a checkpoint after a denoising step")
        seen = sum(chunk.shape[0] for chunk in self.latest)
        if seen == 2 * rows:  # each call's [negative; positive] halves side by side
            return torch.cat([torch.cat(chunk.chunk(2), 1) for chunk in self.latest])
        if seen != rows:
            raise ValueError(f"the hidden proxy's latest network pass had {seen} rows, the checkpoint {rows}")
        return torch.cat(self.latest)

    def graph_key(self):
        return tuple(sorted(self.weights))

    def __call__(self, ckpt: Checkpoint) -> Selection:
        features = self.features(ckpt.x0_hat.shape[0])
        weights = self.weights.get(ckpt.step)
        if weights is None:
            selection = self.random(ckpt)
            selection.features = features
            return selection
        return select_by_scores(features @ weights, ckpt, features)

    def observe(self, rollout, final_rewards: torch.Tensor) -> dict[int, float]:
        """Adds the survivors' (centred features, centred final reward) pairs per checkpoint step and
        refits; returns the Spearman correlation per step of the probe that made this rollout's choices."""
        report = {}
        for record in rollout.prune_log:
            if record.kept_features is None:
                continue
            step, features, ids = record.step, record.kept_features, record.kept_ids.flatten()
            order = ids.argsort()
            rows = order[torch.searchsorted(ids[order], rollout.trajectory_ids.to(ids.device))]
            groups = rollout.prompt_index.to(features.device)
            x, y = features[rows].double(), final_rewards.to(features.device).double()
            x, y = (x - group_means(x, groups)).cpu(), (y - group_means(y, groups)).cpu()
            if step in self.weights and y.numel() > 2:
                report[step] = spearman(x.float() @ self.weights[step].cpu(), y)
            old_x, old_y = self.buffers.get(step, (x[:0], y[:0]))
            buffer_x, buffer_y = torch.cat([old_x, x])[-self.buffer_size :], torch.cat([old_y, y])[-self.buffer_size :]
            self.buffers[step] = (buffer_x, buffer_y)
            if buffer_y.numel() >= self.min_samples:
                fitted = self.fit(buffer_x, buffer_y).to(features.device)
                if step in self.weights:
                    self.weights[step].copy_(fitted)
                else:
                    self.weights[step] = fitted
        return report

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Ridge regression of y on standardised x (fp64), returned as fp32 weights on the raw features."""
        return ridge_fit(x, y, self.ridge * x.shape[0], standardise=True)

    def state_dict(self) -> dict:
        return {"weights": {step: w.cpu() for step, w in self.weights.items()}, "buffers": dict(self.buffers)}

    def load_state_dict(self, state: dict) -> None:
        for step, w in state["weights"].items():
            if int(step) in self.weights:
                self.weights[int(step)].copy_(w)
            else:
                self.weights[int(step)] = w.clone()
        self.buffers = {int(step): value for step, value in state["buffers"].items()}


PROXIES["hidden"] = HiddenProbeProxy


def build_proxy(name: str, *, reward=None, network: torch.nn.Module | None = None, grid: int = 4, batch_size: int | None = None):
    """The proxy ``name`` of PROXIES: "reward" scores with ``reward`` (a WeightedReward) in
    batches of ``batch_size`` rows (None: all), "hidden" hooks ``network`` (the denoiser's
    network), "latent" and "probe" pool on a ``grid``."""
    if name not in PROXIES:
        raise ValueError(f"unknown proxy {name!r}; expected one of {', '.join(PROXIES)}")
    if name == "reward":
        if reward is None:
            raise ValueError("the reward proxy needs reward= (the reward it scores decoded x0_hat with)")
        return RewardProxy(reward, batch_size)
    if name == "hidden":
        if network is None:
            raise ValueError("the hidden proxy needs network= (the denoiser network whose hidden features it reads)")
        return HiddenProbeProxy(network)
    if name in ("latent", "probe"):
        return PROXIES[name](grid=grid)
    return PROXIES[name]()
