"""Evaluation of a policy: the mean reward on fixed evaluation prompts with fixed noise (a paired
before/after comparison), its summary.json entries and the paired change with its standard error."""
from __future__ import annotations

import dataclasses
import math

import torch

from progrpo_fast.sampling.denoiser import decode_rows
from progrpo_fast.train.build import EVAL_PROMPT_STREAM, build_prompts, caption_pool, uses_caption_pool
from progrpo_fast.train.trainer import iteration_seed, score_images


def evaluation_prompts(config, held_out: bool) -> list[str]:
    """log.eval_prompts prompts: fresh draws from prompts.source (``held_out``) or, with a caption
    pool, the pool's first ones."""
    if uses_caption_pool(config) and not held_out:
        return caption_pool(config)[: config.log.eval_prompts]
    return build_prompts(config, EVAL_PROMPT_STREAM, use_pool=False)(0, 0, config.log.eval_prompts)


@torch.no_grad()
def evaluate(config, model, reward, held_out: bool = False, step_context=None) -> dict:
    """Mean reward of the current policy on evaluation_prompts(config, held_out), log.eval_per_prompt
    samples each, with the training step method and fixed noise (a paired before/after comparison).
    ``step_context``: the policy's per-step context (Trainer.step_context). Returns
    {"reward_mean", "rewards" (P, n), "images", "prompts"}."""
    from progrpo_fast.sampling.sampler import ExpandPruneSampler
    from progrpo_fast.sampling.schedule import PruneSchedule

    prompts, per_prompt = evaluation_prompts(config, held_out), config.log.eval_per_prompt
    count = len(prompts)
    schedule = PruneSchedule.naive(per_prompt, PruneSchedule.from_string(config.sampler.schedule).num_steps)
    # its own trajectory ids (no training stride): every method of a paired comparison sees the same noise
    sampler = ExpandPruneSampler.from_config(model, schedule, dataclasses.replace(config.sampler, trajectory_id_stride=None))
    if step_context is not None:
        sampler.step_context = step_context
    rollout = sampler.sample(prompts, seed=iteration_seed(config.train.seed, 0, EVAL_PROMPT_STREAM))
    images = decode_rows(model, rollout.final_latents.to(model.device), config.sampler.forward_rows)
    rewards = score_images(reward, images, rollout.row_prompts)[1].view(count, per_prompt)
    return {"reward_mean": float(rewards.mean()), "rewards": rewards.cpu(), "images": images.cpu(), "prompts": prompts}


def evaluations(config, model, reward, step_context=None) -> dict[str, dict]:
    """evaluate() on the evaluation prompts (key "") and, with a caption pool, on as many held-out
    prompts (key "_held_out")."""
    results = {"": evaluate(config, model, reward, step_context=step_context)}
    if uses_caption_pool(config):
        results["_held_out"] = evaluate(config, model, reward, held_out=True, step_context=step_context)
    return results


def evaluation_summary(results: dict[str, dict], when: str, iteration: int) -> dict:
    """{"eval_WHEN" (and "eval_WHEN_held_out"): {"iteration", "reward_mean", "prompt_means"}} for
    summary.json (prompt_means: each evaluation prompt's mean reward, for paired standard errors)."""
    return {f"eval_{when}{key}": {"iteration": iteration, "reward_mean": result["reward_mean"],
                                  "prompt_means": result["rewards"].mean(1).tolist()} for key, result in results.items()}


def paired_change(before: dict, after: dict) -> tuple[float, float]:
    """(mean change of the evaluation reward, its standard error) from two evaluation summaries of
    the same prompts and noise: the SE of the mean of the per-prompt changes (samples of one
    prompt are not independent, so the prompt is the unit)."""
    changes = torch.tensor(after["prompt_means"], dtype=torch.float64) - torch.tensor(before["prompt_means"], dtype=torch.float64)
    return after["reward_mean"] - before["reward_mean"], standard_error(changes)


def standard_error(values: torch.Tensor) -> float:
    """The standard error of the mean of ``values`` (one per prompt): sd / sqrt(n), sd with n - 1;
    NaN for fewer than 2 values."""
    values = values.double()
    return float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
