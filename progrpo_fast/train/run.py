"""The training loop: runs a Config with the parts of train.build in a run folder it holds
(train.run_folder), resuming with checked configs (train.resume_check), evaluates before, during
and after (train.evaluate), saves checkpoints of its run, logs (JSONL always; TensorBoard / W&B
when enabled and installed), shows a progress bar, stops gracefully on SIGINT / SIGTERM
(train.graceful_stop), and writes the reports of train.report and summary.json."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from progrpo_fast.train.build import build_model, build_prompts, build_reward
from progrpo_fast.train.determinism import make_deterministic
from progrpo_fast.train.evaluate import evaluation_summary, evaluations, standard_error
from progrpo_fast.train.graceful_stop import GracefulStop
from progrpo_fast.train.report import evaluation_curves, plot_reward_curve, save_before_after, trajectory_step_savings
from progrpo_fast.train.resume_check import apply_optimizer_settings
from progrpo_fast.train.run_folder import RunFolder, open_run_folder
from progrpo_fast.train.sharded_checkpoint import RunCheckpoints
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
    before it, so iterations a crash ran past the checkpoint are not logged twice); None: a new run
    (its run folder holds no log.jsonl: train.run_folder moved or refused the previous run's)."""

    def __init__(self, config, out_dir: Path, resumed_at: int | None):
        self.jsonl = out_dir / "log.jsonl"
        if resumed_at is not None and self.jsonl.exists():
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


def train(config, resume: bool = False, model=None, reward=None, overwrite: str | None = None) -> dict:
    """Runs config.train.iterations iterations in the run folder log.out_dir (train.run_folder: one
    run per folder, locked while it trains): a new run, or with ``resume`` the folder's run from its
    newest valid checkpoint (train.resume_check compares the configs); ``overwrite`` ("archive" or
    "delete") replaces a run the folder holds. SIGINT / SIGTERM stop it after the current iteration
    with a checkpoint (train.graceful_stop; the summary's "stopped_by" names the signal). Returns a
    summary with the first and last iterations' metrics."""
    if config.train.deterministic:
        make_deterministic()
    dist = Distributed.from_environment(config.train.parallel)
    folder = open_run_folder(config.log.out_dir, config, dist, resume, overwrite)
    try:
        return run_in(folder, config, dist, model, reward)
    finally:
        folder.close()


def run_in(folder: RunFolder, config, dist: Distributed, model, reward) -> dict:
    """The training run of ``train`` in a claimed run folder."""
    from tqdm import tqdm

    out_dir = folder.directory
    model = model or build_model(config.model)
    reward = reward or build_reward(config)
    trainer = Trainer(config, model, reward, build_prompts(config), dist)
    store = RunCheckpoints(out_dir / "checkpoints", config.log.keep_last, trainer, run_id=folder.run_id)
    if folder.resumed:
        if store.restore(config) is None:
            print(f"[progrpo-fast] --resume: no valid checkpoint of run {folder.run_id} in {store.directory}, starting from iteration 0")
        else:
            apply_optimizer_settings(trainer.optimizer, config.train)
            print(f"[progrpo-fast] resumed run {folder.run_id} from iteration {trainer.iteration} ({store.directory})")
    main_rank = dist.rank == 0
    evaluates = bool(config.log.eval_prompts) and (main_rank or dist.sharded)  # a sharded network needs every rank
    loggers = Loggers(config, out_dir, trainer.iteration if folder.resumed else None) if main_rank else None
    bar = tqdm(total=config.train.iterations, initial=trainer.iteration, disable=not (config.log.progress and main_rank),
               desc="Pro-GRPO", unit="it")
    summary = {"run_id": folder.run_id}
    with GracefulStop() as stop:
        if evaluates:
            before = evaluations(config, model, reward, trainer.step_context)
            summary.update(evaluation_summary(before, "before", trainer.iteration))
        history, started, stopped_by = [], time.perf_counter(), None
        while trainer.iteration < config.train.iterations and stopped_by is None:
            metrics = trainer.train_iteration()
            stopped_by = stop.agreed(dist, model.device)
            every = config.log.eval_every
            if (evaluates and every and trainer.iteration % every == 0 and trainer.iteration < config.train.iterations
                    and stopped_by is None):  # the last: eval_after
                for key, result in evaluations(config, model, reward, trainer.step_context).items():
                    metrics["eval_reward" + key] = result["reward_mean"]
                    metrics[f"eval_reward{key}_se"] = standard_error(result["rewards"].mean(1))  # over the prompts
            history.append(metrics)
            due = (trainer.iteration % config.log.checkpoint_every == 0 or trainer.iteration == config.train.iterations
                   or stopped_by is not None)
            if main_rank:
                loggers.log(metrics)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['kl']:.2e}",
                                steps_per_s=f"{metrics['trajectory_steps_per_s']:.0f}")
                bar.update(1)
            if due:
                store.save()  # every rank: sharded (train.parallel=fsdp) or rank 0's one file
        bar.close()
        summary.update(iterations=trainer.iteration, seconds=time.perf_counter() - started, history=history,
                       **trajectory_step_savings(trainer.schedule))
        if stopped_by is not None:
            summary["stopped_by"] = stopped_by
        elif evaluates:  # a stopped run is not evaluated after training: it is not finished
            after = evaluations(config, model, reward, trainer.step_context)
            summary.update(evaluation_summary(after, "after", trainer.iteration))
        if main_rank:
            write_outputs(config, summary, loggers, out_dir, before[""] if evaluates else None,
                          after[""] if "eval_after" in summary else None)
    return summary


def write_outputs(config, summary: dict, loggers: Loggers, out_dir: Path, before, after) -> None:
    """Closes the loggers and writes the reward curve, the before/after grid (when both
    evaluations ran) and summary.json (rank 0)."""
    loggers.close()
    summary["reward_curve"] = plot_reward_curve(loggers.jsonl, out_dir / "reward_curve.png",
                                                evaluation_curves(config, summary, loggers.jsonl))
    if before is not None and after is not None:
        iterations = (summary["eval_before"]["iteration"], summary["eval_after"]["iteration"])
        summary["before_after_grid"] = save_before_after(before, after, out_dir / "before_after.png", iterations)
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in summary.items() if k != "history"}
    (out_dir / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
