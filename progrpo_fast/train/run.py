"""Builds a training run from a Config and runs it: model, reward, prompts, trainer, checkpoints,
logs (JSONL always; TensorBoard / W&B when enabled and installed), progress bar, reward curve."""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path

import torch

from progrpo_fast.ops.dtypes import DTYPES
from progrpo_fast.sampling.denoiser import decode_rows
from progrpo_fast.train.checkpoint import CheckpointStore
from progrpo_fast.train.trainer import Distributed, Trainer, iteration_seed, score_images, write_jsonl

def build_model(model_cfg, device=None):
    """A Denoiser adapter for config.model (the shipped shapes model by default)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[model_cfg.dtype]
    if model_cfg.kind == "shapes":
        from progrpo_fast.models import shapes_model
        from progrpo_fast.models.sd3 import SD3Denoiser

        pipe = shapes_model.load_shapes_pipeline(model_cfg.path or shapes_model.SHAPES_MODEL_DIR, device=device, dtype=dtype)
        return SD3Denoiser(pipe, resolution=model_cfg.resolution or shapes_model.RESOLUTION, guidance_scale=model_cfg.guidance_scale,
                           max_sequence_length=model_cfg.max_sequence_length or shapes_model.T5_TOKENS)
    if model_cfg.kind == "sd35m_random":
        from progrpo_fast.models.sd3 import SD3Denoiser
        from progrpo_fast.models.tiny import sd35_medium_sized_pipeline

        pipe = sd35_medium_sized_pipeline(device=device).to(dtype=dtype)
        return SD3Denoiser(pipe, resolution=model_cfg.resolution or 512, guidance_scale=model_cfg.guidance_scale,
                           max_sequence_length=model_cfg.max_sequence_length or 256)
    if model_cfg.kind in ("qwen_image_random", "wan21_1p3b_random"):
        from progrpo_fast.models import tiny

        sized = tiny.qwen_image_sized_pipeline if model_cfg.kind == "qwen_image_random" else tiny.wan21_1p3b_sized_pipeline
        adapter, kwargs = video_or_image_adapter(model_cfg)
        model = adapter(sized(device=device).to(dtype=dtype), **kwargs)
    elif model_cfg.kind in ("qwen_image", "wan"):
        adapter, kwargs = video_or_image_adapter(model_cfg)
        model = adapter.from_pretrained(model_cfg.path, device=device, dtype=dtype, **kwargs)
    else:
        model = pretrained_adapter(model_cfg, device, dtype)
    if model_cfg.attention == "xformers":
        model.pipe.enable_xformers_memory_efficient_attention()
    return model


def pretrained_adapter(model_cfg, device, dtype):
    """The SD3 / FLUX / SD1 adapter of config.model loaded from model.path."""
    common = {"guidance_scale": model_cfg.guidance_scale, "resolution": model_cfg.resolution}
    if model_cfg.kind == "sd3":
        from progrpo_fast.models.sd3 import SD3Denoiser as adapter

        common["max_sequence_length"] = model_cfg.max_sequence_length or 256
    elif model_cfg.kind == "flux":
        from progrpo_fast.models.flux import FluxDenoiser as adapter

        common["max_sequence_length"] = model_cfg.max_sequence_length or 512
    else:
        from progrpo_fast.models.sd1 import SD1Denoiser as adapter
    return adapter.from_pretrained(model_cfg.path, device=device, dtype=dtype, **common)


def video_or_image_adapter(model_cfg):
    """(adapter class, its keyword arguments) of the Qwen-Image and Wan kinds of config.model."""
    if model_cfg.kind in ("qwen_image", "qwen_image_random"):
        from progrpo_fast.models.qwen_image import QwenImageDenoiser

        return QwenImageDenoiser, {"guidance_scale": model_cfg.guidance_scale, "resolution": model_cfg.resolution,
                                   "max_sequence_length": model_cfg.max_sequence_length or 512}
    from progrpo_fast.models.wan import WanDenoiser

    height = model_cfg.resolution or 480
    width = model_cfg.width or (832 if model_cfg.resolution is None else height)
    return WanDenoiser, {"guidance_scale": model_cfg.guidance_scale, "num_frames": model_cfg.num_frames or 81, "height": height,
                         "width": width, "max_sequence_length": model_cfg.max_sequence_length or 512}


def build_reward(config):
    """The weighted reward of config.reward; for video models each image reward scores every
    reward.frame_stride-th frame (FrameReward)."""
    from progrpo_fast.rewards import FrameReward, WeightedReward, build_reward as make
    from progrpo_fast.train.config import VIDEO_KINDS

    rewards = {}
    for name in config.reward.weights:
        kwargs = {}
        if name in config.reward.paths:
            kwargs["path"] = config.reward.paths[name]
        if name == "http":
            kwargs["url"] = config.reward.http_url
        reward = make(name, **kwargs)
        if config.model.kind in VIDEO_KINDS and not reward.accepts_video:
            reward = FrameReward(reward, config.reward.frame_stride)
        rewards[name] = reward
    return WeightedReward(dict(config.reward.weights), rewards)


TRAIN_PROMPT_STREAM, EVAL_PROMPT_STREAM, POOL_STREAM = 100, 1000, 3000


def build_prompts(config, stream: int = TRAIN_PROMPT_STREAM, use_pool: bool = True):
    """prompts(iteration, rank, count): the shapes task's caption sampler (or, with ``use_pool``,
    its fixed pool, see prompts.pool), the moving-shape video captions ("shapes_video") or a prompt file, drawn with replacement by a generator keyed
    by (seed, iteration, stream + rank); the held-out evaluation prompts use their own stream."""
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
    lines = [line.strip() for line in Path(config.prompts.source).read_text().splitlines() if line.strip()]
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


def evaluation_prompts(config, held_out: bool) -> list[str]:
    """log.eval_prompts prompts: fresh draws from prompts.source (``held_out``) or, with a caption
    pool, the pool's first ones."""
    if uses_caption_pool(config) and not held_out:
        return caption_pool(config)[: config.log.eval_prompts]
    return build_prompts(config, EVAL_PROMPT_STREAM, use_pool=False)(0, 0, config.log.eval_prompts)


def logged_iteration(line: str) -> float:
    """The iteration of one log.jsonl line; inf for a blank or torn (partly written) line."""
    try:
        return json.loads(line)["iteration"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class Loggers:
    """JSONL always; TensorBoard and W&B when enabled and installed (a clear note otherwise).
    ``resumed_at``: the iteration a resumed run continues from (log.jsonl keeps the iterations
    before it, so iterations a crash ran past the checkpoint are not logged twice); None: a new run."""

    def __init__(self, config, out_dir: Path, resumed_at: int | None):
        self.jsonl = out_dir / "log.jsonl"
        if resumed_at is None:
            self.jsonl.unlink(missing_ok=True)
        elif self.jsonl.exists():
            kept = [line for line in self.jsonl.read_text().splitlines() if logged_iteration(line) < resumed_at]
            tmp = self.jsonl.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.jsonl)
        self.tensorboard = self.wandb = None
        if config.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                print("[progrpo-fast] log.tensorboard=true but tensorboard is not installed: pip install tensorboard")
        if config.log.wandb:
            try:
                import wandb

                self.wandb = wandb.init(project="progrpo-fast", config=config.to_dict(), dir=str(out_dir))
            except ImportError:
                print("[progrpo-fast] log.wandb=true but wandb is not installed: pip install wandb")

    def log(self, metrics: dict) -> None:
        write_jsonl(self.jsonl, metrics)
        step = metrics["iteration"]
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def save_grid(images, path: Path, columns: int, scale: int = 1) -> Path:
    """(B, 3, H, W) in [0, 1] -> one PNG grid, ``columns`` images a row, each enlarged ``scale``
    times (nearest neighbour)."""
    if scale > 1:
        images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    batch, _, height, width = images.shape
    rows = (batch + columns - 1) // columns
    grid = images.new_zeros(3, rows * height, columns * width)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[:, r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    path.parent.mkdir(parents=True, exist_ok=True)
    pil_image(grid).save(path)
    return path


def pil_image(image: torch.Tensor):
    """(3, H, W) in [0, 1] -> an 8-bit RGB PIL image."""
    from PIL import Image

    return Image.fromarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy())


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
    se = float(changes.std() / math.sqrt(len(changes))) if len(changes) > 1 else float("nan")
    return after["reward_mean"] - before["reward_mean"], se


def save_before_after(before: dict, after: dict, path: Path, iterations: tuple[int, int], max_prompts: int = 8, max_samples: int = 8) -> Path:
    """A labelled grid: per evaluation prompt (the first ``max_prompts``) its caption, then its first
    ``max_samples`` samples before training | the same noise after, each with its reward in its
    corner; a header names both sides (at ``iterations``) and their mean rewards (videos: their middle frame)."""
    from PIL import Image, ImageDraw, ImageFont

    per_prompt = before["rewards"].shape[1]
    shown, rows = min(max_samples, per_prompt), min(max_prompts, len(before["prompts"]))
    stills = [x[:, :, x.shape[2] // 2] if x.dim() == 5 else x for x in (before["images"], after["images"])]
    scale = max(1, 128 // stills[0].shape[-1])
    tile = stills[0].shape[-1] * scale
    gap, band, header = tile // 4, 18, 22
    width = 2 * shown * tile + gap
    canvas = Image.new("RGB", (width, header + rows * (band + tile)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=13)
    for side, (result, images, iteration) in enumerate(zip((before, after), stills, iterations)):
        left = side * (shown * tile + gap)
        title = f"{'before' if side == 0 else 'after'}: iteration {iteration}, mean reward {float(result['rewards'].mean()):.3f}"
        draw.text((left + 4, 4), title, fill="black", font=font)
        for p in range(rows):
            top = header + p * (band + tile) + band
            for j in range(shown):
                x = left + j * tile
                canvas.paste(pil_image(images[p * per_prompt + j]).resize((tile, tile), Image.NEAREST), (x, top))
                label = f"{float(result['rewards'][p, j]):.2f}"
                box = draw.textbbox((x + 2, top + 1), label, font=font)
                draw.rectangle(box, fill="black")
                draw.text((x + 2, top + 1), label, fill="white", font=font)
    for p in range(rows):
        draw.text((4, header + p * (band + tile) + 2), before["prompts"][p], fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def smoothed(values: list[float], window: int) -> list[float]:
    """Trailing moving average over up to ``window`` values."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_reward_curve(jsonl: Path, out_png: Path, evaluations: dict[str, list[tuple[int, float]]] | None = None) -> Path | None:
    """The survivors' mean reward per iteration (and its moving average over 10 iterations) from
    the JSONL log, with ``evaluations`` (label -> [(iteration, reward)]) as marked lines -> PNG
    (None when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[progrpo-fast] matplotlib is not installed: no reward-curve PNG (pip install matplotlib)")
        return None
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    its, rewards = [r["iteration"] + 1 for r in records], [r["reward_mean"] for r in records]
    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=120)
    line, = ax.plot(its, rewards, lw=0.8, alpha=0.35, label="rollouts: survivors' mean reward")
    ax.plot(its, smoothed(rewards, 10), color=line.get_color(), lw=2, label="rollouts, moving average of 10")
    for i, (label, points) in enumerate((evaluations or {}).items()):
        if points:
            ax.plot(*zip(*sorted(points)), marker="o", color=f"C{i + 1}", label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def train(config, resume: bool = False, model=None, reward=None) -> dict:
    """Runs config.train.iterations iterations (continuing from the newest valid checkpoint with
    ``resume``); returns a summary with the first and last iterations' metrics."""
    from tqdm import tqdm

    dist = Distributed.from_environment(config.train.parallel)
    out_dir = Path(config.log.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model or build_model(config.model)
    reward = reward or build_reward(config)
    trainer = Trainer(config, model, reward, build_prompts(config), dist)
    store = CheckpointStore(out_dir / "checkpoints", config.log.keep_last)
    if resume:
        found = store.latest()
        if found is None:
            print(f"[progrpo-fast] --resume: no checkpoint in {store.directory}, starting from iteration 0")
        else:
            trainer.load_state_dict(found[1])
            print(f"[progrpo-fast] resumed from iteration {trainer.iteration} ({store.directory})")
    main_rank = dist.rank == 0
    evaluates = bool(config.log.eval_prompts) and (main_rank or dist.sharded)  # a sharded network needs every rank
    loggers = Loggers(config, out_dir, trainer.iteration if resume else None) if main_rank else None
    bar = tqdm(total=config.train.iterations, initial=trainer.iteration, disable=not (config.log.progress and main_rank),
               desc="Pro-GRPO", unit="it")
    summary = {}
    if evaluates:
        before = evaluations(config, model, reward, trainer.step_context)
        summary.update(evaluation_summary(before, "before", trainer.iteration))
    history, started = [], time.perf_counter()
    while trainer.iteration < config.train.iterations:
        metrics = trainer.train_iteration()
        every = config.log.eval_every
        if evaluates and every and trainer.iteration % every == 0 and trainer.iteration < config.train.iterations:  # the last: eval_after
            for key, result in evaluations(config, model, reward, trainer.step_context).items():
                metrics["eval_reward" + key] = result["reward_mean"]
        history.append(metrics)
        due = trainer.iteration % config.log.checkpoint_every == 0 or trainer.iteration == config.train.iterations
        state = trainer.state_dict() if due and (main_rank or dist.sharded) else None
        if main_rank:
            loggers.log(metrics)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['kl']:.2e}",
                            steps_per_s=f"{metrics['trajectory_steps_per_s']:.0f}")
            bar.update(1)
            if state is not None:
                store.save(trainer.iteration, state)
    bar.close()
    summary.update(iterations=trainer.iteration, seconds=time.perf_counter() - started, history=history,
                   **trajectory_step_savings(trainer.schedule))
    if evaluates:
        after = evaluations(config, model, reward, trainer.step_context)
        summary.update(evaluation_summary(after, "after", trainer.iteration))
    if main_rank:
        loggers.close()
        summary["reward_curve"] = plot_reward_curve(loggers.jsonl, out_dir / "reward_curve.png", evaluation_curves(config, summary, loggers.jsonl))
        if evaluates:
            iterations = (summary["eval_before"]["iteration"], trainer.iteration)
            summary["before_after_grid"] = save_before_after(before[""], after[""], out_dir / "before_after.png", iterations)
        record = {k: (str(v) if isinstance(v, Path) else v) for k, v in summary.items() if k != "history"}
        (out_dir / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
    return summary


def evaluation_curves(config, summary: dict, jsonl: Path) -> dict[str, list[tuple[int, float]]]:
    """Label -> [(iteration, reward)] of each evaluation: before, every log.eval_every (from the
    log, earlier runs of a resumed one included) and after."""
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    curves = {}
    for key, label in (("", "training-pool captions" if uses_caption_pool(config) else "evaluation prompts"), ("_held_out", "held-out captions")):
        if "eval_after" + key in summary:
            before, after = summary["eval_before" + key], summary["eval_after" + key]
            logged = [(r["iteration"] + 1, r["eval_reward" + key]) for r in records if "eval_reward" + key in r]
            curves[f"{label} ({config.log.eval_prompts} x {config.log.eval_per_prompt}, fixed noise)"] = [
                (before["iteration"], before["reward_mean"]), *logged, (after["iteration"], after["reward_mean"])]
    return curves


def trajectory_step_savings(schedule) -> dict:
    """Trajectory-steps (network row-evaluations) per prompt of ``schedule`` against naive GRPO
    that keeps all G_max samples for every step, and the rows trained per prompt of each."""
    from progrpo_fast.sampling.schedule import PruneSchedule

    naive = PruneSchedule.naive(schedule.group_size_max, schedule.num_steps)
    return {"trajectory_steps_per_prompt": schedule.trajectory_steps(1), "naive_trajectory_steps_per_prompt": naive.trajectory_steps(1),
            "trained_rows_per_prompt": schedule.final_group_size, "naive_trained_rows_per_prompt": naive.final_group_size}
