"""The training loop: runs a Config with the parts of train.build, evaluates before, during and
after (train.evaluate), saves checkpoints, logs (JSONL always; TensorBoard / W&B when enabled and
installed), shows a progress bar, and writes the reports of train.report and summary.json."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from progrpo_fast.train.build import build_model, build_prompts, build_reward
from progrpo_fast.train.checkpoint import CheckpointStore
from progrpo_fast.train.determinism import make_deterministic
from progrpo_fast.train.evaluate import evaluation_summary, evaluations
from progrpo_fast.train.report import evaluation_curves, plot_reward_curve, save_before_after, trajectory_step_savings
from progrpo_fast.train.trainer import Distributed, Trainer, write_jsonl


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


def train(config, resume: bool = False, model=None, reward=None) -> dict:
    """Runs config.train.iterations iterations (continuing from the newest valid checkpoint with
    ``resume``); returns a summary with the first and last iterations' metrics."""
    from tqdm import tqdm

    if config.train.deterministic:
        make_deterministic()
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
        summary["reward_curve"] = plot_reward_curve(loggers.jsonl, out_dir / "reward_curve.png",
                                                    evaluation_curves(config, summary, loggers.jsonl))
        if evaluates:
            iterations = (summary["eval_before"]["iteration"], trainer.iteration)
            summary["before_after_grid"] = save_before_after(before[""], after[""], out_dir / "before_after.png", iterations)
        record = {k: (str(v) if isinstance(v, Path) else v) for k, v in summary.items() if k != "history"}
        (out_dir / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
    return summary
