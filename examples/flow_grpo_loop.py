"""Expand-and-prune inside a Flow-GRPO-shaped sampler loop (``pipeline_with_logprob`` + an SDE step
with log-probs), on the shipped shapes model:

    python examples/flow_grpo_loop.py

The loop is Flow-GRPO's shape, written here: CFG-stacked [negative; positive] embeddings, the
network on [x; x], guidance, ``num_images_per_prompt`` copies of each prompt (consecutive rows, as
diffusers' ``encode_prompt`` repeats them), a list of latents and one of log-probs. The lines that
pruning adds end in ``# + pruning``; two of them replace the noise source by ``keyed_noise`` (keyed
by trajectory id), the one change a sampler must make so a survivor draws the noise it would have
drawn unpruned (``keyed_generators`` gives the same for loops that pass torch.Generator lists to
``randn_tensor``). ``StepPruner.step`` runs after each step's model output and before its SDE step.
The hidden proxy reads the transformer's last block; it keeps a (keyed) random subset until it has
learned from a few rollouts' final rewards (``pruner.observe``).
"""
import time

import torch

from progrpo_fast.integrations import StepPruner, keyed_noise  # + pruning
from progrpo_fast.models.schedules import flow_sigmas
from progrpo_fast.models.shapes_model import load_shapes_pipeline
from progrpo_fast.sampling import PruneSchedule, flow_sde_step
from progrpo_fast.sampling.proxies import HiddenProbeProxy


@torch.no_grad()
def pipeline_with_logprob(pipe, prompts, num_images_per_prompt, num_steps=10, guidance_scale=4.5, eta=0.7, seed=0, pruner=None):
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, prompt_3=None, num_images_per_prompt=num_images_per_prompt,
        do_classifier_free_guidance=True, negative_prompt=[""] * len(prompts), max_sequence_length=8)
    prompt_embeds, pooled_embeds = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
    rows = len(prompts) * num_images_per_prompt
    channels, side = pipe.transformer.config.in_channels, pipe.transformer.config.sample_size
    trajectory_ids = torch.arange(rows)  # + pruning
    latents = keyed_noise(seed, trajectory_ids, 0, (rows, channels, side, side))  # + pruning
    sigmas = flow_sigmas(pipe.scheduler, num_steps)
    all_latents, all_log_probs = [latents], []
    for i, t in enumerate(pipe.scheduler.timesteps):
        latent_model_input = torch.cat([latents] * 2)
        noise_pred = pipe.transformer(hidden_states=latent_model_input, timestep=t.expand(latent_model_input.shape[0]),
                                      encoder_hidden_states=prompt_embeds, pooled_projections=pooled_embeds, return_dict=False)[0]
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        if pruner is not None:  # + pruning
            out = pruner.step(i, latents, velocity=noise_pred, sigma=sigmas[i], history=all_latents, log_probs=all_log_probs,  # + pruning
                              cond=[prompt_embeds, pooled_embeds], cfg_stacked=True)  # + pruning
            latents, noise_pred, all_latents, all_log_probs = out.latents, out.velocity, out.history, out.log_probs  # + pruning
            (prompt_embeds, pooled_embeds), trajectory_ids = out.cond, out.trajectory_ids  # + pruning
        noise = keyed_noise(seed, trajectory_ids, i + 1, latents.shape)  # + pruning
        step = flow_sde_step(latents, noise_pred, sigmas[i], sigmas[i + 1], eta=eta, eps=noise)
        latents = step.x_next
        all_latents.append(latents)
        all_log_probs.append(step.log_prob)
    if pruner is not None:  # + pruning
        pruner.check_finite()  # + pruning
    return latents, torch.stack(all_latents, 1), torch.stack(all_log_probs, 1), trajectory_ids


if __name__ == "__main__":
    pipe = load_shapes_pipeline()
    prompts, copies = ["a red square", "two red circles above three yellow circles"], 8
    schedule = PruneSchedule.from_string("8:5=4,7=2@10")  # + pruning
    pruner = StepPruner(schedule, HiddenProbeProxy(pipe.transformer), seed=0)  # + pruning
    started = time.perf_counter()
    latents, history, log_probs, ids = pipeline_with_logprob(pipe, prompts, copies, num_steps=schedule.num_steps, pruner=pruner)
    seconds = time.perf_counter() - started
    print(f"schedule {schedule}: {len(prompts)} prompts x {copies} rows -> kept {latents.shape[0]} rows")
    for p, prompt in enumerate(prompts):
        print(f"  {prompt!r}: trajectories {ids[ids // copies == p].tolist()}")
    print(f"history {tuple(history.shape)}, log_probs {tuple(log_probs.shape)}")
    print(f"pruner calls: {1000 * pruner.seconds:.1f} ms of {1000 * seconds:.0f} ms sampling ({100 * pruner.seconds / seconds:.2f}%)")
