"""``progrpo-fast export-checkpoint``: the trained weights of a checkpoint (sharded or one file; LoRA
or full fine-tuning; the weights or their EMA) to one safetensors file for inference, read by one
process without a process group.

LoRA adapters are written in diffusers' LoRA format (``transformer.`` or ``unet.`` keys without
peft's adapter name, rank, alpha and target modules in the file's metadata), so
``pipe.load_lora_weights(path)`` loads them; full weights keep the network's parameter names
(``pipe.transformer.load_state_dict(safetensors.torch.load_file(path))``).
"""
from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import torch

from progrpo_fast.train.checkpoint import CHECKPOINT_NAME, CheckpointStore
from progrpo_fast.train.model_kinds import MODEL_KINDS
from progrpo_fast.train.sharded_checkpoint import SHARDED_NAME, ShardedCheckpointStore, newest_checkpoint

ADAPTER_NAME = re.compile(r"\.(lora_[AB])\.default(?=\.)")


def diffusers_lora_name(name: str) -> str:
    """A peft LoRA parameter name without its adapter name (``...to_q.lora_A.default.weight`` ->
    ``...to_q.lora_A.weight``), as diffusers' LoRA files name them."""
    return ADAPTER_NAME.sub(r".\1", name)


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """The checkpoint ``source`` names: a step-XXXXXXXX.pt file or step-XXXXXXXX.dcp folder, or the
    newest verified checkpoint of a run folder or its checkpoints/ folder."""
    path = Path(source)
    if (path.is_file() and CHECKPOINT_NAME.match(path.name)) or (path.is_dir() and SHARDED_NAME.match(path.name)):
        return path
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = newest_checkpoint(folder)
        if found is None:
            raise FileNotFoundError(f"no checkpoint that verifies in {folder}")
        return found
    raise FileNotFoundError(f"{source}: expected a run folder, its checkpoints/ folder, a step-XXXXXXXX.pt file or a "
                            "step-XXXXXXXX.dcp folder")


def read_weights(path: Path, ema: bool = False, dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], dict, int]:
    """(the trainable weights, or their EMA, by parameter name; the run's config; the iteration) of
    the checkpoint at ``path``, verified, cast to ``dtype`` (None: as saved)."""
    if SHARDED_NAME.match(path.name):
        store = ShardedCheckpointStore(path.parent)
        step = int(SHARDED_NAME.match(path.name).group(1))
        shared, _ = store.verify(step)
        has_ema, config, iteration = shared["ema"], shared["config"], shared["iteration"]
        if has_ema or not ema:
            weights = store.read_tensors(step, "ema" if ema else "trainable", dtype)
            weights = {name: weights[name] for name in shared["trainable"]}
    else:
        state = CheckpointStore(path.parent).load(int(CHECKPOINT_NAME.match(path.name).group(1)))
        has_ema, config, iteration = state["ema"] is not None, state["config"], state["iteration"]
        if has_ema or not ema:
            values = state["ema"] if ema else state["trainable"].values()
            weights = {name: t if dtype is None else t.to(dtype) for name, t in zip(state["trainable"], values)}
    if ema and not has_ema:
        raise ValueError(f"checkpoint {path} holds no EMA (its run had train.ema_decay=null): export it without --ema")
    return weights, config, iteration


def export_checkpoint(source: str | os.PathLike, out: str | os.PathLike, ema: bool = False, dtype: torch.dtype | None = None) -> dict:
    """Writes the weights of ``source``'s checkpoint (see resolve_checkpoint) to the safetensors
    file ``out`` (atomically); returns what was written."""
    from safetensors.torch import save_file

    path, out = resolve_checkpoint(source), Path(out)
    weights, config, iteration = read_weights(path, ema, dtype)
    train = config["train"]
    metadata = {"format": "pt"}
    if train["lora"]:
        network = "transformer" if MODEL_KINDS[config["model"]["kind"]].flow else "unet"  # the diffusion kinds (SD1) train a UNet
        weights = {f"{network}.{diffusers_lora_name(name)}": t for name, t in weights.items()}
        adapter = {f"{network}.r": train["lora_rank"], f"{network}.lora_alpha": train["lora_alpha"],
                   f"{network}.target_modules": list(train["lora_targets"])}
        metadata["lora_adapter_metadata"] = json.dumps(adapter, indent=2, sort_keys=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex}")
    try:
        save_file({name: t.contiguous() for name, t in weights.items()}, str(temporary), metadata=metadata)
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
    return {"checkpoint": path, "iteration": iteration, "out": out, "tensors": len(weights), "lora": bool(train["lora"]),
            "bytes": sum(t.nbytes for t in weights.values()), "ema": ema}
