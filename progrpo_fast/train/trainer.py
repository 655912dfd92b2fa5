"""The thin GRPO trainer: sample (expand and prune) -> reward -> advantages on the survivors ->
clipped policy loss + KL over the trained steps -> update.

Every source of randomness of an iteration is keyed by (seed, iteration): prompts, sampling noise,
the trained steps and the minibatch order. With the state a checkpoint holds (trainable weights,
optimizer, EMA, probe, RNG) a resumed run reproduces the uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from progrpo_fast import ops
from progrpo_fast.sampling.denoiser import decode_rows
from progrpo_fast.sampling.graphs import build_sampler
from progrpo_fast.sampling.proxies import build_proxy
from progrpo_fast.sampling.sampler import Rollout, available_memory, synchronized_clock
from progrpo_fast.sampling.schedule import PruneSchedule
from progrpo_fast.train.determinism import ADAPTER_INIT_STREAM, seeded_global_rng
from progrpo_fast.train.grpo import group_advantages, kl_to_reference, policy_loss, weighted_group_advantages

AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def iteration_seed(seed: int, iteration: int, stream: int = 0) -> int:
    """A 63-bit seed for (seed, iteration, stream) (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + iteration * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) >> 1


@torch.no_grad()
def score_images(reward, images: torch.Tensor, prompts: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(each component R_r of ``reward`` in fp32, R = sum_r w_r * R_r) for images in [0, 1]."""
    components = {name: value.float() for name, value in reward.components(images, prompts).items()}
    return components, sum(reward.weights[name] * value for name, value in components.items())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP-sharded DTensor (a collective: every rank must call it); the
    tensor itself otherwise."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``like``: this rank's shard when ``like`` is a DTensor."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full


def fully_shard_network(network: torch.nn.Module) -> None:
    """FSDP2: shard each block of the network's block lists (transformer_blocks, down_blocks, ...)
    as its own unit, then the rest of the network."""
    from torch.distributed.fsdp import fully_shard

    for child in network.children():
        if isinstance(child, torch.nn.ModuleList):
            for block in child:
                fully_shard(block)
    fully_shard(network)


@dataclass
class Distributed:
    """Rank-local groups: each rank samples its own prompts and prunes its own groups; only the
    gradients (and logged scalars) are averaged across ranks. ``sharded`` (train.parallel=fsdp):
    the network is FSDP-sharded, so every rank runs every forward pass (evaluations included)."""

    rank: int = 0
    world_size: int = 1
    sharded: bool = False

    @classmethod
    def from_environment(cls, parallel: str = "ddp") -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not torch.distributed.is_initialized():
            if torch.cuda.is_available():  # one GPU per process of a node (torchrun's LOCAL_RANK), not all on cuda:0
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        return cls(int(os.environ.get("RANK", "0")), world, sharded=world > 1 and parallel == "fsdp")

    def reduce_scalar(self, value: float, op: str, device) -> float:
        """``value`` reduced over the ranks with ``op`` ("min" or "max"): one all-reduce with
        several processes, so every rank takes the same branch on the result."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([float(value)], device=device)
        torch.distributed.all_reduce(tensor, op={"min": torch.distributed.ReduceOp.MIN, "max": torch.distributed.ReduceOp.MAX}[op])
        return float(tensor.item())

    def average_(self, tensors) -> None:
        if self.world_size > 1:
            for t in tensors:
                torch.distributed.all_reduce(t)
                t.div_(self.world_size)


class StepTerms(NamedTuple):
    """What Trainer.step_objective returns for one transition of some rows."""

    total: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    ratio: torch.Tensor
    clip_fraction: torch.Tensor
    log_prob: torch.Tensor


class LogProbDrift:
    """|log p_new - log p_old| over row-steps (the rollout-vs-training mismatch that makes the
    first ratio differ from 1: batch shapes, kernels, bf16): its mean and max, and the largest
    |ratio - 1|; accumulated on the device and read once."""

    def __init__(self):
        self.total, self.largest, self.ratio_error, self.count = 0.0, 0.0, 0.0, 0

    def add(self, new: torch.Tensor, old: torch.Tensor) -> None:
        delta = new.float() - old.float()
        self.total = self.total + delta.abs().sum()
        self.largest = torch.maximum(torch.as_tensor(self.largest, device=delta.device), delta.abs().max())
        self.ratio_error = torch.maximum(torch.as_tensor(self.ratio_error, device=delta.device), torch.expm1(delta).abs().max())
        self.count += delta.numel()

    def summary(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}logprob_drift_mean": float(self.total) / max(self.count, 1), f"{prefix}logprob_drift_max": float(self.largest),
                f"{prefix}ratio_abs_error_max": float(self.ratio_error)}


class DivergedError(RuntimeError):
    """Training produced non-finite values (loss, gradients, weights or samples): the run stops at
    ``iteration``; checkpoints from before it hold the last finite weights."""

    def __init__(self, iteration: int, what: str, lr: float):
        self.iteration = iteration
        super().__init__(f"training diverged at iteration {iteration}: {what} (train.lr={lr:g}); the run stopped there, and its "
                         "checkpoints hold only weights from before it: continue with --resume and a lower train.lr "
                         "(or a smaller train.grad_clip or a larger train.beta_kl), or start again")


def check_history_fits(sampler, num_prompts: int) -> None:
    """ValueError naming the config keys when one rollout's recorded trajectories
    (sampler.history_bytes) exceed the memory available on the history's device."""
    needed, free = sampler.history_bytes(num_prompts), available_memory(sampler.history_device)
    if free is None or needed <= free:
        return
    schedule = sampler.schedule
    raise ValueError(
        f"one rollout's trajectory history needs {needed / 2**20:,.0f} MiB ({num_prompts} prompts x G_max {schedule.group_size_max} rows x "
        f"{schedule.num_steps + 1} latents of {tuple(sampler.model.latent_shape())} in {sampler.history_dtype}) "
        f"but {sampler.history_device} has {free / 2**20:,.0f} MiB available: lower G_max in sampler.schedule "
        f"({schedule}) or sampler.prompts_per_iteration, or set sampler.history_dtype=bf16 or sampler.history_device=cpu")


class Trainer:
    """config: progrpo_fast.train.config.Config; model: a Denoiser adapter (its ``network`` is
    trained); reward: a WeightedReward; prompts(iteration, rank, count) -> list of prompts."""

    def __init__(self, config, model, reward, prompts, distributed: Distributed | None = None):
        self.config, self.model, self.reward, self.prompts = config, model, reward, prompts
        self.dist = distributed or Distributed()
        train, samp = config.train, config.sampler
        self.schedule = PruneSchedule.from_string(samp.schedule)
        sample_schedule = PruneSchedule.naive(self.schedule.group_size_max, self.schedule.num_steps) if samp.static_ovf else self.schedule
        self.proxy = build_proxy(samp.proxy, reward=reward, network=model.network, grid=samp.grid, batch_size=samp.forward_rows)
        self.sampler = build_sampler(model, sample_schedule, samp, self.proxy, sharded=self.dist.sharded)
        check_history_fits(self.sampler, samp.prompts_per_iteration)
        if not self.trainable_steps:
            raise ValueError(f"sampler.method={samp.method!r} with eta={samp.eta} adds no noise before the last step: nothing to train "
                             f"(GRPO needs stochastic steps: use method sde, cps or ddim with eta > 0)")
        self.network = model.network
        self._setup_trainable(train)
        if train.gradient_checkpointing:  # before sharding: FSDP2 units then run inside the checkpointed blocks
            self.network.enable_gradient_checkpointing()
        self.sampler.step_context = self.step_context
        if self.dist.sharded:
            fully_shard_network(self.network)
            if self.reference_copy is not None:
                fully_shard_network(self.reference_copy)
            self.parameters = [p for p in self.network.parameters() if p.requires_grad]  # now sharded DTensors
        self.optimizer = torch.optim.AdamW(self.parameters, lr=train.lr, betas=tuple(train.adam_betas), eps=train.adam_eps,
                                           weight_decay=train.weight_decay)
        self.ema = self.fresh_ema() if train.ema_decay else None
        self.iteration = 0

    # ------------------------------------------------------------------ setup
    def _setup_trainable(self, train) -> None:
        self.network.requires_grad_(False)
        if train.lora:
            from peft import LoraConfig

            try:
                with seeded_global_rng(iteration_seed(train.seed, 0, ADAPTER_INIT_STREAM)):  # peft draws lora_A from the global RNG
                    self.network.add_adapter(LoraConfig(r=train.lora_rank, lora_alpha=train.lora_alpha, init_lora_weights="gaussian",
                                                        target_modules=list(train.lora_targets)))
            except ValueError as err:  # peft's NoMatchingPeftModuleError is a ValueError
                raise ValueError(f"train.lora_targets={list(train.lora_targets)} matched no module of "
                                 f"{type(self.network).__name__} ({err}); "
                                 "name Linear layers of the network, e.g. to_q, to_k, to_v, to_out.0") from err
            self.parameters = [p for n, p in self.network.named_parameters() if "lora_" in n]
            for p in self.parameters:  # adapters train in fp32 whatever the base model's dtype
                p.data = p.data.float()
            self.reference_copy = None
        else:
            self.network.requires_grad_(True)
            self.parameters = list(self.network.parameters())
            self.reference_copy = None
            if train.beta_kl > 0:
                import copy

                self.reference_copy = copy.deepcopy(self.network).requires_grad_(False).eval()
        for p in self.parameters:
            p.requires_grad_(True)
        self.parameter_names = [n for n, p in self.network.named_parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference_model(self):
        """The KL reference: the base model (LoRA disabled, or the frozen copy)."""
        if self.reference_copy is None:
            self.network.disable_adapters()
            try:
                yield
            finally:
                self.network.enable_adapters()
        else:
            self.model.network = self.reference_copy
            try:
                yield
            finally:
                self.model.network = self.network

    def step_context(self, step: int):
        """The context of step ``step``'s network evaluation in sampling: with
        train.adapter_steps=noisy the base model (LoRA off) at the steps that add no noise, so the
        policy differs from the base model only where it is trained."""
        if self.config.train.adapter_steps == "noisy" and self.sampler.stepper.deterministic(step):
            return self.reference_model()
        return contextlib.nullcontext()

    def autocast(self):
        dtype = AUTOCAST[self.config.train.mixed_precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=dtype)

    # ------------------------------------------------------------------ one iteration
    def rollout(self, iteration: int):
        """Iteration ``iteration``'s rollout, scored: (survivors, reward components, weighted
        reward, advantages, {"sample_s", "proxy_s", "reward_s"})."""
        cfg, train = self.config, self.config.train
        timings, device = {}, self.model.device
        start = synchronized_clock(device)
        prompts = self.prompts(iteration, self.dist.rank, cfg.sampler.prompts_per_iteration)
        with self.autocast():
            rollout = self.sampler.sample(prompts, seed=iteration_seed(train.seed, iteration, self.dist.rank))
        timings["sample_s"] = synchronized_clock(device) - start
        if rollout.proxy_seconds is not None:  # None: fused into the CUDA-graph segments
            timings["proxy_s"] = rollout.proxy_seconds  # part of sample_s

        start = synchronized_clock(device)
        images = decode_rows(self.model, rollout.final_latents.to(device), cfg.sampler.forward_rows)
        components, weighted = score_images(self.reward, images, rollout.row_prompts)
        if cfg.sampler.static_ovf:
            rollout, components, weighted = self._static_ovf(rollout, components, weighted)
        timings["reward_s"] = synchronized_clock(device) - start
        group = rollout.group_size
        if cfg.reward.aggregation == "per_reward":
            advantages = weighted_group_advantages(components, self.reward.weights, group, std=train.adv_std, clip=train.adv_clip)
        else:
            advantages = group_advantages(weighted, group, std=train.adv_std, clip=train.adv_clip)
        return rollout, components, weighted, advantages, timings

    def learning_rate(self, iteration: int) -> float:
        """train.lr at ``iteration`` under train.lr_schedule (constant, or cosine from lr to 0 over
        train.iterations): a function of the iteration alone, so a resumed run continues it."""
        train = self.config.train
        if train.lr_schedule == "constant":
            return train.lr
        return train.lr * 0.5 * (1.0 + math.cos(math.pi * min(iteration / train.iterations, 1.0)))

    def train_iteration(self) -> dict:
        lr = self.learning_rate(self.iteration)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        rollout, components, weighted, advantages, timings = self.rollout(self.iteration)
        iteration, group, device = self.iteration, rollout.group_size, self.model.device
        probe_report = self.proxy.observe(rollout, weighted)
        self.last_advantages = advantages  # the survivors' A_i of the latest iteration (read by bench clustering)

        start = synchronized_clock(device)
        stats = self._update(rollout, advantages.to(device))
        timings["train_s"] = synchronized_clock(device) - start
        self._check_finite_update(stats, rollout, iteration)
        if self.ema is not None:
            self._update_ema()
        self.iteration += 1

        kept_var = weighted.view(-1, group).var(1, unbiased=False).mean()
        metrics = {
            "iteration": iteration,
            "lr": lr,
            "reward_mean": float(weighted.mean()),
            "reward_std": float(weighted.std(unbiased=False)),
            "kept_group_reward_var": float(kept_var),
            **{f"reward_{name}": float(value.mean()) for name, value in components.items()},
            **stats,
            **timings,
            "trajectory_steps": rollout.trajectory_steps,
            "trajectory_steps_per_s": rollout.trajectory_steps / max(timings["sample_s"], 1e-9),
            **{f"probe_spearman_step{step}": value for step, value in probe_report.items()},
        }
        if rollout.prune_log:
            metrics["proxy_var_kept_over_all"] = float(torch.stack([(r.variance_kept / r.variance_all.clamp_min(1e-12)).mean()
                                                                    for r in rollout.prune_log]).mean())
        return self._reduce(metrics)

    @torch.no_grad()
    def _check_finite_update(self, stats: dict, rollout: Rollout, iteration: int) -> None:
        """DivergedError when the update's loss or gradient norm, the updated weights (each rank
        checks its shards) or the network's output with them (the rollout's first row at the first
        trained step: one forward pass) are not finite on some rank; so no checkpoint ever holds
        weights that sample NaN."""
        local = [p.to_local() if self.dist.sharded else p for p in self.parameters]
        step, row = self.trained_steps(iteration)[0], torch.zeros(1, dtype=torch.long, device=self.model.device)
        x, _ = recorded_transition(rollout, row, step)
        with self.autocast():
            output = self.model.predict(x, self.sampler.stepper.timesteps[step], {name: value[row] for name, value in rollout.cond.items()})
        finite = math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"]) and bool(ops.all_finite(*local, output))
        if not self.dist.reduce_scalar(finite, "min", self.model.device):  # not finite on some rank
            raise DivergedError(self.iteration, f"after the update (loss {stats['loss']:.3g}, gradient norm {stats['grad_norm']:.3g}) "
                                "the weights or the network's output are not finite", self.config.train.lr)

    def _static_ovf(self, rollout: Rollout, components, weighted):
        """Static OVF baseline: keep the exact max-variance K of each group's final rewards."""
        keep = self.schedule.final_group_size
        index = ops.prune_select(weighted, rollout.group_size, keep)
        rollout.latents = ops.compact_(index.to(rollout.latents.device), rollout.latents, as_tuple=False)
        rollout.log_probs, rollout.trajectory_ids, rollout.prompt_index, *values = ops.compact_(
            index, rollout.log_probs, rollout.trajectory_ids, rollout.prompt_index, *rollout.cond.values(), as_tuple=True)
        rollout.cond = dict(zip(rollout.cond, values))
        rollout.group_size = keep
        return rollout, {k: v[index] for k, v in components.items()}, weighted[index]

    @property
    def trainable_steps(self) -> list[int]:
        """The steps 0..T-2 that add noise (the last step is never trained)."""
        stepper = self.sampler.stepper
        return [t for t in range(self.schedule.num_steps - 1) if not stepper.deterministic(t)]

    def trained_steps(self, iteration: int) -> list[int]:
        """ceil(timestep_fraction * n) of the n trainable steps, chosen by a permutation keyed by
        (seed, iteration), in ascending order."""
        candidates = self.trainable_steps
        count = max(1, math.ceil(self.config.train.timestep_fraction * len(candidates)))
        gen = torch.Generator().manual_seed(iteration_seed(self.config.train.seed, iteration, 1))
        return sorted(candidates[i] for i in torch.randperm(len(candidates), generator=gen)[:count].tolist())

    def _update(self, rollout: Rollout, advantages: torch.Tensor) -> dict:
        train = self.config.train
        steps = self.trained_steps(self.iteration)
        rows, device = rollout.latents.shape[0], advantages.device
        gen = torch.Generator().manual_seed(iteration_seed(train.seed, self.iteration, 2))
        epochs = [list(torch.randperm(rows, generator=gen).to(device).split(train.minibatch_rows)) for _ in range(train.inner_epochs)]
        stats = {}
        old_log_probs = rollout.log_probs
        if train.recompute_old_logprobs:
            old_log_probs = self.recompute_log_probs(rollout, epochs[0], steps)
            sampler_drift = LogProbDrift()
            sampler_drift.add(old_log_probs[:, steps], rollout.log_probs[:, steps])
            stats.update(sampler_drift.summary(prefix="sampler_"))  # what the recomputation corrected
        totals = {"loss": 0.0, "policy_loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "grad_norm": 0.0}
        drift, updates, terms = LogProbDrift(), 0, 0
        for minibatches in epochs:
            for start in range(0, len(minibatches), train.grad_accum):
                chunk = minibatches[start : start + train.grad_accum]
                self.optimizer.zero_grad(set_to_none=True)
                for rows_idx in chunk:
                    cond = {name: value[rows_idx] for name, value in rollout.cond.items()}
                    for step in steps:
                        x, x_next = recorded_transition(rollout, rows_idx, step)
                        out = self.step_objective(step, x, x_next, old_log_probs[rows_idx, step], advantages[rows_idx], cond)
                        (out.total / (len(steps) * len(chunk))).backward()
                        if updates == 0:  # before the first optimizer step: the weights that sampled
                            drift.add(out.log_prob.detach(), old_log_probs[rows_idx, step])
                        totals["loss"] += float(out.total.detach())
                        totals["policy_loss"] += float(out.policy_loss.detach())
                        totals["kl"] += float(out.kl.detach())
                        totals["clip_fraction"] += float(out.clip_fraction)
                        terms += 1
                if not self.dist.sharded:  # FSDP reduce-scatters (averages) the gradients in backward
                    self.dist.average_([p.grad for p in self.parameters if p.grad is not None])
                totals["grad_norm"] += float(full_tensor(torch.nn.utils.clip_grad_norm_(self.parameters, train.grad_clip)))
                self.optimizer.step()
                updates += 1
        stats.update({name: value / max(terms, 1) for name, value in totals.items() if name != "grad_norm"})
        stats["grad_norm"] = totals["grad_norm"] / max(updates, 1)
        stats.update(drift.summary())
        stats["first_ratio_abs_error"] = stats.pop("ratio_abs_error_max")
        stats["trained_steps"] = len(steps)
        return stats

    @torch.no_grad()
    def recompute_log_probs(self, rollout: Rollout, minibatches: list[torch.Tensor], steps: list[int]) -> torch.Tensor:
        """The rollout's log-probs at ``steps`` recomputed with the current weights, minibatch by
        minibatch exactly as the update evaluates them (train.recompute_old_logprobs)."""
        stepper, log_probs = self.sampler.stepper, rollout.log_probs.clone()
        for rows_idx in minibatches:
            cond = {name: value[rows_idx] for name, value in rollout.cond.items()}
            for step in steps:
                x, x_next = recorded_transition(rollout, rows_idx, step)
                with self.autocast():
                    out = stepper(step, x, self.model.predict(x, stepper.timesteps[step], cond), x_next=x_next)
                log_probs[rows_idx, step] = out.log_prob
        return log_probs

    def step_objective(self, step: int, x, x_next, old_log_prob, advantages, cond) -> StepTerms:
        """The loss of one recorded transition x -> x_next of some rows (loss + beta_kl * KL, its
        clipped policy loss, KL to the reference, ratio, clip fraction, the new log-prob),
        differentiable in the trainable weights."""
        train, stepper = self.config.train, self.sampler.stepper
        timestep = stepper.timesteps[step]
        with self.autocast():
            out = stepper(step, x, self.model.predict(x, timestep, cond), x_next=x_next)
        loss, ratio, clip_fraction = policy_loss(out.log_prob, old_log_prob, advantages, train.clip_range)
        kl = torch.zeros((), device=x.device)
        if train.beta_kl > 0:
            with torch.no_grad(), self.reference_model(), self.autocast():
                reference = stepper(step, x, self.model.predict(x, timestep, cond), x_next=x_next)
            kl = kl_to_reference(out.mean, reference.mean, out.std).mean()
        return StepTerms(loss + train.beta_kl * kl, loss, kl, ratio, clip_fraction, out.log_prob)

    def fresh_ema(self) -> list[torch.Tensor]:
        """An EMA that starts from the current trainable weights (fp32)."""
        return [p.detach().clone().float() for p in self.parameters]

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.config.train.ema_decay
        for average, p in zip(self.ema, self.parameters):
            average.mul_(decay).add_(p.detach().float(), alpha=1 - decay)

    def _reduce(self, metrics: dict) -> dict:
        if self.dist.world_size == 1:
            return metrics
        keys = [k for k, v in metrics.items() if isinstance(v, float)]
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
        self.dist.average_([values])
        return {**metrics, **dict(zip(keys, values.tolist()))}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The whole (unsharded) training state; under FSDP a collective that every rank calls
        (train.sharded_checkpoint saves FSDP runs without gathering)."""
        from progrpo_fast.train.checkpoint import capture_rng_state

        return {
            "iteration": self.iteration,
            "trainable": {n: full_tensor(p.detach()).clone() for n, p in zip(self.parameter_names, self.parameters)},
            "optimizer": self._optimizer_state(),
            "ema": None if self.ema is None else [full_tensor(e).clone() for e in self.ema],
            "probe": self.proxy.state_dict(),
            "rng": capture_rng_state(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = state["trainable"]
        if list(saved) != self.parameter_names:
            raise ValueError("the checkpoint's trainable parameters do not match this model/config (different LoRA targets or rank?)")
        with torch.no_grad():
            for name, p in zip(self.parameter_names, self.parameters):
                p.copy_(shard_like(saved[name], p))
        self._load_optimizer_state(state["optimizer"])
        saved_ema = None if state["ema"] is None else [shard_like(e, p) for e, p in zip(state["ema"], self.parameters)]
        self.ema = self.resumed_ema(saved_ema)
        self.restore_host_state(state.get("probe"), state["rng"], state["iteration"])

    def resumed_ema(self, saved: list | None) -> list | None:
        """The EMA after a resume from the checkpoint's ``saved`` EMA (laid out like the
        parameters; None: it has none): None when this config has EMA off (the saved one, if any,
        is dropped), the resumed weights when EMA is switched on at resume, else ``saved``."""
        if self.config.train.ema_decay is None:
            return None
        return self.fresh_ema() if saved is None else saved

    def restore_host_state(self, probe, rng: dict, iteration: int) -> None:
        """Restores the state a checkpoint keeps besides tensors: the pruning probe's (None:
        nothing), every RNG's and the iteration."""
        from progrpo_fast.train.checkpoint import restore_rng_state

        if probe is not None:
            self.proxy.load_state_dict(probe)
        restore_rng_state(rng)
        self.iteration = iteration

    def _optimizer_state(self) -> dict:
        if not self.dist.sharded:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.network, self.optimizer, options=StateDictOptions(full_state_dict=True))

    def _load_optimizer_state(self, state: dict) -> None:
        saved_sharded = any(isinstance(key, str) for key in state["state"])  # FSDP's state is keyed by parameter name
        if state["state"] and saved_sharded != self.dist.sharded:
            saved, now = ("fsdp", "ddp or one process") if saved_sharded else ("ddp or one process", "fsdp")
            raise ValueError(f"the checkpoint was written with train.parallel={saved} but this run uses {now}; "
                             "resume with the same train.parallel")
        if not self.dist.sharded:
            self.optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.network, self.optimizer, state, options=StateDictOptions(full_state_dict=True))


def recorded_transition(rollout: Rollout, rows: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, x_{t+1}) of ``rows`` (indices on the model's device) as fp32 on that device; the
    history may live on the host or in fp16/bf16 (sampler.history_device / history_dtype)."""
    picked = rollout.latents[rows.to(rollout.latents.device)]
    return picked[:, step].to(rows.device, torch.float32), picked[:, step + 1].to(rows.device, torch.float32)


def write_jsonl(path, record: dict) -> None:
    """Appends ``record`` as one JSON line (a full disk: DiskFullError naming the file; a torn
    last line is dropped on resume)."""
    from progrpo_fast.train.checkpoint import raise_if_disk_full

    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:
        raise_if_disk_full(err, Path(path), "the log")
        raise
