"""Builds the parts of a training run from a Config: the model (through train.model_kinds), the
weighted reward (through train.reward_registry) and the prompt sources (training, evaluation and
the shapes task's fixed caption pool)."""
from __future__ import annotations

import os
import random

import torch

from progrpo_fast.ops.dtypes import DTYPES
from progrpo_fast.train.model_kinds import MODEL_KINDS
from progrpo_fast.train.trainer import iteration_seed


def build_model(model_cfg, device=None):
    """A Denoiser adapter for config.model (the shipped shapes model by default), built by its
    entry of train.model_kinds.MODEL_KINDS."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = MODEL_KINDS[model_cfg.kind]
    model = kind.build(model_cfg, device, DTYPES[model_cfg.dtype])
    if kind.xformers and model_cfg.attention == "xformers":
        model.pipe.enable_xformers_memory_efficient_attention()
    return model


def build_reward(config):
    """The weighted reward of config.reward; for video models each image reward scores every
    reward.frame_stride-th frame (FrameReward)."""
    from progrpo_fast.rewards import FrameReward, WeightedReward
    from progrpo_fast.train.reward_registry import build_reward as make

    rewards = {}
    for name in config.reward.weights:
        kwargs = {}
        if name in config.reward.paths:
            kwargs["path"] = config.reward.paths[name]
        kwargs.update(service_options(config.reward, name))
        reward = make(name, **kwargs)
        if MODEL_KINDS[config.model.kind].video and not reward.accepts_video:
            reward = FrameReward(reward, config.reward.frame_stride)
        rewards[name] = reward
    return WeightedReward(dict(config.reward.weights), rewards)


def service_options(reward_cfg, name: str) -> dict:
    """The keyword arguments of a service reward ("http", "vlm_judge") from config.reward, its token
    read from the environment variable the config names; {} for other rewards."""
    if name not in ("http", "vlm_judge"):
        return {}
    token_env = reward_cfg.http_token_env if name == "http" else reward_cfg.vlm_token_env
    options = {"timeout_s": reward_cfg.http_timeout_s, "retries": reward_cfg.http_retries, "backoff_s": reward_cfg.http_backoff_s,
               "max_response_bytes": reward_cfg.http_max_response_bytes, "token": os.environ.get(token_env or "") or None}
    if name == "http":
        return {"url": reward_cfg.http_url, **options}
    judge = {"template": reward_cfg.vlm_template, "score_regex": reward_cfg.vlm_score_regex}
    return {"url": reward_cfg.vlm_url, "model": reward_cfg.vlm_model, "score_range": reward_cfg.vlm_score_range,
            "concurrency": reward_cfg.vlm_concurrency, "max_tokens": reward_cfg.vlm_max_tokens, **options,
            **{key: value for key, value in judge.items() if value is not None}}


TRAIN_PROMPT_STREAM, EVAL_PROMPT_STREAM, POOL_STREAM = 100, 1000, 3000


def build_prompts(config, stream: int = TRAIN_PROMPT_STREAM, use_pool: bool = True):
    """prompts(iteration, rank, count): the shapes task's caption sampler (or, with ``use_pool``,
    its fixed pool, see prompts.pool), the moving-shape video captions ("shapes_video") or a prompt file, drawn with
    replacement by a generator keyed by (seed, iteration, stream + rank); the held-out evaluation prompts use their own
    stream."""
    seed = config.train.seed
    if config.prompts.source == "shapes":
        from progrpo_fast.tasks import caption, sample_scene

        pool = caption_pool(config) if use_pool else []

        def shapes_prompts(iteration, rank, count):
            gen = torch.Generator().manual_seed(iteration_seed(seed, iteration, stream + rank))
            if pool:
                return [pool[i] for i in torch.randint(len(pool), (count,), generator=gen).tolist()]
            return [caption(sample_scene(gen)) for _ in range(count)]

        return shapes_prompts
    if config.prompts.source == "shapes_video":
        from progrpo_fast.tasks.shapes_video import moving_caption, sample_moving_scene

        def moving_shapes_prompts(iteration, rank, count):
            gen = torch.Generator().manual_seed(iteration_seed(seed, iteration, stream + rank))
            return [moving_caption(sample_moving_scene(gen)) for _ in range(count)]

        return moving_shapes_prompts
    from progrpo_fast.train.config import read_text_file

    text = read_text_file(config.prompts.source, "config key 'prompts.source'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"prompts.source={config.prompts.source!r} holds no prompt (one per line expected)")

    def file_prompts(iteration, rank, count):
        rng = random.Random(iteration_seed(seed, iteration, stream + rank))
        return [rng.choice(lines) for _ in range(count)]

    return file_prompts


def uses_caption_pool(config) -> bool:
    """True when training draws from the shapes task's fixed caption pool (prompts.pool > 0)."""
    return config.prompts.source == "shapes" and config.prompts.pool > 0


def caption_pool(config) -> list[str]:
    """The fixed training captions of prompts.pool (empty when the pool is off)."""
    from progrpo_fast.tasks import caption, sample_scene

    if not uses_caption_pool(config):
        return []
    gen = torch.Generator().manual_seed(iteration_seed(config.train.seed, 0, POOL_STREAM))
    return [caption(sample_scene(gen)) for _ in range(config.prompts.pool)]
