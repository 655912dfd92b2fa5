"""Command line: ``progrpo-fast {train,sample,export-checkpoint,bench,info}`` (also ``python -m progrpo_fast``)."""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from progrpo_fast.third_party import quiet_third_party


def info() -> dict[str, str]:
    """Versions, device and which op backends loaded (and why the others did not)."""
    import torch

    import progrpo_fast
    from progrpo_fast.ops import backends

    rows = {
        "progrpo-fast": progrpo_fast.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__ + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else " (CPU build)"),
    }
    try:
        import triton

        rows["triton"] = triton.__version__
    except ImportError as err:
        rows["triton"] = f"not installed ({err})"
    if torch.cuda.is_available():
        rows["device"] = f"cuda: {torch.cuda.get_device_name()} (capability {'.'.join(map(str, torch.cuda.get_device_capability()))})"
    else:
        rows["device"] = f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (no CUDA device)"
    for name, state in backends.report().items():
        rows[f"backend {name}"] = state
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows["default backend"] = f"{backends.choose(device).__name__} on {device}"
    return rows


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="also show third-party warnings and model-loading progress bars")
    parser.add_argument("--config", default=None,
                        help="a preset name (see progrpo_fast/configs) or a YAML file; default: the built-in shapes task")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")


def command_train(args) -> int:
    from progrpo_fast.train.build import uses_caption_pool
    from progrpo_fast.train.config import load_config
    from progrpo_fast.train.evaluate import paired_change
    from progrpo_fast.train.graceful_stop import exit_code
    from progrpo_fast.train.run import train

    config = load_config(args.config, args.overrides)
    try:
        summary = train(config, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:  # during setup: from the first iteration on, SIGINT stops gracefully
        print("progrpo-fast train: interrupted before training started (nothing to save)", file=sys.stderr)
        return exit_code("SIGINT")
    history = summary["history"]
    if history:
        print(f"training rollouts' mean reward: {history[0]['reward_mean']:.4f} (first iteration) -> {history[-1]['reward_mean']:.4f} "
              f"(last); {summary['iterations']} iterations in {summary['seconds']:.0f} s")
    for suffix, what in (("", "training-pool" if uses_caption_pool(config) else "evaluation"), ("_held_out", "held-out")):
        if "eval_after" + suffix in summary:
            before, after = summary["eval_before" + suffix], summary["eval_after" + suffix]
            change, se = paired_change(before, after)
            print(f"{what} prompts' reward ({config.log.eval_prompts} prompts x {config.log.eval_per_prompt} samples, same noise): "
                  f"{before['reward_mean']:.4f} at iteration {before['iteration']} -> {after['reward_mean']:.4f} at iteration "
                  f"{after['iteration']} ({change:+.4f} +- {se:.4f} standard error over the prompts)")
    steps, naive = summary["trajectory_steps_per_prompt"], summary["naive_trajectory_steps_per_prompt"]
    print(f"trajectory-steps per prompt: {steps} ({config.sampler.schedule}) vs {naive} for naive GRPO keeping all "
          f"{summary['naive_trained_rows_per_prompt']} samples: {naive - steps} saved ({1 - steps / naive:.0%}); "
          f"trained on {summary['trained_rows_per_prompt']} of them per prompt")
    for key in ("reward_curve", "before_after_grid"):
        if summary.get(key):
            print(f"wrote {summary[key]}")
    print(f"logs, checkpoints and summary.json in {config.log.out_dir}")
    if "stopped_by" in summary:
        print(f"stopped by {summary['stopped_by']} at iteration {summary['iterations']} of {config.train.iterations} "
              "with a checkpoint: continue with --resume")
        return exit_code(summary["stopped_by"])
    return 0


def command_sample(args) -> int:
    import torch

    from progrpo_fast.sampling import PruneSchedule
    from progrpo_fast.sampling.sampler import ExpandPruneSampler
    from progrpo_fast.train.build import build_model, build_prompts
    from progrpo_fast.train.config import load_config
    from progrpo_fast.train.report import save_grid

    config = load_config(args.config, args.overrides)
    model = build_model(config.model)
    schedule = PruneSchedule.from_string(config.sampler.schedule)
    prompts = args.prompt or build_prompts(config)(0, 0, args.num_prompts)
    sampler = ExpandPruneSampler.from_config(model, PruneSchedule.naive(args.per_prompt, schedule.num_steps), config.sampler)
    rollout = sampler.sample(prompts, seed=args.seed)
    with torch.no_grad():
        images = model.decode(rollout.final_latents)
    path = save_grid(images, Path(args.out), columns=args.per_prompt, scale=max(1, 128 // images.shape[-1]))
    print(f"wrote {path} ({len(prompts)} prompts x {args.per_prompt} images: one row per prompt)")
    for prompt in prompts:
        print(f"  {prompt}")
    return 0


def command_export_checkpoint(args) -> int:
    from progrpo_fast.ops.dtypes import DTYPES
    from progrpo_fast.train.checkpoint import CorruptCheckpointError
    from progrpo_fast.train.export import export_checkpoint

    try:
        done = export_checkpoint(args.source, args.out, ema=args.ema, dtype=DTYPES[args.dtype] if args.dtype else None)
    except (FileNotFoundError, CorruptCheckpointError) as err:
        raise ValueError(str(err)) from err
    what = "LoRA adapter (diffusers format: pipe.load_lora_weights)" if done["lora"] else "full network weights"
    print(f"wrote {done['out']}: {what}{' (EMA)' if done['ema'] else ''}, {done['tensors']} tensors, {done['bytes'] / 2**20:.1f} MiB, "
          f"from {done['checkpoint']} (iteration {done['iteration']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="progrpo-fast", description="Pro-GRPO: expand-and-prune GRPO for diffusion/flow models")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print versions, device and which op backends loaded")
    commands.add_parser("bench", add_help=False,
                        help="benchmarks against naive GRPO: progrpo-fast bench NAME (progrpo-fast bench -h lists them)")
    commands.add_parser("serve-reward", add_help=False,
                        help="serve a reward over HTTP to trainers on this or other nodes, the tasks' rewards included (serve-reward -h)")
    train = commands.add_parser("train", help="train with (Pro-)GRPO; default: the built-in shapes task")
    add_config_arguments(train)
    fresh_or_not = train.add_mutually_exclusive_group()
    fresh_or_not.add_argument("--resume", action="store_true",
                              help="continue the run in log.out_dir from its newest valid checkpoint (the config is checked against it)")
    fresh_or_not.add_argument("--overwrite", nargs="?", const="archive", choices=["archive", "delete"],
                              help="start a new run in a log.out_dir that holds another run: move its files into "
                                   "previous-<run id>/ there (default) or, with --overwrite=delete, remove them")
    sample = commands.add_parser("sample", help="sample images from the configured model into a PNG grid")
    add_config_arguments(sample)
    sample.add_argument("--prompt", action="append", help="a prompt (repeatable); default: prompts from the config's source")
    sample.add_argument("--num-prompts", type=int, default=4)
    sample.add_argument("--per-prompt", type=int, default=4)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default="samples.png")
    export = commands.add_parser("export-checkpoint", help="write a checkpoint's trained weights (LoRA or full) to one safetensors file")
    export.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                        help="a run folder (its newest valid checkpoint), a checkpoints/ folder, a step-XXXXXXXX.pt file or a "
                             "step-XXXXXXXX.dcp folder (sharded, train.parallel=fsdp)")
    export.add_argument("--out", required=True, help="the safetensors file to write, e.g. model.safetensors")
    export.add_argument("--ema", action="store_true", help="export the EMA of the weights (runs with train.ema_decay set)")
    export.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="cast the weights (default: as saved)")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from progrpo_fast.bench import main as bench

        try:
            return bench(argv[1:])
        except ValueError as err:
            print(f"progrpo-fast bench: error: {err}", file=sys.stderr)
            return 2
    if argv[:1] == ["serve-reward"]:
        from progrpo_fast.rewards.service import main as serve
        from progrpo_fast.train.reward_registry import REWARDS

        try:
            serve(argv[1:], registry=REWARDS, prog="progrpo-fast serve-reward")
        except (ValueError, ImportError) as err:
            print(f"progrpo-fast serve-reward: error: {err}", file=sys.stderr)
            return 2
        return 0
    args = parser.parse_args(argv)
    if not getattr(args, "verbose", False):
        quiet_third_party()
    if args.command == "info":
        rows = info()
        width = max(map(len, rows))
        for key, value in rows.items():
            print(f"{key:<{width}}  {value}")
        return 0
    from progrpo_fast.train.checkpoint import DiskFullError
    from progrpo_fast.train.trainer import DivergedError

    try:
        return {"train": command_train, "sample": command_sample, "export-checkpoint": command_export_checkpoint}[args.command](args)
    except ValueError as err:
        print(f"progrpo-fast {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (DivergedError, DiskFullError) as err:
        print(f"progrpo-fast {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
