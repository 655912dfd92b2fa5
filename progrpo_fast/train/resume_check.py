"""What a resumed run may change. The checkpoint stores the config it was trained with; on
``--resume`` every key that differs from the new config is either

- one a run cannot continue with (the state would not fit, or the run would silently become
  another run): the model (all but model.attention), the LoRA adapter (train.lora, and with LoRA
  on its rank, alpha and targets), sampler.schedule, train.parallel, train.seed, sampler.proxy and
  sampler.grid when the checkpoint holds the proxy's learned state, and switching the EMA off
  when the checkpoint holds EMA weights (they would be lost). All of them are one error that
  lists each change (key: old -> new) and how to proceed;
- or one it continues with (train.iterations, lr and the other optimizer settings, logging,
  evaluation, prompts, rewards, memory options, ...): listed in one log line. Switching the EMA on
  starts it from the resumed weights, saying so.

Keys present on one side only (a checkpoint from an older version) and log.out_dir (a run folder
may move) are not compared.
"""
from __future__ import annotations

import json
import shlex

from progrpo_fast.train.run_folder import ARCHIVE_PREFIX

__all__ = ["ResumeConfigError", "apply_optimizer_settings", "check_resume"]

LORA_SHAPE = ("train.lora_rank", "train.lora_alpha", "train.lora_targets")
NOT_COMPARED = ("log.out_dir",)
EMA_STARTS = "the EMA starts from the resumed weights"  # the run is the folder's (run.json), wherever it was moved


class ResumeConfigError(ValueError):
    """The config of a resumed run differs from its checkpoint's in ways the run cannot continue."""


def flat(config: dict) -> dict:
    """{section: {key: value}} -> {"section.key": value}."""
    return {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}


def why_not_continuable(key: str, new, saved: dict, state: dict) -> str | None:
    """Why a run cannot continue with ``key`` changed to ``new``; None when it can."""
    if key.startswith("model.") and key != "model.attention":
        return "the base model the trained weights belong to"
    if key == "train.lora" or (key in LORA_SHAPE and saved.get("train.lora")):
        return "the LoRA adapter the checkpoint holds"
    if key == "sampler.schedule":
        return "the prune schedule: group sizes, prune steps and the number of steps"
    if key == "train.parallel":
        return "how the checkpoint's optimizer state is laid out"
    if key == "train.seed":
        return "every iteration's prompts, noise and minibatches are keyed by it"
    if key in ("sampler.proxy", "sampler.grid") and state.get("probe") is not None:
        return f"the checkpoint holds the learned state of sampler.proxy={saved.get('sampler.proxy')}"
    if key == "train.ema_decay" and new is None and state.get("ema") is not None:
        return "the checkpoint's EMA weights would be lost"
    return None


def show(value) -> str:
    """A config value as an override writes it (YAML; JSON for lists and mappings)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def check_resume(state: dict, config, where: str) -> list[str]:
    """Compares the config stored in checkpoint ``state`` (read from ``where``) with ``config``:
    raises ResumeConfigError listing every change the run cannot continue with; else returns
    one note per change it continues with (an empty list when nothing changed)."""
    saved, now = flat(state["config"]), flat(config.to_dict())
    blocking, notes = [], []
    ema_starts = config.train.ema_decay is not None and state.get("ema") is None
    if ema_starts and saved.get("train.ema_decay") == now["train.ema_decay"]:  # an EMA the checkpoint lacks
        notes.append(f"train.ema_decay: {show(now['train.ema_decay'])} but the checkpoint holds no EMA weights "
                     f"({EMA_STARTS})")
    for key in (k for k in now if k in saved and saved[k] != now[k] and k not in NOT_COMPARED):
        change = f"{key}: {show(saved[key])} -> {show(now[key])}"
        reason = why_not_continuable(key, now[key], saved, state)
        if reason:
            blocking.append((key, f"{change} ({reason})"))
        else:
            notes.append(f"{change} ({EMA_STARTS})" if key == "train.ema_decay" and ema_starts else change)
    if blocking:
        restore = " ".join("--set " + shlex.quote(f"{key}={show(saved[key])}") for key, _ in blocking)
        changes = "".join(f"\n  {line}" for _, line in blocking)
        raise ResumeConfigError(
            f"--resume: the config differs from the one of checkpoint {where} in ways the run cannot continue with:{changes}\n"
            f"Set them back to continue the run ({restore}), or start a new run with these settings: "
            f"--overwrite (moves this run's files into {ARCHIVE_PREFIX}<run id>/ in log.out_dir) or another log.out_dir")
    return notes


def apply_optimizer_settings(optimizer, train) -> None:
    """Sets the config's lr, betas, eps and weight decay on every parameter group (loading an
    optimizer state restores the saved run's)."""
    for group in optimizer.param_groups:
        group.update(lr=train.lr, betas=tuple(train.adam_betas), eps=train.adam_eps, weight_decay=train.weight_decay)
