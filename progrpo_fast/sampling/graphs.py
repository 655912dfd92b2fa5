"""The CUDA-graph expand-and-prune sampler.

Batch sizes follow from the schedule (P x G_max rows, then P x K_1, ...), so each segment of a
rollout (its denoising steps, then the next checkpoint's selection and in-place compaction) is
captured once as a CUDA graph over static buffers held at P x G_max rows: the recorded latents,
log-probs, trajectory ids, prompt index and per-row conditioning (CFG negatives included). The
seed lives in a device tensor, so one capture serves every seed; segments are captured largest
first into one shared memory pool after a warm-up on a side stream, and re-captured only when the
capture key changes (P, schedule, latent shape, dtype, conditioning shapes, step rule and noise
window, the proxy's state, the network's parameters). A proxy that cannot be captured (one that
does host work, as the reward proxy) runs eagerly between the captured segments.

On CPU the same static-buffer segments run eagerly, so a CPU run equals ExpandPruneSampler
bitwise and the buffer logic is tested without a GPU.
"""
from __future__ import annotations

import contextlib

import torch

from progrpo_fast.sampling.sampler import DeviceTimer, ExpandPruneSampler, Rollout, RowState, Segment, check_prompts
from progrpo_fast.sampling.sde import seed_tensor

LOG_PREFIX = "[progrpo-fast]"


def graph_support(model, *, sharded: bool = False, history_device: str = "model") -> tuple[bool, str]:
    """Whether rollouts of ``model`` can be captured as CUDA graphs, and why not. The proxy never
    prevents it: a proxy that cannot be captured runs between the captured segments."""
    if model.device.type != "cuda":
        return False, f"the model is on {model.device}, not a CUDA device"
    if sharded:
        return False, "the network is FSDP-sharded (its forward passes are collectives)"
    if history_device not in ("model", None) and torch.device(history_device).type != model.device.type:
        return False, f"the rollout history is offloaded (sampler.history_device={history_device}): its copies need the host"
    if not getattr(model, "capturable", True):
        return False, f"{type(model).__name__} is marked not capturable ({getattr(model, 'not_capturable_reason', 'host work in predict')})"
    return True, ""


class GraphSampler(ExpandPruneSampler):
    """ExpandPruneSampler whose segments are captured CUDA graphs (eager segments on CPU).
    Same constructor (plus ``warmup``: eager rollouts on a side stream before capture) and
    ``sample(prompts, seed) -> Rollout``. The rollout's tensors are copies: the next call reuses
    the static buffers."""

    def __init__(self, model, schedule, proxy=None, method: str = "sde", eta: float = 0.7, noise_steps=None, id_stride: int | None = None,
                 history_device=None, history_dtype: torch.dtype = torch.float32, forward_rows: int | None = None, *, warmup: int = 2):
        super().__init__(model, schedule, proxy, method, eta, noise_steps, id_stride, history_device, history_dtype, forward_rows)
        if self.history_device.type != model.device.type:
            raise ValueError(f"GraphSampler keeps the rollout history on the model's device ({model.device}), got history_device="
                             f"{self.history_device}; sample eagerly (sampler.cuda_graphs=auto or false) to offload it")
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1 (eager rollouts before capture), got {warmup!r}")
        self.warmup = warmup
        self.capture_key_now = None
        self.state: RowState | None = None
        self.seed: torch.Tensor | None = None
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.segment_outputs: list[tuple[torch.Tensor, object]] = []  # per segment: (x0_hat, PruneRecord or None) of the capture
        self.capture_memory: list[int] = []  # bytes the graph pool holds after each segment's capture
        self.captures = 0

    @property
    def uses_graphs(self) -> bool:
        return self.model.device.type == "cuda"

    @torch.no_grad()
    def sample(self, prompts: list[str], seed: int, progress=None) -> Rollout:
        check_prompts(prompts)
        seed_on_device = seed_tensor(seed, self.model.device)  # checks the seed
        cond = self.encode_rows(prompts)
        key = self.capture_key(len(prompts), cond)
        if key != self.capture_key_now:
            self.prepare(key, len(prompts), cond, prompts)
        self.load_inputs(cond, seed_on_device)
        records, timer = self.replay(prompts, progress) if self.uses_graphs else self.run_eagerly(prompts, progress)
        return self.rollout(self.state, prompts, seed, records, timer, copy=True)

    # ------------------------------------------------------------------ static buffers
    def capture_key(self, num_prompts: int, cond: dict[str, torch.Tensor]):
        """What a captured graph depends on; a change re-captures."""
        model, stepper = self.model, self.stepper
        network = getattr(model, "network", None)
        parameters = tuple(p.data_ptr() for p in network.parameters()) if network is not None else ()
        device_type = model.device.type
        autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        return (num_prompts, str(self.schedule), tuple(model.latent_shape()), model.dtype, autocast,
                tuple((name, tuple(value.shape), value.dtype) for name, value in cond.items()),
                stepper.method, stepper.eta, stepper.noise_steps, type(self.proxy).__name__,
                self.proxy.graph_key(), parameters, getattr(network, "training", None))

    def prepare(self, key, num_prompts: int, cond: dict[str, torch.Tensor], prompts: list[str]) -> None:
        """Allocates the static buffers at P x G_max rows; on CUDA warms up and captures every segment."""
        self.graphs, self.segment_outputs, self.capture_memory = [], [], []
        self.state = self.new_state(num_prompts, {name: torch.empty_like(value) for name, value in cond.items()})
        self.initial_ids = self.state.trajectory_ids.clone()
        self.initial_prompt_index = self.state.prompt_index.clone()
        self.seed = torch.zeros((), dtype=torch.int64, device=self.model.device)
        self.capture_key_now = key
        if self.uses_graphs:
            self.load_inputs(cond, self.seed.clone())
            self.capture(prompts)

    def static_pointers(self) -> list[int]:
        """Addresses of every static buffer (the captured graphs read and write exactly these)."""
        state = self.state
        tensors = [state.history, state.log_probs, state.trajectory_ids, state.prompt_index, self.seed, *state.cond.values()]
        return [t.data_ptr() for t in tensors]

    def load_inputs(self, cond: dict[str, torch.Tensor], seed: torch.Tensor) -> None:
        """Resets the live rows to all P x G_max trajectories and copies in this call's inputs (device copies only)."""
        state = self.state
        state.rows, state.group = state.trajectory_ids.shape[0], self.schedule.group_size_max
        state.trajectory_ids.copy_(self.initial_ids)
        state.prompt_index.copy_(self.initial_prompt_index)
        for name, value in cond.items():
            state.cond[name].copy_(value)
        self.seed.copy_(seed)

    # ------------------------------------------------------------------ running
    def run_segment(self, segment: Segment, prompts: list[str], progress=None):
        """Steps of ``segment`` and, when the proxy can be captured, its checkpoint: (x0_hat, record or None)."""
        x0_hat = self.run_steps(self.state, segment, self.seed, progress)
        record = None
        if segment.keep is not None and self.proxy.capturable:
            record = self.prune(self.state, segment, x0_hat, prompts, self.seed)
        return x0_hat, record

    def run_eagerly(self, prompts: list[str], progress=None):
        """Every segment eagerly on the static buffers: (prune records, proxy timer)."""
        return self.run_segments(self.state, prompts, self.seed, progress)

    def replay(self, prompts: list[str], progress=None):
        """Replays the captured segments; a proxy that cannot be captured runs between them. Returns
        (prune records, proxy timer or None when the pruning is inside the graphs)."""
        state, capturable = self.state, self.proxy.capturable
        if self.static_pointers() != self.captured_pointers:
            raise RuntimeError("GraphSampler's static buffers were replaced after capture; the graphs would read freed memory "
                               "(write into sampler.state's tensors in place, never assign new ones)")
        timer, records = (None if capturable else DeviceTimer(self.model.device)), []
        for segment, graph, (x0_hat, record) in zip(self.segments, self.graphs, self.segment_outputs):
            graph.replay()
            if progress is not None:
                for step in range(segment.start, segment.stop):
                    progress(step, state.rows)
            if segment.keep is None:
                continue
            if capturable:
                records.append(record.detached_copy())
                state.rows, state.group = record.kept_ids.numel(), segment.keep
            else:
                with timer.interval():
                    records.append(self.prune(state, segment, x0_hat, prompts, self.seed))
        return records, timer

    # ------------------------------------------------------------------ capture
    def capture_autocast(self):
        """Autocast as the caller has it, with its weight-cast cache off (required inside capture)."""
        device_type = self.model.device.type
        if not torch.is_autocast_enabled(device_type):
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=False)

    def capture(self, prompts: list[str]) -> None:
        """Warm-up rollouts on a side stream, then one graph per segment, largest batch first, into one pool."""
        device, state = self.model.device, self.state
        full_rows = state.trajectory_ids.shape[0]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), self.capture_autocast():
            for _ in range(self.warmup):
                state.rows, state.group = full_rows, self.schedule.group_size_max
                self.run_eagerly(prompts)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        state.rows, state.group = full_rows, self.schedule.group_size_max
        pool = torch.cuda.graph_pool_handle()
        before = torch.cuda.memory_reserved(device)
        for segment in self.segments:
            graph = torch.cuda.CUDAGraph()
            with self.capture_autocast(), torch.cuda.graph(graph, pool=pool):
                outputs = self.run_segment(segment, prompts)
            if segment.keep is not None and not self.proxy.capturable:  # pruned eagerly at replay
                state.rows, state.group = state.rows // state.group * segment.keep, segment.keep
            self.graphs.append(graph)
            self.segment_outputs.append(outputs)
            self.capture_memory.append(torch.cuda.memory_reserved(device) - before)
        self.captures += 1
        self.captured_pointers = self.static_pointers()
        note = ("" if self.proxy.capturable
                else f"; the {self.proxy.name or type(self.proxy).__name__} proxy does host work and runs between them")
        print(f"{LOG_PREFIX} cuda graphs: captured {len(self.graphs)} segments of schedule {self.schedule} for "
              f"{full_rows // self.schedule.group_size_max} prompts ({self.capture_memory[-1] / 2**20:.0f} MiB pool){note}")


def build_sampler(model, schedule, sampler_config, proxy=None, *, sharded: bool = False):
    """The sampler ``sampler_config.cuda_graphs`` asks for: "true" (GraphSampler; an error naming
    the reason where graphs cannot run), "false" (ExpandPruneSampler), "auto" (GraphSampler where
    graph_support allows, else ExpandPruneSampler with the reason printed once)."""
    mode = sampler_config.cuda_graphs
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"sampler.cuda_graphs must be 'auto', 'true' or 'false', got {mode!r}")
    if mode == "false":
        return ExpandPruneSampler.from_config(model, schedule, sampler_config, proxy)
    ok, why = graph_support(model, sharded=sharded, history_device=sampler_config.history_device)
    if not ok:
        if mode == "true":
            raise ValueError(f"sampler.cuda_graphs=true but CUDA graphs cannot run here: {why}; set sampler.cuda_graphs=auto or false")
        if model.device.type == "cuda":
            print(f"{LOG_PREFIX} cuda graphs off: {why}")
        return ExpandPruneSampler.from_config(model, schedule, sampler_config, proxy)
    return GraphSampler.from_config(model, schedule, sampler_config, proxy)
