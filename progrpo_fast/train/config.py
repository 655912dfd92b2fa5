"""Run configuration: one dataclass tree, YAML presets, ``SECTION.KEY=VALUE`` overrides, validation.

    config = load_config("sd35m_pickscore", ["model.path=/models/sd3.5-medium", "train.lr=1e-4"])

Defaults are the built-in shapes task (``configs/shapes.yaml`` spells them out). A preset or YAML
file may start with ``extends: PRESET_OR_PATH`` and then set only what differs: sections merge
key by key, values (dicts and lists included) replace the base's.

Validation has two levels. Structure (``validate(check_paths=False)``): unknown keys, types,
ranges, the prune schedule and its fit with the sampler and model; every Config built by
``from_dict`` / ``from_yaml`` / ``apply_overrides`` passes it. Files (``check_paths=True``, the
default of ``validate`` and ``load_config``): model.path is given and is a diffusers folder for
non-shapes models, reward paths exist, a prompt file exists and holds a prompt. Presets ship with
``model.path: null`` so they pass the first level only; training runs the second.

Values given as strings are parsed with ``yaml.safe_load`` and checked against the field's type;
floats also accept strings like ``1e-4`` (which YAML 1.1 reads as text), and string fields keep
an override's text as written (``train.mixed_precision=no`` is "no", not False).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from progrpo_fast.models.pipeline_folder import read_model_index
from progrpo_fast.ops._checks import is_int
from progrpo_fast.sampling.schedule import PruneSchedule
from progrpo_fast.sampling.stepper import FLOW_METHODS
from progrpo_fast.train.model_kinds import MODEL_KINDS, kind_names

__all__ = [
    "Config", "ModelConfig", "SamplerConfig", "RewardConfig", "TrainConfig", "LogConfig", "PromptsConfig",
    "PRESETS_DIR", "apply_overrides", "available_presets", "load_config",
]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"

ModelKindName = Literal[tuple(MODEL_KINDS)]  # the model.kind values, in the order of train.model_kinds.MODEL_KINDS


# ---------------------------------------------------------------------------------------- fields
def option(default, check=None):
    """A dataclass field with a (deep-copied) default and an optional range check
    ``(predicate, description of what is expected)``."""
    metadata = {"check": check} if check else {}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def positive():
    return (lambda v: v > 0, "> 0")


def non_negative():
    return (lambda v: v >= 0, ">= 0")


def at_least(low):
    return (lambda v: v >= low, f">= {low}")


def optional(check):
    predicate, expected = check
    return (lambda v: v is None or predicate(v), f"null or {expected}")


# -------------------------------------------------------------------------------------- sections
@dataclass
class ModelConfig:
    """The model to train.

    kind: "shapes" (the built-in tiny SD3 model), "sd3", "flux", "sd1", "qwen_image" (Qwen-Image),
        "wan" (Wan2.1 / Wan2.2-TI2V text-to-video), or random weights at a published size for
        throughput benchmarks (no path): "sd35m_random" (SD3.5-Medium), "qwen_image_random"
        (Qwen-Image, 20B), "wan21_1p3b_random" (Wan2.1-T2V-1.3B).
    path: local diffusers folder; None with kind "shapes" loads the shipped weights.
    dtype: weights' dtype: "fp32", "bf16" or "fp16".
    resolution: image side in pixels (the height for Wan; None: the model's default).
    width: Wan's video width in pixels (None: 832 with the default height, else = resolution).
    num_frames: Wan's frames per video, 4k + 1 (None: 81).
    guidance_scale: classifier-free guidance scale (<= 1 disables CFG; FLUX: distilled guidance;
        Qwen-Image: the true-CFG scale).
    max_sequence_length: T5 tokens for SD3 / FLUX (None: the adapter's default).
    attention: "sdpa" (torch) or "xformers".
    """

    kind: ModelKindName = option("shapes")
    path: str | None = option(None)
    dtype: Literal["fp32", "bf16", "fp16"] = option("fp32")
    resolution: int | None = option(None, optional((lambda v: v >= 8 and v % 8 == 0, "a multiple of 8, >= 8")))
    width: int | None = option(None, optional((lambda v: v >= 8 and v % 8 == 0, "a multiple of 8, >= 8")))
    num_frames: int | None = option(None, optional((lambda v: v >= 1 and (v - 1) % 4 == 0,
                                                    "4k + 1 frames (the Wan VAE compresses time 4x)")))
    guidance_scale: float = option(1.0, non_negative())
    max_sequence_length: int | None = option(None, optional(at_least(1)))
    attention: Literal["sdpa", "xformers"] = option("sdpa")


@dataclass
class SamplerConfig:
    """Expand-and-prune sampling.

    schedule: PruneSchedule string "G_MAX:T1=K1,T2=K2@NUM_STEPS" ("G@NUM_STEPS" = naive GRPO).
    proxy: what checkpoints prune by: "latent", "reward" (the paper's), "probe", "hidden" (a probe on
        the denoiser's own hidden features, never decodes) or "random".
    method: step rule: "sde" (Flow-GRPO), "cps" or "ode" for flow models; "ddim" for sd1.
    eta: noise level of the step rule (Flow-GRPO's 0.7 for sde; <= 1 for cps; 1.0 = DDPM for ddim).
    noise_steps: the steps (0-based, before the last) that add noise, an SDE window as in
        Flow-GRPO-Fast / MixGRPO: only they are trained, and every other step is deterministic
        (eta = 0), so the group's reward spread comes from the trained steps alone. null: every step.
    grid: latent pooling grid (grid x grid per channel) of the latent and probe proxies.
    prompts_per_iteration: prompts sampled per iteration on each rank (groups of G_max rows).
    static_ovf: the static-OVF baseline: sample G_max unpruned, then keep each group's K by exact
        OVF on the final rewards (K = the schedule's final group size).
    cuda_graphs: "auto" (capture each rollout segment as a CUDA graph on a CUDA device when the
        model allows it, else sample eagerly, saying why), "true" (require it: an error naming the
        reason otherwise) or "false" (always eager).
    trajectory_id_stride: row j of prompt p samples the keyed noise of trajectory p * stride + j;
        null: G_max. Paired comparisons set it to another method's G_max, so naive GRPO's G
        trajectories are the first G of each of that method's groups (same prompts, same noise).
    history_device: where the recorded trajectories (rows x (T+1) latents) live: "model" (the
        model's device) or "cpu" (pinned host memory, copied back per trained minibatch).
    history_dtype: their dtype: "fp32", or "bf16" / "fp16" (half the memory; sampling then steps
        from, and scores, the rounded latents, so the trainer replays the same transitions).
    forward_rows: at most this many trajectories per network call while sampling and scoring
        (the denoiser, a CFG pair counting once, and the VAE decodes of the reward proxy and the
        final reward); null: all rows in one call. Caps activation memory at large groups; on a
        CPU, calls of 12-24 rows run faster than one large batch.
    """

    schedule: str = option("16:2=8,3=4@5")
    proxy: Literal["latent", "reward", "probe", "hidden", "random"] = option("reward")
    method: Literal["sde", "cps", "ode", "ddim"] = option("sde")
    eta: float = option(0.7, non_negative())
    noise_steps: list[int] | None = option([0, 1])
    grid: int = option(4, at_least(1))
    prompts_per_iteration: int = option(8, at_least(1))
    static_ovf: bool = option(False)
    cuda_graphs: Literal["auto", "true", "false"] = option("auto")
    trajectory_id_stride: int | None = option(None, optional(at_least(1)))
    history_device: Literal["model", "cpu"] = option("model")
    history_dtype: Literal["fp32", "bf16", "fp16"] = option("fp32")
    forward_rows: int | None = option(None, optional(at_least(1)))


@dataclass
class RewardConfig:
    """Rewards.

    weights: reward name -> weight; the trained reward is the weighted sum.
    aggregation: "sum" (advantages of the weighted reward) or "per_reward" (weighted sum of
        each reward's group advantages).
    paths: reward name -> local model path (checkpoint or folder) for rewards that load a model.
    http_url: the "http" reward's service (``progrpo-fast serve-reward``), http(s)://HOST:PORT;
        replicas comma-separated (failover, round robin); None when unused.
    http_timeout_s: total deadline of one request to a service ("http": a batch, "vlm_judge": an
        image), every retry and pause included.
    http_retries: further rounds over the replicas after each failed once (connection errors,
        timeouts, 429, 5xx; a 4xx or bad reply fails at once).
    http_backoff_s: pause before retry round r: http_backoff_s * 2**(r - 1), plus up to 25% jitter.
    http_max_response_bytes: replies over this are refused (reading stops there).
    http_token_env: environment variable holding the "http" service's token (sent as
        ``Authorization: Bearer``; unset or empty: none). The token itself never enters a config.
    vlm_url: the "vlm_judge" reward's OpenAI-compatible server (vLLM, SGLang), http(s)://HOST:PORT
        (or .../v1); replicas comma-separated; None when unused.
    vlm_model: the model name that server serves (as in GET /v1/models).
    vlm_template: the question asked with each image, {prompt} standing for its prompt; None: the
        built-in 0-10 rating question (rewards.vlm.DEFAULT_TEMPLATE).
    vlm_score_regex: where the score is in the reply: the first match (its first group if any);
        None: the first number.
    vlm_score_range: (low, high) the score must lie in; the reward is (score - low) / (high - low).
    vlm_concurrency: judge requests in flight at once.
    vlm_max_tokens: reply length limit of the judge.
    vlm_token_env: environment variable holding the judge server's API key (vllm serve --api-key).
    frame_stride: video models: image rewards score every frame_stride-th frame, averaged
        (video rewards, e.g. temporal_consistency and moving_shapes, see whole videos).
    """

    _env_name = optional((lambda v: v.isascii() and v.isidentifier(), "an environment variable name like PROGRPO_FAST_REWARD_TOKEN"))
    weights: dict[str, float] = option({"shapes": 1.0})
    aggregation: Literal["sum", "per_reward"] = option("sum")
    paths: dict[str, str] = option({})
    http_url: str | None = option(None)
    http_timeout_s: float = option(120.0, positive())
    http_retries: int = option(2, non_negative())
    http_backoff_s: float = option(0.5, non_negative())
    http_max_response_bytes: int = option(1 << 20, at_least(1))
    http_token_env: str | None = option("PROGRPO_FAST_REWARD_TOKEN", _env_name)
    vlm_url: str | None = option(None)
    vlm_model: str | None = option(None)
    vlm_template: str | None = option(None)
    vlm_score_regex: str | None = option(None)
    vlm_score_range: tuple[float, float] = option((0.0, 10.0))
    vlm_concurrency: int = option(8, at_least(1))
    vlm_max_tokens: int = option(16, at_least(1))
    vlm_token_env: str | None = option("PROGRPO_FAST_VLM_TOKEN", _env_name)
    frame_stride: int = option(4, at_least(1))


@dataclass
class TrainConfig:
    """The GRPO update.

    iterations: training iterations (one rollout + update each).
    seed: seeds prompts, sampling noise, trained steps and minibatch order per iteration.
    lr: AdamW learning rate (the peak of lr_schedule).
    lr_schedule: "constant" (lr every iteration) or "cosine": lr * (1 + cos(pi * i / iterations)) / 2 at
        iteration i, from lr at 0 towards 0 at train.iterations, so the last updates are small steps.
    weight_decay: AdamW weight decay.
    adam_betas: AdamW (beta1, beta2).
    adam_eps: AdamW epsilon.
    lora: train a LoRA adapter (True) or the full network (False).
    lora_rank: LoRA rank r.
    lora_alpha: LoRA alpha (scale alpha / r).
    lora_targets: module names (suffixes) that get LoRA adapters.
    adapter_steps: where the LoRA adapter acts when sampling: "all" steps, or "noisy": only at the
        steps that add noise (the trained ones, sampler.noise_steps), the base model elsewhere, so
        an update cannot change the untrained deterministic steps.
    beta_kl: weight of the KL penalty to the reference (base) model; 0 disables it.
    clip_range: PPO ratio clip epsilon.
    adv_clip: advantages are clipped to [-adv_clip, adv_clip].
    adv_std: advantage normaliser: "group" (each group's std) or "global" (the batch's).
    timestep_fraction: fraction of the T - 1 trainable steps trained per iteration, in (0, 1].
    inner_epochs: passes over each rollout.
    minibatch_rows: survivor rows per forward/backward.
    grad_accum: minibatches accumulated per optimizer step.
    grad_clip: gradient-norm clip.
    ema_decay: EMA of the trainable weights per iteration, None disables it.
    mixed_precision: autocast dtype: "no", "bf16" or "fp16".
    parallel: with several processes (torchrun), "ddp" replicates the network and all-reduces the
        gradients; "fsdp" shards weights, gradients and optimizer state across the ranks (FSDP2
        fully_shard on each block of the network's block lists, then on the whole network) and
        saves checkpoints sharded (train.sharded_checkpoint), resumable on any number of processes.
    recompute_old_logprobs: before the update, recompute the old log-probs with the current
        weights in the trainer's own minibatch layout (no grad), so the first inner step's ratio
        is exactly 1 even where the sampler's batch shapes give other rounding (bf16); costs one
        forward pass per trained row-step.
    gradient_checkpointing: recompute each block's activations in backward instead of storing
        them (diffusers' enable_gradient_checkpointing on the network): same gradients, less memory.
    deterministic: a seed reproduces bit for bit across processes on one machine: 1 CPU thread and
        torch's deterministic algorithms (train.determinism); slower on a multi-core CPU.
    """

    iterations: int = option(120, at_least(1))
    seed: int = option(0, non_negative())
    lr: float = option(1e-3, positive())
    lr_schedule: Literal["constant", "cosine"] = option("cosine")
    weight_decay: float = option(1e-4, non_negative())
    adam_betas: tuple[float, float] = option((0.9, 0.999), (lambda v: all(0 <= b < 1 for b in v), "two values in [0, 1)"))
    adam_eps: float = option(1e-8, positive())
    lora: bool = option(True)
    lora_rank: int = option(32, at_least(1))
    lora_alpha: int = option(64, at_least(1))
    lora_targets: list[str] = option(["to_q", "to_k", "to_v", "to_out.0"])
    adapter_steps: Literal["all", "noisy"] = option("all")
    beta_kl: float = option(0.01, non_negative())
    clip_range: float = option(1e-4, positive())
    adv_clip: float = option(5.0, positive())
    adv_std: Literal["group", "global"] = option("group")
    timestep_fraction: float = option(1.0, (lambda v: 0 < v <= 1, "in (0, 1]"))
    inner_epochs: int = option(1, at_least(1))
    minibatch_rows: int = option(32, at_least(1))
    grad_accum: int = option(1, at_least(1))
    grad_clip: float = option(1.0, positive())
    ema_decay: float | None = option(None, optional((lambda v: 0 < v < 1, "in (0, 1)")))
    mixed_precision: Literal["no", "bf16", "fp16"] = option("no")
    parallel: Literal["ddp", "fsdp"] = option("ddp")
    recompute_old_logprobs: bool = option(False)
    gradient_checkpointing: bool = option(False)
    deterministic: bool = option(False)


@dataclass
class LogConfig:
    """Outputs.

    out_dir: run folder: log.jsonl, checkpoints/, reward curve, TensorBoard / W&B files.
    checkpoint_every: iterations between checkpoints (the last iteration always saves).
    keep_last: checkpoints kept on disk.
    tensorboard: also log to TensorBoard.
    wandb: also log to Weights & Biases.
    progress: show a progress bar.
    eval_prompts: evaluation prompts (their own draw from prompts.source; the first of prompts.pool
        when it is set) sampled before and after training with fixed noise: the mean reward of
        each and a before/after image grid; 0 skips.
    eval_per_prompt: samples per evaluation prompt.
    eval_every: also evaluate every this many iterations (logged as eval_reward); 0: only before and after.
    """

    out_dir: str = option("runs/shapes")
    checkpoint_every: int = option(10, at_least(1))
    keep_last: int = option(3, at_least(1))
    tensorboard: bool = option(False)
    wandb: bool = option(False)
    progress: bool = option(True)
    eval_prompts: int = option(64, at_least(0))
    eval_per_prompt: int = option(8, at_least(1))
    eval_every: int = option(10, at_least(0))


@dataclass
class PromptsConfig:
    """Training prompts.

    source: "shapes" (the task's caption sampler), "shapes_video" (the moving-shape video task's
        captions, progrpo_fast.tasks.shapes_video) or a text file, one prompt per line.
    pool: with source "shapes", > 0 trains on a fixed pool of this many captions (drawn once from
        train.seed; the evaluation then covers the pool and, separately, as many fresh held-out
        captions); 0 draws fresh captions every iteration. Ignored for prompt files.
    """

    source: str = option("shapes")
    pool: int = option(512, at_least(0))


# ----------------------------------------------------------------------------------- type checks
SCALAR_NOUNS = {int: "int", float: "float", bool: "bool", str: "string"}


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (types.UnionType, typing.Union):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is dict:
        return f"a mapping of {SCALAR_NOUNS[args[0]]}s to {SCALAR_NOUNS[args[1]]}s"
    if origin is list:
        return f"a list of {SCALAR_NOUNS[args[0]]}s"
    if origin is tuple:
        return f"a list of {len(args)} {SCALAR_NOUNS[args[0]]}s"
    return {int: "an int", float: "a float", bool: "a bool (true/false)", str: "a string"}[tp]


def _accepts_str(tp) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return any(_accepts_str(a) for a in args)
    return tp is str or (origin is Literal and all(isinstance(a, str) for a in args))


def _coerce(value, tp, key: str):
    """value checked against tp and normalised (int -> float, list -> tuple, "1e-4" -> 1e-4,
    "None" -> None for optional fields)."""

    def wrong(extra: str = ""):
        hint = " (quote strings that YAML reads as booleans, e.g. 'no')" if isinstance(value, bool) and _accepts_str(tp) else ""
        return ValueError(f"config key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__}){extra}{hint}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if isinstance(value, bool) and str(value).lower() in args:  # YAML reads true / false as booleans
            return str(value).lower()
        if isinstance(value, str) and value in args:
            return value
        raise wrong()
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong()
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)) or (origin is tuple and len(value) != len(args)):
            raise wrong()
        items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong()
    if tp is int:
        if is_int(value):
            return value
        raise wrong()
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise wrong() from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise wrong(" (finite numbers only)" if isinstance(value, float) else "")
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong()
    raise TypeError(f"unsupported config field type {tp!r} for '{key}'")


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``; a ValueError naming ``what`` and the file when it is binary
    (holds NUL bytes) or not UTF-8, or cannot be read."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as err:
        raise ValueError(f"{what}: cannot read {str(path)!r}: {err.strerror or err}") from None
    if b"\0" in data:
        raise ValueError(f"{what}: {str(path)!r} is a binary file (it holds NUL bytes); a UTF-8 text file is expected")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(f"{what}: {str(path)!r} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); "
                         "save it as UTF-8") from None


def _unknown(kind: str, name: str, valid: list[str], where: str) -> ValueError:
    close = difflib.get_close_matches(name.rsplit(".", 1)[-1], valid, n=1)
    suggestion = f" (did you mean '{close[0]}'?)" if close else ""
    return ValueError(f"unknown config {kind} '{name}'{suggestion}; valid {where}: {', '.join(valid)}")


# ---------------------------------------------------------------------------------------- config
@dataclass
class Config:
    """The whole run: model, sampler, reward, train, log and prompts sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)

    # ------------------------------------------------------------------ construction
    @classmethod
    def section_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def section_fields(cls, section: str) -> dict[str, object]:
        """Field name -> type of one section."""
        section_class = typing.get_type_hints(cls)[section]
        return typing.get_type_hints(section_class)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        """A validated (structure only) Config from {section: {key: value}}; missing keys keep defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"a config must be a mapping of sections ({', '.join(cls.section_names())}), got {data!r}")
        hints = typing.get_type_hints(cls)
        sections = {}
        for section, values in data.items():
            if section not in hints:
                raise _unknown("section", str(section), cls.section_names(), "sections")
            if values is None:
                values = {}
            if not isinstance(values, dict):
                raise ValueError(f"config section '{section}' must be a mapping of keys to values, got {values!r}")
            valid = list(cls.section_fields(section))
            for key in values:
                if key not in valid:
                    raise _unknown("key", f"{section}.{key}", valid, f"keys in '{section}'")
            sections[section] = hints[section](**values)
        return cls(**sections).validate(check_paths=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        """A Config from a YAML file (``extends:`` resolved), validated for structure."""
        return cls.from_dict(_read_yaml(Path(path), seen=()))

    def to_dict(self) -> dict:
        """{section: {key: value}} of plain YAML-safe types (tuples become lists)."""

        def plain(value):
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value

        return {name: plain(dataclasses.asdict(getattr(self, name))) for name in self.section_names()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    # ------------------------------------------------------------------ validation
    def validate(self, check_paths: bool = True) -> Config:
        """Checks (and normalises in place) every value; raises ValueError naming the dotted key
        and what is expected. ``check_paths`` also checks the files the run will read."""
        for section in self.section_names():
            values, hints = getattr(self, section), self.section_fields(section)
            for f in dataclasses.fields(values):
                key = f"{section}.{f.name}"
                value = _coerce(getattr(values, f.name), hints[f.name], key)
                setattr(values, f.name, value)
                if "check" in f.metadata:
                    predicate, expected = f.metadata["check"]
                    if not predicate(value):
                        raise ValueError(f"config key '{key}' must be {expected}, got {value!r}")
        self._check_consistency()
        if check_paths:
            self._check_paths()
        return self

    def _check_consistency(self) -> None:
        model, samp, reward, train = self.model, self.sampler, self.reward, self.train
        try:
            schedule = PruneSchedule.from_string(samp.schedule)
        except ValueError as err:
            raise ValueError(f"config key 'sampler.schedule' is invalid: {err}") from None
        if schedule.final_group_size < 2:
            raise ValueError(f"config key 'sampler.schedule' ends with a group of {schedule.final_group_size} row per prompt "
                             f"({samp.schedule!r}): GRPO's advantages compare the rows of a group, so every advantage would be 0 and "
                             "nothing would train; keep >= 2 rows per prompt at the end (e.g. '16:2=8,3=4@5' or '4@5')")
        kind = MODEL_KINDS[model.kind]
        if not kind.flow and samp.method != "ddim":
            raise ValueError(f"model.kind={model.kind!r} is a diffusion (epsilon) model and samples with DDIM only: "
                             f"set sampler.method=ddim (got {samp.method!r})")
        if kind.flow and samp.method not in FLOW_METHODS:
            diffusion = " or ".join(f"model.kind={name!r}" for name in kind_names(flow=False))
            if kind.listed_flow_model:
                raise ValueError(f"sampler.method={samp.method!r} needs {diffusion}; "
                                 f"flow models ({', '.join(kind_names(listed_flow_model=True))}) "
                                 f"take one of {', '.join(FLOW_METHODS)}")
            raise ValueError(f"sampler.method={samp.method!r} needs {diffusion}; model.kind={model.kind!r} is a flow model "
                             f"and takes one of {', '.join(FLOW_METHODS)}")
        if samp.method == "cps" and samp.eta > 1:
            raise ValueError("config key 'sampler.eta' must be <= 1 with method 'cps' (std = sigma_next * sin(eta * pi / 2)), "
                             f"got {samp.eta}")
        if samp.noise_steps is not None and not (samp.noise_steps and all(0 <= t < schedule.num_steps - 1 for t in samp.noise_steps)):
            raise ValueError(f"config key 'sampler.noise_steps' must be null or a non-empty list of steps in [0, {schedule.num_steps - 1}) "
                             f"(the schedule has {schedule.num_steps} steps and its last is never trained), got {samp.noise_steps!r}")
        if samp.trajectory_id_stride is not None and samp.trajectory_id_stride < schedule.group_size_max:
            raise ValueError("config key 'sampler.trajectory_id_stride' must be null or >= the schedule's "
                             f"G_max = {schedule.group_size_max} (groups must not share trajectory ids), got {samp.trajectory_id_stride}")
        if samp.static_ovf and schedule.is_naive:
            raise ValueError("sampler.static_ovf=true needs a pruned schedule to take K of G_max from (e.g. '24:5=16,7=12@10'), "
                             f"got the naive {samp.schedule!r}")
        if kind.packed_name is not None and model.resolution is not None and model.resolution % 16:
            raise ValueError(f"config key 'model.resolution' must be a multiple of 16 for {kind.packed_name} (2x2 latent packing), "
                             f"got {model.resolution}")
        for key in ("width", "num_frames"):
            if getattr(model, key) is not None and not kind.video:
                raise ValueError(f"config key 'model.{key}' applies to video models (model.kind={' or '.join(kind_names(video=True))}), "
                                 f"not {model.kind!r}: set it to null")
        if not reward.weights:
            raise ValueError("config key 'reward.weights' must name at least one reward, e.g. reward.weights={shapes: 1.0}")
        if not any(reward.weights.values()):
            raise ValueError(f"config key 'reward.weights' has only zero weights ({reward.weights}): the trained reward would be 0 "
                             "for every image and nothing would train; give at least one reward a non-zero weight")
        if "http" in reward.weights and not reward.http_url:
            raise ValueError("reward.weights uses the 'http' reward but reward.http_url is not set: pass reward.http_url=http://HOST:PORT "
                             "(replicas comma-separated)")
        if "vlm_judge" in reward.weights and not (reward.vlm_url and reward.vlm_model):
            raise ValueError("reward.weights uses the 'vlm_judge' reward: set reward.vlm_url=http://HOST:PORT (an OpenAI-compatible "
                             f"server) and reward.vlm_model=NAME (the model it serves), got {reward.vlm_url!r} and {reward.vlm_model!r}")
        from progrpo_fast.rewards.client import parse_urls
        from progrpo_fast.rewards.vlm import DEFAULT_SCORE_REGEX, DEFAULT_TEMPLATE, check_judge_options

        for key in ("http_url", "vlm_url"):
            if getattr(reward, key) is not None:
                parse_urls(getattr(reward, key), f"config key 'reward.{key}'")
        check_judge_options(DEFAULT_TEMPLATE if reward.vlm_template is None else reward.vlm_template,
                            DEFAULT_SCORE_REGEX if reward.vlm_score_regex is None else reward.vlm_score_regex,
                            reward.vlm_score_range, lambda option: f"config key 'reward.vlm_{option}'")
        if train.adapter_steps == "noisy" and not train.lora:
            raise ValueError("train.adapter_steps=noisy switches a LoRA adapter off at the deterministic steps: it needs train.lora=true")
        if train.lora and not train.lora_targets:
            raise ValueError("config key 'train.lora_targets' must name at least one module when train.lora is true, "
                             "e.g. [to_q, to_k, to_v, to_out.0]")

    def _check_paths(self) -> None:
        model = self.model
        kind = MODEL_KINDS[model.kind]
        if kind.random_weights_of is not None and model.path is not None:
            raise ValueError(f"model.kind={model.kind} builds random weights and takes no model.path: set model.path=null, "
                             f"or model.kind={kind.random_weights_of} to load a local folder")
        if model.path is None and kind.download is not None:
            example = kind.download
            folder = f"/models/{example.split('/')[1]}"
            raise ValueError(
                f"config key 'model.path' is required for model.kind={model.kind!r}: set it to a local diffusers folder, "
                f"e.g. model.path={folder} (fetch one with: huggingface-cli download {example} --local-dir {folder})")
        if model.path is not None:
            path = Path(model.path).expanduser()
            if not path.is_dir():
                raise ValueError(f"config key 'model.path': {model.path!r} is not a directory "
                                 "(a local diffusers pipeline folder is expected)")
            if not (path / "model_index.json").is_file():
                raise ValueError(f"config key 'model.path': {model.path!r} holds no model_index.json, "
                                 "so it is not a diffusers pipeline folder (save one with pipeline.save_pretrained)")
            try:
                read_model_index(path)
            except ValueError as err:
                raise ValueError(f"config key 'model.path': {err}") from None
        for name, reward_path in self.reward.paths.items():
            if not Path(reward_path).expanduser().exists():
                raise ValueError(f"config key 'reward.paths.{name}': {reward_path!r} does not exist")
        source = self.prompts.source
        if source not in ("shapes", "shapes_video"):
            path = Path(source).expanduser()
            if not path.is_file():
                raise ValueError(f"config key 'prompts.source': no prompt file {source!r}; "
                                 "give a text file with one prompt per line, or 'shapes' for the task's caption sampler")
            if not any(line.strip() for line in read_text_file(path, "config key 'prompts.source'").splitlines()):
                raise ValueError(f"config key 'prompts.source': the prompt file {source!r} holds no prompt (it is empty or blank); "
                                 "one prompt per line is expected")


# ------------------------------------------------------------------------------ files and presets
def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _resolve(name: str, relative_to: Path | None = None) -> Path:
    """A config file: an existing path (tried relative to ``relative_to`` first), else a preset name."""
    candidates = [Path(name).expanduser()]
    if relative_to is not None:
        candidates.insert(0, relative_to / name)
    for path in candidates:
        if path.is_file():
            return path
    preset = PRESETS_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if preset.is_file():
        return preset
    raise ValueError(f"no config file or preset named {name!r}; presets: {', '.join(available_presets())}")


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict:
    """The file's {section: {key: value}} with its ``extends:`` chain merged in (base first)."""
    path = path.resolve()
    if path in seen:
        raise ValueError(f"config 'extends' cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    try:
        data = yaml.safe_load(read_text_file(path, "config file"))
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections ({', '.join(Config.section_names())}), "
                         f"got {type(data).__name__}")
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    merged = _read_yaml(_resolve(str(base_name), relative_to=path.parent), seen=(*seen, path))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def apply_overrides(config: Config, overrides: Sequence[str]) -> Config:
    """A new Config with ``SECTION.KEY=VALUE`` overrides applied in order. VALUE is YAML
    (``reward.weights={pickscore: 1.0}``, ``train.lora_targets=[to_q, to_v]``, ``null``);
    ``SECTION.DICT_KEY.NAME=VALUE`` sets one entry of a dict field (``reward.paths.pickscore=/m``)."""
    data = config.to_dict()
    for override in overrides:
        dotted, sep, text = override.partition("=")
        parts = dotted.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ValueError(f"override {override!r} must look like SECTION.KEY=VALUE, e.g. train.lr=1e-4")
        section, key, *entry = parts
        if section not in data:
            raise _unknown("section", section, Config.section_names(), "sections")
        fields = Config.section_fields(section)
        if key not in fields:
            raise _unknown("key", f"{section}.{key}", list(fields), f"keys in '{section}'")
        tp = fields[key]
        if entry:
            if typing.get_origin(tp) is not dict or len(entry) != 1:
                raise ValueError(f"override {override!r}: only dict keys take a third part (SECTION.KEY.NAME=VALUE); "
                                 f"'{section}.{key}' expects {_type_name(tp)}")
            tp = typing.get_args(tp)[1]
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"override {override!r}: the value is not valid YAML: {err}") from None
        if _accepts_str(tp) and isinstance(value, (bool, int, float)):
            value = text.strip()
        try:
            value = _coerce(value, tp, dotted.strip())
        except ValueError as err:
            raise ValueError(f"override {override!r}: {err}") from None
        if entry:
            data[section][key] = {**data[section][key], entry[0]: value}
        else:
            data[section][key] = value
    return Config.from_dict(data)


def load_config(preset_or_path: str | None, overrides: Sequence[str] = (), *, check_paths: bool = True) -> Config:
    """The built-in defaults (None), a preset name (``available_presets()``) or a YAML path, with
    overrides applied, validated; ``check_paths=False`` skips the file checks (e.g. to print a preset)."""
    config = Config() if preset_or_path is None else Config.from_yaml(_resolve(preset_or_path))
    return apply_overrides(config, overrides).validate(check_paths=check_paths)
