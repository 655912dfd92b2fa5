"""The expand-and-prune sampler: P prompts x G_max trajectories, pruned at the schedule's
checkpoints, full trajectories and log-probs of the survivors recorded.

Pruning at checkpoint t happens before step t runs and looks at the x0_hat that step t - 1 already
computed (no extra network evaluation). Every per-row state is compacted in place: the recorded
latents x_0..x_t, log-probs, conditioning (CFG negatives included), trajectory and prompt ids.
Noise is keyed by (seed, trajectory id, step), so pruning never changes what a survivor samples,
and with no checkpoints the sampler is plain GRPO sampling.

A rollout runs as segments (``segments``): the denoising steps between two checkpoints, then the
next checkpoint's selection and compaction. Between its first step and its return a call makes
no host sync: row counts follow from the schedule, row prompts stay device indices
(``Rollout.row_prompts`` resolves them on demand), the seed is a device tensor and the pruning ops
run without value checks. ``graphs.GraphSampler`` captures each segment as one CUDA graph.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch

from progrpo_fast import ops
from progrpo_fast.ops.dtypes import DTYPES
from progrpo_fast.sampling.denoiser import Denoiser, repeat_rows
from progrpo_fast.sampling.proxies import Checkpoint, LatentProxy
from progrpo_fast.sampling.schedule import PruneSchedule
from progrpo_fast.sampling.sde import gaussian_log_prob, keyed_noise, seed_tensor
from progrpo_fast.sampling.stepper import Stepper


@dataclass
class PruneRecord:
    """One checkpoint: the step, rows before, the proxy's scalar scores of those rows (None for
    vector proxies), the kept trajectory ids (P, keep), the proxy variance of each whole group
    and of its kept subset (P,), and the features the proxy saw for the kept rows (P*keep, D),
    in kept_ids' order (None unless the proxy reports them, as the probe does)."""

    step: int
    rows_before: int
    scores: torch.Tensor | None
    kept_ids: torch.Tensor
    variance_all: torch.Tensor
    variance_kept: torch.Tensor
    kept_features: torch.Tensor | None = None

    def detached_copy(self) -> PruneRecord:
        """The record with its tensors cloned (a CUDA graph's outputs change at its next replay)."""
        return dataclasses.replace(self, **{name: value.clone() for name, value in vars(self).items() if isinstance(value, torch.Tensor)})


class DeviceTimer:
    """Sums the duration of ``interval()`` blocks without syncing the host: CUDA events on CUDA,
    read (and so waited for) only when ``seconds`` is asked; perf_counter on CPU, where the ops
    inside the block have finished when it ends."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.total = 0.0

    @contextlib.contextmanager
    def interval(self):
        if not self.cuda:
            started = time.perf_counter()
            yield
            self.total += time.perf_counter() - started
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self.pending.append((start, end))

    @property
    def seconds(self) -> float:
        for start, end in self.pending:
            end.synchronize()
            self.total += start.elapsed_time(end) / 1000
        self.pending.clear()
        return self.total


@dataclass
class Rollout:
    """The survivors of one expand-and-prune rollout, K per prompt, grouped by prompt.

    latents: (n, T+1, *latent_shape) x_0 (noise) .. x_T (final sample) per survivor, fp32 on the
    model's device unless the sampler keeps its history elsewhere (history_device, history_dtype);
    log_probs: (n, T) fp32 log-prob of each recorded transition; trajectory_ids / prompt_index: (n,);
    cond: per-row conditioning; timesteps (T,); trajectory_steps: network row-evaluations spent;
    proxy_timer: the time spent choosing and compacting survivors (None when a CUDA graph fused it
    into the denoising segments)."""

    prompts: list[str]
    latents: torch.Tensor
    log_probs: torch.Tensor
    trajectory_ids: torch.Tensor
    prompt_index: torch.Tensor
    cond: dict[str, torch.Tensor]
    timesteps: torch.Tensor
    group_size: int
    seed: int
    trajectory_steps: int
    prune_log: list[PruneRecord] = field(default_factory=list)
    proxy_timer: DeviceTimer | None = None

    @property
    def final_latents(self) -> torch.Tensor:
        return self.latents[:, -1]

    @property
    def row_prompts(self) -> list[str]:
        """One prompt per row (reads prompt_index back: syncs the host)."""
        return [self.prompts[i] for i in self.prompt_index.tolist()]

    @property
    def proxy_seconds(self) -> float | None:
        """Seconds spent in the proxy and compaction (syncs the host on CUDA); None when fused into graphs."""
        return None if self.proxy_timer is None else self.proxy_timer.seconds


@dataclass(frozen=True)
class Segment:
    """Steps start .. stop - 1, then (keep is not None) pruning to ``keep`` rows per prompt at
    checkpoint ``stop``."""

    start: int
    stop: int
    keep: int | None


def segments(schedule: PruneSchedule) -> list[Segment]:
    """The schedule cut at its checkpoints: len(checkpoints) + 1 segments, largest batch first."""
    bounds = [0, *schedule.checkpoints, schedule.num_steps]
    return [Segment(start, stop, schedule.keep_at(stop)) for start, stop in zip(bounds, bounds[1:])]


@dataclass
class RowState:
    """A rollout's per-row tensors at capacity P x G_max rows; the first ``rows`` are live, in
    ``group`` rows per prompt. Checkpoints compact the live rows to the front in place."""

    history: torch.Tensor  # (capacity, T+1, *latent_shape) fp32
    log_probs: torch.Tensor  # (capacity, T) fp32
    trajectory_ids: torch.Tensor  # (capacity,) int64
    prompt_index: torch.Tensor  # (capacity,) int64
    cond: dict[str, torch.Tensor]  # each (capacity, ...)
    rows: int
    group: int

    def live(self, name: str) -> torch.Tensor:
        return getattr(self, name)[: self.rows]

    def live_cond(self) -> dict[str, torch.Tensor]:
        return {name: value[: self.rows] for name, value in self.cond.items()}


class ExpandPruneSampler:
    """sample(prompts, seed) runs the schedule on ``model`` (a Denoiser) with the step ``method``
    ("sde", "cps", "ode" for flow models, "ddim" for diffusion), noise at ``noise_steps`` (None:
    all) and ``proxy`` at checkpoints. Row j of prompt p is trajectory p * ``id_stride`` + j (None:
    G_max), so a naive group of G with id_stride = G' takes the noise of the first G of a G' group.
    The recorded trajectories (n, T+1, ...) live on ``history_device`` (None: the model's; "cpu"
    offloads them to pinned host memory) in ``history_dtype``; each step starts from the recorded
    x_t and its log-prob scores the recorded x_{t+1}, so a fp16/bf16 history is the trajectory the
    trainer replays (ratio = 1). ``forward_rows``: at most this many rows per network call (None: all)."""

    def __init__(self, model: Denoiser, schedule: PruneSchedule, proxy=None, method: str = "sde", eta: float = 0.7, noise_steps=None,
                 id_stride: int | None = None, history_device=None, history_dtype: torch.dtype = torch.float32,
                 forward_rows: int | None = None):
        if forward_rows is not None and (not isinstance(forward_rows, int) or forward_rows < 1):
            raise ValueError(f"forward_rows must be an int >= 1 (or None: all rows in one call), got {forward_rows!r}")
        if id_stride is not None and id_stride < schedule.group_size_max:
            raise ValueError(f"id_stride must be >= the schedule's G_max = {schedule.group_size_max} (or None), got {id_stride}")
        if history_dtype not in DTYPES.values():
            raise ValueError(f"history_dtype must be one of {list(DTYPES.values())}, got {history_dtype!r}")
        self.model, self.schedule, self.id_stride = model, schedule, id_stride
        self.proxy = proxy if proxy is not None else LatentProxy()
        self.step_context = lambda step: contextlib.nullcontext()  # step -> context around that step's network evaluation
        self.stepper = Stepper(model.kind, method, eta, model.schedule(schedule.num_steps), noise_steps)
        self.segments = segments(schedule)
        self.history_device = torch.device(model.device if history_device is None else history_device)
        self.history_dtype = history_dtype
        self.forward_rows = forward_rows

    @classmethod
    def from_config(cls, model: Denoiser, schedule: PruneSchedule, sampler_config, proxy=None, **kwargs):
        """The sampler of a config's sampler section (method, eta, noise_steps, trajectory_id_stride,
        history_device, history_dtype, forward_rows) on ``schedule``."""
        return cls(model, schedule, proxy, method=sampler_config.method, eta=sampler_config.eta, noise_steps=sampler_config.noise_steps,
                   id_stride=sampler_config.trajectory_id_stride,
                   history_device=None if sampler_config.history_device == "model" else sampler_config.history_device,
                   history_dtype=DTYPES[sampler_config.history_dtype], forward_rows=sampler_config.forward_rows, **kwargs)

    @torch.no_grad()
    def sample(self, prompts: list[str], seed: int, progress=None) -> Rollout:
        check_prompts(prompts)
        device = self.model.device
        seed_on_device = seed_tensor(seed, device)
        state = self.new_state(len(prompts), self.encode_rows(prompts))
        records, timer = self.run_segments(state, prompts, seed_on_device, progress)
        return self.rollout(state, prompts, seed, records, timer)

    # ------------------------------------------------------------------ the pieces
    def run_segments(self, state: RowState, prompts: list[str], seed: torch.Tensor, progress=None) -> tuple[list[PruneRecord], DeviceTimer]:
        """Every segment eagerly on ``state``: its steps, then its checkpoint's pruning (timed).
        Returns (prune records, proxy timer)."""
        timer, records = DeviceTimer(self.model.device), []
        for segment in self.segments:
            x0_hat = self.run_steps(state, segment, seed, progress)
            if segment.keep is not None:
                with timer.interval():
                    records.append(self.prune(state, segment, x0_hat, prompts, seed))
        return records, timer

    def encode_rows(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per-row conditioning, G_max consecutive rows per prompt (host work: tokenization)."""
        return repeat_rows(self.model.encode(prompts), self.schedule.group_size_max)

    def history_bytes(self, num_prompts: int) -> int:
        """Bytes of one rollout's recorded trajectories on history_device:
        num_prompts * G_max * (T + 1) * prod(latent_shape) * element size of history_dtype."""
        per_step = math.prod(self.model.latent_shape()) * self.history_dtype.itemsize
        return num_prompts * self.schedule.group_size_max * (self.schedule.num_steps + 1) * per_step

    def new_state(self, num_prompts: int, cond: dict[str, torch.Tensor]) -> RowState:
        """Freshly allocated per-row state for ``num_prompts`` prompts holding ``cond``."""
        device, steps = self.model.device, self.schedule.num_steps
        group = self.schedule.group_size_max
        rows = num_prompts * group
        prompt_index = torch.arange(num_prompts, device=device).repeat_interleave(group)
        return RowState(
            history=torch.empty(rows, steps + 1, *self.model.latent_shape(), device=self.history_device, dtype=self.history_dtype,
                                pin_memory=self.history_device.type == "cpu" and device.type == "cuda"),
            log_probs=torch.zeros(rows, steps, device=device),
            trajectory_ids=prompt_index * (self.id_stride or group) + torch.arange(group, device=device).repeat(num_prompts),
            prompt_index=prompt_index, cond=cond, rows=rows, group=group,
        )

    def run_steps(self, state: RowState, segment: Segment, seed: torch.Tensor, progress=None) -> torch.Tensor:
        """Denoising steps segment.start .. stop - 1 on the live rows (the first segment first
        draws x_0); returns the last step's x0_hat (rows, *latent_shape)."""
        stepper, device = self.stepper, self.model.device
        history, log_probs, ids, cond = state.live("history"), state.live("log_probs"), state.live("trajectory_ids"), state.live_cond()
        if segment.start == 0:
            history[:, 0] = keyed_noise(seed, ids, 0, history[:, 0].shape)
        x0_hat = None
        for step in range(segment.start, segment.stop):
            x = history[:, step].to(device, torch.float32, non_blocking=True)  # the recorded x_t, as the trainer reads it
            eps = None if stepper.deterministic(step) else keyed_noise(seed, ids, step + 1, x.shape)
            with self.step_context(step):
                velocity = self.predict(x, stepper.timesteps[step], cond)
            out = stepper(step, x, velocity, eps=eps)
            history[:, step + 1] = out.x_next
            if self.history_dtype == torch.float32:
                log_probs[:, step] = out.log_prob
            else:  # score the rounded x_{t+1} that the history holds and the trainer replays
                log_probs[:, step] = gaussian_log_prob(history[:, step + 1].to(device, torch.float32), out.mean, out.std)
            x0_hat = out.x0_hat
            if progress is not None:
                progress(step, state.rows)
        return x0_hat

    def predict(self, x: torch.Tensor, timestep: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The network output for rows x, in calls of at most ``forward_rows`` rows: one network
        pass as the proxy sees it (a proxy reading the network's features gets all the rows)."""
        size = self.forward_rows
        if size is None or x.shape[0] <= size:
            return self.model.predict(x, timestep, cond)
        with self.proxy.one_pass():
            return torch.cat([self.model.predict(x[i : i + size], timestep, {name: value[i : i + size] for name, value in cond.items()})
                              for i in range(0, x.shape[0], size)])

    def prune(self, state: RowState, segment: Segment, x0_hat: torch.Tensor, prompts: list[str], seed: torch.Tensor) -> PruneRecord:
        """The checkpoint at segment.stop: the proxy picks segment.keep rows per prompt and every
        per-row tensor is compacted to them in place."""
        step, keep, rows = segment.stop, segment.keep, state.rows
        ids, prompt_index = state.live("trajectory_ids"), state.live("prompt_index")
        selection = self.proxy(Checkpoint(step, x0_hat, prompts, prompt_index, ids, state.group, keep, seed, self.model.decode))
        kept_features = None if selection.features is None else selection.features[selection.index]
        record = PruneRecord(step, rows, selection.scores, ids[selection.index].view(-1, keep),
                             selection.variance_all, selection.variance_kept, kept_features)
        history = state.live("history")[:, : step + 1]
        ops.compact_(selection.index.to(history.device), history, check_values=False, as_tuple=False)
        ops.compact_(selection.index, state.live("log_probs"), ids, prompt_index, *state.live_cond().values(),
                     check_values=False, as_tuple=True)
        state.rows, state.group = selection.index.shape[0], keep
        return record

    def rollout(self, state: RowState, prompts: list[str], seed: int, records: list[PruneRecord], timer: DeviceTimer | None,
                *, copy: bool = False) -> Rollout:
        """The Rollout of ``state``'s live rows: views of its tensors, or clones with ``copy`` (a
        GraphSampler's static buffers are rewritten by its next call)."""
        take = torch.clone if copy else (lambda tensor: tensor)
        return Rollout(list(prompts), take(state.live("history")), take(state.live("log_probs")), take(state.live("trajectory_ids")),
                       take(state.live("prompt_index")), {name: take(value) for name, value in state.live_cond().items()},
                       self.stepper.timesteps, state.group, seed, self.schedule.trajectory_steps(len(prompts)), records, timer)


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: the CUDA device's free memory, the host's
    MemAvailable (Linux /proc/meminfo); None where unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_prompts(prompts) -> None:
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")


def synchronized_clock(device: torch.device) -> float:
    """time.perf_counter() after the device's queued work has finished (seconds)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
