"""What a run writes besides its log: image grids (samples, labelled before/after evaluations), the
reward curve with its evaluation lines, and the trajectory-step savings of summary.json."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from progrpo_fast.train.build import uses_caption_pool


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


def save_before_after(before: dict, after: dict, path: Path, iterations: tuple[int, int], max_prompts: int = 8,
                      max_samples: int = 8) -> Path:
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


def evaluation_curves(config, summary: dict, jsonl: Path) -> dict[str, list[tuple[int, float]]]:
    """Label -> [(iteration, reward)] of each evaluation: before, every log.eval_every (from the
    log, earlier runs of a resumed one included) and after."""
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    curves = {}
    for key, label in (("", "training-pool captions" if uses_caption_pool(config) else "evaluation prompts"),
                       ("_held_out", "held-out captions")):
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
