"""Command line: ``progrpo-fast {train,sample,info}`` (also ``python -m progrpo_fast``)."""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path


def info() -> dict[str, str]:
    """Versions, device and which op backends loaded (and why the others did not)."""
    import torch

    import progrpo_fast
    from progrpo_fast import backends

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


def save_grid(images, path: Path, columns: int) -> Path:
    """(B, 3, H, W) in [0, 1] -> one PNG grid, ``columns`` images a row."""
    from PIL import Image

    batch, _, height, width = images.shape
    rows = (batch + columns - 1) // columns
    grid = images.new_zeros(3, rows * height, columns * width)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[:, r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="a preset name (see progrpo_fast/configs) or a YAML file; default: the built-in shapes task")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")


def command_train(args) -> int:
    from progrpo_fast.train.config import load_config
    from progrpo_fast.train.run import train

    config = load_config(args.config, args.overrides)
    summary = train(config, resume=args.resume)
    history = summary["history"]
    if history:
        print(f"reward: {history[0]['reward_mean']:.4f} (first iteration) -> {history[-1]['reward_mean']:.4f} (last), "
              f"{summary['iterations']} iterations in {summary['seconds']:.0f} s; logs in {config.log.out_dir}")
    return 0


def command_sample(args) -> int:
    import torch

    from progrpo_fast.sampling import PruneSchedule
    from progrpo_fast.sampling.sampler import ExpandPruneSampler
    from progrpo_fast.train.config import load_config
    from progrpo_fast.train.run import build_model, build_prompts

    config = load_config(args.config, args.overrides)
    model = build_model(config.model)
    schedule = PruneSchedule.from_string(config.sampler.schedule)
    prompts = args.prompt or build_prompts(config)(0, 0, args.num_prompts)
    sampler = ExpandPruneSampler(model, PruneSchedule.naive(args.per_prompt, schedule.num_steps), method=config.sampler.method, eta=config.sampler.eta)
    rollout = sampler.sample(prompts, seed=args.seed)
    with torch.no_grad():
        images = model.decode(rollout.final_latents)
    path = save_grid(images, Path(args.out), columns=args.per_prompt)
    print(f"wrote {path} ({len(prompts)} prompts x {args.per_prompt} images: one row per prompt)")
    for prompt in prompts:
        print(f"  {prompt}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="progrpo-fast", description="Pro-GRPO: expand-and-prune GRPO for diffusion/flow models")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print versions, device and which op backends loaded")
    train = commands.add_parser("train", help="train with (Pro-)GRPO; default: the built-in shapes task")
    add_config_arguments(train)
    train.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in log.out_dir")
    sample = commands.add_parser("sample", help="sample images from the configured model into a PNG grid")
    add_config_arguments(sample)
    sample.add_argument("--prompt", action="append", help="a prompt (repeatable); default: prompts from the config's source")
    sample.add_argument("--num-prompts", type=int, default=4)
    sample.add_argument("--per-prompt", type=int, default=4)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default="samples.png")
    args = parser.parse_args(argv)
    if args.command == "info":
        rows = info()
        width = max(map(len, rows))
        for key, value in rows.items():
            print(f"{key:<{width}}  {value}")
        return 0
    try:
        return {"train": command_train, "sample": command_sample}[args.command](args)
    except ValueError as err:
        print(f"progrpo-fast {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
