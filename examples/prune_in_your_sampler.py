"""Pruning inside your own sampler: expand a group, prune it mid-denoise, keep going with fewer rows.

    python examples/prune_in_your_sampler.py

A stand-in velocity model keeps this runnable anywhere; replace `velocity` with your transformer.

Which proxy: this sketch selects on pooled x0_hat latents (`ops.prune_select` with a grid), the one
selection that needs neither a network nor a reward. On the built-in task that latent proxy keeps
LESS reward spread than a random subset (docs/benchmarks.md, selection table): pooled-latent
diversity is colour and layout diversity, which that reward mostly ignores. With a real network
prune with the hidden proxy (`HiddenProbeProxy(transformer)`, learned online from final rewards, no
decoding) or the reward proxy, through `progrpo_fast.integrations.StepPruner`: see
examples/flow_grpo_loop.py, which also keys the noise by trajectory id so survivors keep theirs.
"""
import torch

from progrpo_fast import ops

prompts, group_max, keep, steps, checkpoint = 4, 16, 6, 10, 6
torch.manual_seed(0)
latents = torch.randn(prompts * group_max, 4, 16, 16)  # (P*G, C, H, W), groups are consecutive rows
prompt_embeds = torch.randn(prompts, 8).repeat_interleave(group_max, 0)  # any per-row state
trajectory_ids = torch.arange(prompts * group_max)
sigmas = torch.linspace(1.0, 0.0, steps + 1)


def fmt(values):
    return "[" + ", ".join(f"{v:.3f}" for v in values.tolist()) + "]"


def velocity(x, embeds, sigma):
    return x - embeds.mean(1).view(-1, 1, 1, 1) * (1 - sigma)


for step in range(steps):
    sigma, sigma_next = sigmas[step], sigmas[step + 1]
    v = velocity(latents, prompt_embeds, sigma)
    if step == checkpoint:
        x0_hat = latents - sigma * v  # one-step clean estimate, already paid for
        survivors, var_all, var_kept = ops.prune_select(x0_hat, group_max, keep, grid=4, return_variance=True)
        latents, prompt_embeds, trajectory_ids, v = ops.compact_(survivors, latents, prompt_embeds, trajectory_ids, v, as_tuple=True)
        print(f"step {step}: kept {latents.shape[0]} of {prompts * group_max} rows; "
              f"pooled x0_hat variance per group {fmt(var_all)} -> kept {fmt(var_kept)}")
    latents = latents + (sigma_next - sigma) * v  # Euler step on the survivors only

print("survivor trajectory ids:", trajectory_ids.view(prompts, keep).tolist())
