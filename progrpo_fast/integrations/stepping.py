"""``StepPruner``: expand-and-prune inside a sampler loop you already have.

Where to call it: once per denoising step i, right after step i's model output (the guided velocity
or noise prediction, so x0_hat = x_i - sigma_i * v is at hand) and before the scheduler step that
makes x_{i+1}:

    pruner = StepPruner(PruneSchedule.from_string("8:2=4,3=2@5"), proxy)
    for i in range(num_steps):
        v = guided_velocity(latents, i, embeds)
        out = pruner.step(i, latents, velocity=v, sigma=sigmas[i], history=all_latents, log_probs=all_log_probs,
                          cond=embeds, cfg_stacked=True, group_ids=group_ids)
        latents, v, all_latents, all_log_probs, embeds, group_ids = out.latents, out.velocity, out.history, ...
        latents, log_prob = scheduler_step(latents, v, i, noise=keyed_noise(seed, out.trajectory_ids, i + 1, latents.shape))
        ...

When i + 1 is one of the schedule's checkpoints (``PruneSchedule``: pruning "before step i + 1 runs"),
the proxy chooses each group's survivors from step i's x0_hat and every per-row tensor is narrowed to
them; the scheduler step i then runs on the survivors only, and step i + 1's network evaluation too:
exactly the network evaluations and the selection of ``ExpandPruneSampler``. At every other step the
call returns its inputs as they are (no device work). x0_hat is the sampler's own (``x0_hat=``) or
x_i - sigma_i * v (``velocity=``, ``sigma=``, flow models), never a difference of two latents (which
is wrong for a stochastic step).

Rows: the loop's batch in any order; ``group_ids`` (B,) says which prompt each row belongs to (None:
consecutive groups of the schedule's group size, what ``num_images_per_prompt`` with prompt-major
order gives). A checkpoint gathers the rows into consecutive groups (stable argsort by group id),
selects, and maps back: the kept rows stay in their original (ascending) order. ``trajectory_ids``
(B,) int64 name the rows (default: 0 .. B-1 at step 0) and follow them; key the loop's noise by them
(``keyed_noise``, ``keyed_generators``) so a survivor samples the noise it would have sampled unpruned.

Nothing here reads device values back during a rollout: finiteness (of latents, x0_hat and proxy
scores) and the group layout are accumulated as device flags and read once by ``check_finite()``,
which raises ValueError naming the checkpoint step. Call it at the end of each rollout.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from progrpo_fast.ops._checks import check_int_index, describe
from progrpo_fast.sampling.proxies import Checkpoint, HiddenProbeProxy, LatentProxy, Selection
from progrpo_fast.sampling.sampler import DeviceTimer, PruneRecord
from progrpo_fast.sampling.schedule import PruneSchedule
from progrpo_fast.sampling.sde import per_row, seed_tensor

__all__ = ["PruneStep", "StepPruner", "keyed_generators", "keyed_seed"]


@dataclass
class PruneStep:
    """What ``StepPruner.step`` returns: the loop's per-row state, narrowed to the survivors when
    ``pruned`` (else the inputs themselves). ``history`` and ``log_probs`` are new lists of the same
    length (a tensor passed twice, e.g. latents as history[-1], stays one tensor); ``cond`` keeps its
    form (dict, list or tensor); ``kept``: the rows of the input batch that survive, ascending (None
    when not pruned); ``selection``: the proxy's ``Selection`` (indices in grouped order; None when not pruned)."""

    latents: torch.Tensor
    x0_hat: torch.Tensor | None
    velocity: torch.Tensor | None
    history: list | None
    log_probs: list | None
    cond: object
    group_ids: torch.Tensor
    trajectory_ids: torch.Tensor
    pruned: bool
    kept: torch.Tensor | None = None
    selection: Selection | None = None


class StepPruner:
    """Prunes a foreign sampler loop at ``schedule``'s checkpoints with ``proxy`` (any proxy of
    ``progrpo_fast.sampling.proxies``; default ``LatentProxy()``). ``seed``: the rollout's seed, which
    keys the random proxy (and the hidden proxy before it is fitted); ``prompts``: the prompts indexed
    by group id, and ``decode``: latents -> images in [0, 1], both for the reward proxy.
    ``group_size``: rows per group in the loop's first batch, when given checked against the schedule's
    G_max. ``reset()`` (or a call with step 0) starts a rollout; ``check_finite()`` ends it."""

    def __init__(self, schedule: PruneSchedule, proxy=None, *, group_size: int | None = None, seed: int = 0,
                 prompts: list[str] | None = None, decode=None):
        if not isinstance(schedule, PruneSchedule):
            raise ValueError(f"schedule must be a PruneSchedule (e.g. PruneSchedule.from_string('8:2=4,3=2@5')), got {schedule!r}")
        if group_size is not None and group_size != schedule.group_size_max:
            raise ValueError(f"group_size={group_size} differs from the schedule's G_max = {schedule.group_size_max}; "
                             f"the loop's first batch must hold G_max rows per prompt")
        self.schedule, self.proxy = schedule, proxy if proxy is not None else LatentProxy()
        self.sizes = schedule.sizes()
        self.seed, self.prompts, self.decode = seed, prompts, decode
        self.trajectory_ids: torch.Tensor | None = None
        self.group_ids: torch.Tensor | None = None
        self.prune_log: list[PruneRecord] = []
        self._flags: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
        self.timer: DeviceTimer | None = None
        self.num_prompts, self._consecutive = 0, True

    def reset(self, *, seed: int | None = None, prompts: list[str] | None = None) -> None:
        """Starts a rollout: forgets the rows' ids, the prune log, the timer and unread finiteness flags."""
        if seed is not None:
            self.seed = seed
        if prompts is not None:
            self.prompts = prompts
        self.trajectory_ids = self.group_ids = self.timer = None
        self.prune_log, self._flags, self.num_prompts, self._consecutive = [], [], 0, True

    @property
    def seconds(self) -> float:
        """Time spent in this rollout's checkpoints (selection and narrowing; syncs the host on CUDA)."""
        return 0.0 if self.timer is None else self.timer.seconds

    def is_checkpoint(self, step_index: int) -> bool:
        """Whether ``step(step_index, ...)`` prunes (step_index + 1 is a checkpoint of the schedule)."""
        return self.schedule.keep_at(step_index + 1) is not None

    def step(self, step_index: int, latents: torch.Tensor, *, x0_hat: torch.Tensor | None = None,
             velocity: torch.Tensor | None = None, sigma=None, history: list | None = None, log_probs: list | None = None,
             cond=None, cfg_stacked: bool = False, group_ids: torch.Tensor | None = None,
             trajectory_ids: torch.Tensor | None = None, prompts: list[str] | None = None) -> PruneStep:
        """Step ``step_index``'s call, after its model output and before its scheduler step (module
        docstring). latents: x_i (B, ...); x0_hat (B, ...), or velocity (B, ...) and sigma (a float, 0-dim
        or (B,) tensor) for x0_hat = x_i - sigma * velocity; history: the loop's list of (B, ...) tensors
        (recorded latents, ...); log_probs: its list of (B,) tensors; cond: a dict, list or tensor of per-row
        conditioning, where with ``cfg_stacked`` a tensor of 2B rows is [negative; positive] and keeps rows
        i and B + i of every survivor i; group_ids / trajectory_ids: (B,) int64 (None: this pruner's)."""
        if not isinstance(step_index, int) or not 0 <= step_index < self.schedule.num_steps:
            raise ValueError(f"step_index must be an int in [0, {self.schedule.num_steps}), got {step_index!r}")
        rows = latents.shape[0]
        if step_index == 0:
            self.reset(prompts=prompts)
            if rows % self.schedule.group_size_max:
                raise ValueError(f"the first batch has {rows} rows, not whole groups of G_max = {self.schedule.group_size_max}")
            self.num_prompts = rows // self.schedule.group_size_max
        elif self.num_prompts == 0:
            raise ValueError(f"pruner.step({step_index}, ...) before pruner.step(0, ...): call it at every step of the loop, from step 0")
        expected = self.num_prompts * self.sizes[step_index]
        if rows != expected:
            raise ValueError(f"step {step_index} has {rows} rows; the schedule {self.schedule} runs {expected} there "
                             f"({self.num_prompts} prompts x {self.sizes[step_index]}): pass the latents the previous call returned")
        if prompts is not None:
            self.prompts = prompts
        if trajectory_ids is not None:
            self.trajectory_ids = _check_ids(trajectory_ids, rows, "trajectory_ids")
        elif self.trajectory_ids is None:
            self.trajectory_ids = torch.arange(rows, device=latents.device)
        if group_ids is not None:
            self.group_ids = _check_ids(group_ids, rows, "group_ids")
            self._consecutive = False
        elif self.group_ids is None:
            self.group_ids = torch.arange(self.num_prompts, device=latents.device).repeat_interleave(self.schedule.group_size_max)
            self._consecutive = True
        keep = self.schedule.keep_at(step_index + 1)
        if keep is None:
            return PruneStep(latents, x0_hat, velocity, history, log_probs, cond, self.group_ids, self.trajectory_ids, False)
        if x0_hat is None:
            if velocity is None or sigma is None:
                raise ValueError(f"pruner.step({step_index}, ...) prunes: pass x0_hat= (the sampler's clean estimate) "
                                 "or velocity= and sigma= (flow models: x0_hat = latents - sigma * velocity)")
            x0_hat = latents.float() - per_row(sigma, latents, "sigma") * velocity.float()
        if self.timer is None:
            self.timer = DeviceTimer(latents.device)
        with self.timer.interval():
            return self._prune(step_index + 1, keep, latents, x0_hat, velocity, history, log_probs, cond, cfg_stacked)

    def _prune(self, checkpoint, keep, latents, x0_hat, velocity, history, log_probs, cond, cfg_stacked) -> PruneStep:
        rows, group = latents.shape[0], self.sizes[checkpoint - 1]
        ids, groups = self.trajectory_ids, self.group_ids
        order = None if self._consecutive else torch.argsort(groups, stable=True)
        grouped = (lambda t: t) if order is None else (lambda t: t.index_select(0, order.to(t.device)))
        sorted_groups = grouped(groups)
        ckpt = Checkpoint(checkpoint, grouped(x0_hat), list(self.prompts or []), sorted_groups, grouped(ids), group, keep,
                          seed_tensor(self.seed, latents.device), self.decode)
        with self._hidden_features_in(order, rows):
            selection = self.proxy(ckpt)
        index = selection.index
        kept = index if order is None else order[index].sort().values
        finite = torch.isfinite(x0_hat).all() & torch.isfinite(latents).all()
        if selection.scores is not None:
            finite = finite & torch.isfinite(selection.scores).all()
        layout = None
        if order is not None:
            by_group = sorted_groups.view(-1, group)
            layout = (by_group == by_group[:, :1]).all() & (by_group[1:, 0] > by_group[:-1, 0]).all()
        self._flags.append((checkpoint, finite, layout))
        features = None if selection.features is None else selection.features[index]
        self.prune_log.append(PruneRecord(checkpoint, rows, selection.scores, ckpt.trajectory_ids[index].view(-1, keep),
                                          selection.variance_all, selection.variance_kept, features))
        narrow = _Narrow(kept, rows)
        self.trajectory_ids, self.group_ids = ids[kept], groups[kept]
        return PruneStep(narrow(latents), narrow(x0_hat), narrow(velocity), narrow.each(history), narrow.each(log_probs),
                         narrow.cond(cond, cfg_stacked), self.group_ids, self.trajectory_ids, True, kept, selection)

    @contextlib.contextmanager
    def _hidden_features_in(self, order, rows):
        """The hidden proxy reads the latest network pass in the loop's row order; present it grouped."""
        proxy = self.proxy
        if order is None or not isinstance(proxy, HiddenProbeProxy) or not proxy.latest:
            yield
            return
        latest = proxy.latest
        proxy.latest = [proxy.features(rows).index_select(0, order.to(latest[0].device))]
        try:
            yield
        finally:
            proxy.latest = latest

    def check_finite(self) -> None:
        """Reads this rollout's checkpoint flags (one host sync) and forgets them; raises ValueError
        naming the first checkpoint that saw NaN/Inf latents, x0_hat or proxy scores, or rows whose
        group_ids did not form whole groups."""
        flags, self._flags = self._flags, []
        if not flags:
            return
        values = torch.stack([torch.stack([finite, finite if layout is None else layout]) for _, finite, layout in flags]).cpu()
        for (checkpoint, _, _), (finite, layout) in zip(flags, values.tolist()):
            if not finite:
                raise ValueError(f"non-finite values (NaN or Inf) in the latents, x0_hat or proxy scores at the checkpoint before "
                                 f"step {checkpoint} (pruner.step({checkpoint - 1}, ...)); the survivors chosen there are arbitrary")
            if not layout:
                raise ValueError(f"group_ids at the checkpoint before step {checkpoint} (pruner.step({checkpoint - 1}, ...)) do not "
                                 f"form groups of {self.sizes[checkpoint - 1]} rows each")

    def observe(self, final_rewards: torch.Tensor) -> dict[int, float]:
        """Lets a learning proxy (probe, hidden) learn from this rollout: ``final_rewards`` (n,) of the
        loop's final rows, in their order. Returns the proxy's report (Spearman per checkpoint step)."""
        rows = 0 if self.trajectory_ids is None else self.trajectory_ids.shape[0]
        if rows == 0 or final_rewards.shape[0] != rows:
            raise ValueError(f"final_rewards must have one value per surviving row ({rows}), got {tuple(final_rewards.shape)}")
        rollout = SimpleNamespace(prune_log=self.prune_log, trajectory_ids=self.trajectory_ids, prompt_index=self.group_ids)
        return self.proxy.observe(rollout, final_rewards)


class _Narrow:
    """index_select of the kept rows, once per distinct tensor (a tensor passed twice stays one)."""

    def __init__(self, kept: torch.Tensor, rows: int):
        self.kept, self.rows, self.memo, self.both = kept, rows, {}, None

    def __call__(self, tensor, stacked: bool = False):
        if tensor is None:
            return None
        found = self.memo.get(id(tensor))
        if found is not None:
            return found[1]
        if tensor.shape[0] == self.rows:
            index = self.kept
        elif stacked and tensor.shape[0] == 2 * self.rows:
            if self.both is None:
                self.both = torch.cat([self.kept, self.kept + self.rows])
            index = self.both
        else:
            raise ValueError(f"a per-row tensor has {tensor.shape[0]} rows, expected {self.rows}"
                             + (f" (or {2 * self.rows}: [negative; positive])" if stacked else ""))
        out = tensor.index_select(0, index.to(tensor.device))
        self.memo[id(tensor)] = (tensor, out)  # holds the input, so its id stays unique during the call
        return out

    def each(self, tensors):
        return None if tensors is None else [self(t) for t in tensors]

    def cond(self, cond, stacked: bool):
        if cond is None or isinstance(cond, torch.Tensor):
            return self(cond, stacked)
        if isinstance(cond, dict):
            return {name: self(value, stacked) for name, value in cond.items()}
        if isinstance(cond, (list, tuple)):
            return type(cond)(self(value, stacked) for value in cond)
        raise ValueError(f"cond must be a tensor, a dict or a list of per-row tensors, got {type(cond).__name__}")


def _check_ids(ids, rows: int, name: str) -> torch.Tensor:
    check_int_index(name, ids, 1)
    if ids.shape[0] != rows:
        raise ValueError(f"{name} must have one id per row ({rows},), got {describe(ids)}")
    return ids


_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def keyed_seed(seed: int, trajectory_id: int, step: int) -> int:
    """A generator seed in [0, 2^63) that depends only on (seed, trajectory_id, step) (SplitMix64 chain)."""
    z = _splitmix64(int(seed) & _MASK64)
    z = _splitmix64(z ^ (int(trajectory_id) & _MASK64))
    return _splitmix64(z ^ (int(step) & _MASK64)) >> 1


def keyed_generators(seed: int, trajectory_ids, step: int, device=None) -> list[torch.Generator]:
    """One torch.Generator per row, seeded with ``keyed_seed(seed, id, step)``: for samplers that
    draw noise with ``randn_tensor(shape, generator=[...])`` as diffusers' pipelines and Flow-GRPO's
    ``sde_step_with_logprob`` do (a list draws row b from generator b alone). Pass them where the loop
    draws noise, with the step's own ``step`` (e.g. 0 for x_0, i + 1 for step i): THE change a sampler
    needs so that survivors keep their noise when other rows are pruned. Reads the ids to the host."""
    ids = trajectory_ids.tolist() if isinstance(trajectory_ids, torch.Tensor) else list(trajectory_ids)
    device = torch.device("cpu" if device is None else device)
    return [torch.Generator(device=device).manual_seed(keyed_seed(seed, t, step)) for t in ids]
