"""``progrpo-fast bench foreign``: the cost of pruning inside a foreign (Flow-GRPO-shaped) sampler
loop with ``progrpo_fast.integrations.StepPruner``, on the built-in shapes model.

The loop (``flow_grpo_loop``) is Flow-GRPO's shape: CFG-stacked [negative; positive] embeddings,
guidance, ``num_images_per_prompt`` consecutive copies, lists of latents and log-probs, the flow SDE
step with keyed noise. Rounds alternate three runs: the loop with the pruner (schedule
``--schedule``), the same loop unpruned at G_max, and unpruned at the final group size K. Every
``pruner.step`` call (checkpoint or not) is timed (on CUDA with a device sync around it, which the
ratio then includes). Reports the pruner calls' share of the pruned loop's sampling time, and the
pruned loop's sampling time against the unpruned loop at G_max and at K.
"""
from __future__ import annotations

import time

import torch

DESCRIPTION = "pruner-call overhead and sampling time of StepPruner inside a Flow-GRPO-shaped sampler loop (built-in model)"
PROMPTS = ["a red square", "two red circles above three yellow circles", "three green squares",
           "three yellow squares above two red squares"]


def add_arguments(parser) -> None:
    parser.add_argument("--schedule", default="16:5=8,7=4@10", help="prune schedule (default 16:5=8,7=4@10)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per rollout (default 2)")
    parser.add_argument("--proxy", default="hidden", choices=["latent", "probe", "hidden", "random"], help="proxy (default hidden)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3; the first is a warm-up, not counted)")


class _Clock:
    def __init__(self, device):
        self.device = device

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


@torch.no_grad()
def flow_grpo_loop(pipe, prompts, copies, num_steps, *, seed=0, pruner=None, guidance_scale=4.5, eta=0.7):
    """Flow-GRPO-shaped sampling; returns (final latents, latent list, log-prob list, trajectory ids, pruner seconds)."""
    from progrpo_fast.integrations import keyed_noise
    from progrpo_fast.models.schedules import flow_sigmas
    from progrpo_fast.sampling import flow_sde_step

    device = pipe.transformer.device
    clock = _Clock(device)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, prompt_3=None, num_images_per_prompt=copies, device=device,
        do_classifier_free_guidance=True, negative_prompt=[""] * len(prompts), max_sequence_length=8)
    prompt_embeds, pooled_embeds = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
    rows = len(prompts) * copies
    config = pipe.transformer.config
    ids = torch.arange(rows, device=device)
    latents = keyed_noise(seed, ids, 0, (rows, config.in_channels, config.sample_size, config.sample_size))
    sigmas = flow_sigmas(pipe.scheduler, num_steps, device=device)
    all_latents, all_log_probs, pruner_seconds = [latents], [], 0.0
    for i, t in enumerate(pipe.scheduler.timesteps.to(device)):
        x = torch.cat([latents] * 2).to(pipe.transformer.dtype)
        v = pipe.transformer(hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=prompt_embeds,
                             pooled_projections=pooled_embeds, return_dict=False)[0].float()
        uncond, cond = v.chunk(2)
        v = uncond + guidance_scale * (cond - uncond)
        if pruner is not None:
            started = clock()
            out = pruner.step(i, latents, velocity=v, sigma=sigmas[i], history=all_latents, log_probs=all_log_probs,
                              cond=[prompt_embeds, pooled_embeds], cfg_stacked=True)
            latents, v, all_latents, all_log_probs = out.latents, out.velocity, out.history, out.log_probs
            (prompt_embeds, pooled_embeds), ids = out.cond, out.trajectory_ids
            pruner_seconds += clock() - started
        step = flow_sde_step(latents, v, sigmas[i], sigmas[i + 1], eta=eta, eps=keyed_noise(seed, ids, i + 1, latents.shape))
        latents = step.x_next
        all_latents.append(latents)
        all_log_probs.append(step.log_prob)
    if pruner is not None:
        started = clock()
        pruner.check_finite()
        pruner_seconds += clock() - started
    return latents, all_latents, all_log_probs, ids, pruner_seconds


def measure(pipe, schedule, proxy, prompts, rounds: int) -> dict:
    """Interleaved rounds (the first a warm-up): seconds per rollout pruned / unpruned at G_max / at K, pruner seconds."""
    from progrpo_fast.integrations import StepPruner

    clock = _Clock(pipe.transformer.device)
    pruner = StepPruner(schedule, proxy)
    totals = {"pruned": 0.0, "naive_gmax": 0.0, "naive_k": 0.0, "pruner": 0.0}
    counted = max(rounds - 1, 1)
    for r in range(rounds):
        pruner.reset(seed=r)
        started = clock()
        *_, pruner_seconds = flow_grpo_loop(pipe, prompts, schedule.group_size_max, schedule.num_steps, seed=r, pruner=pruner)
        pruned = clock() - started
        started = clock()
        flow_grpo_loop(pipe, prompts, schedule.group_size_max, schedule.num_steps, seed=r)
        naive_gmax = clock() - started
        started = clock()
        flow_grpo_loop(pipe, prompts, schedule.final_group_size, schedule.num_steps, seed=r)
        naive_k = clock() - started
        if r > 0 or rounds == 1:
            for key, value in zip(totals, (pruned, naive_gmax, naive_k, pruner_seconds)):
                totals[key] += value / counted
    return totals


def run(args, command: str, tag: str):
    from progrpo_fast.bench.results import markdown_table, write_results
    from progrpo_fast.models.shapes_model import load_shapes_pipeline
    from progrpo_fast.sampling import PruneSchedule
    from progrpo_fast.sampling.proxies import build_proxy

    if not 1 <= args.prompts <= len(PROMPTS):
        raise SystemExit(f"--prompts must be in [1, {len(PROMPTS)}], got {args.prompts}")
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_shapes_pipeline(device=device)
    schedule = PruneSchedule.from_string(args.schedule)
    proxy = build_proxy(args.proxy, network=pipe.transformer, grid=4)
    seconds = measure(pipe, schedule, proxy, PROMPTS[: args.prompts], args.rounds)
    row = {"schedule": str(schedule), "proxy": args.proxy, "prompts": args.prompts, "rounds_timed": max(args.rounds - 1, 1),
           "pruned_s": seconds["pruned"], "pruner_calls_s": seconds["pruner"],
           "pruner_share": seconds["pruner"] / seconds["pruned"],
           "naive_gmax_s": seconds["naive_gmax"], "naive_k_s": seconds["naive_k"],
           "pruned_vs_naive_gmax": seconds["pruned"] / seconds["naive_gmax"],
           "pruned_vs_naive_k": seconds["pruned"] / seconds["naive_k"],
           "trajectory_steps_pruned": schedule.trajectory_steps(args.prompts),
           "trajectory_steps_gmax": args.prompts * schedule.group_size_max * schedule.num_steps}
    name = f"foreign_sampler_{tag}"
    path = write_results(args.out, name, [row], command, {"description": DESCRIPTION, "device": device})
    columns = {"schedule": "schedule", "proxy": "proxy", "prompts": "prompts", "pruned_s": "pruned s / rollout",
               "pruner_calls_s": "pruner calls s", "pruner_share": "pruner share", "naive_gmax_s": "unpruned G_max s",
               "pruned_vs_naive_gmax": "pruned / unpruned G_max", "naive_k_s": "unpruned K s", "pruned_vs_naive_k": "pruned / unpruned K"}
    table = markdown_table([row], columns)
    (args.out / f"{name}.md").write_text(f"# {DESCRIPTION}\n\n`{command}`\n\n{table}\n")
    print(table)
    return path
