"""Checks every diffusers adapter must pass, shared by the per-model test files: pruned sampling
follows the unpruned trajectories, keeping k = G at every checkpoint is the unpruned run, and a
local folder loads to the same predictions."""
from __future__ import annotations

import dataclasses

import torch

from progrpo_fast.sampling import PruneSchedule
from progrpo_fast.sampling.sampler import ExpandPruneSampler


@dataclasses.dataclass(frozen=True)
class KeepAllSchedule(PruneSchedule):
    """Checkpoints that keep every row (k = G), which PruneSchedule's validation refuses: the
    selection and in-place compaction run, with the identity as the survivors."""

    def validate(self) -> None:
        pass


def check_pruned_sampling(model, prompts: list[str], method: str, seed: int = 2) -> None:
    full = ExpandPruneSampler(model, PruneSchedule.naive(4, 4), method=method).sample(prompts, seed=seed)
    keep_all = ExpandPruneSampler(model, KeepAllSchedule(4, (1, 2), (4, 4), 4), method=method).sample(prompts, seed=seed)
    assert len(keep_all.prune_log) == 2 and torch.equal(keep_all.trajectory_ids, full.trajectory_ids)
    assert torch.equal(keep_all.latents, full.latents) and torch.equal(keep_all.log_probs, full.log_probs)
    pruned = ExpandPruneSampler(model, PruneSchedule.from_string("4:1=3,2=2@4"), method=method).sample(prompts, seed=seed)
    ids = pruned.trajectory_ids
    rows = 2 * len(prompts)
    assert pruned.latents.shape == (rows, 5, *model.latent_shape())
    assert torch.equal(ids // 4, torch.arange(len(prompts)).repeat_interleave(2))
    assert set(pruned.cond) == set(full.cond) and all(v.shape[0] == rows for v in pruned.cond.values())
    for key, value in pruned.cond.items():
        assert torch.equal(value, full.cond[key][ids]), key
    torch.testing.assert_close(pruned.latents, full.latents[ids], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pruned.log_probs, full.log_probs[ids], rtol=1e-4, atol=1e-4)
    assert (pruned.log_probs[:, :-1] != 0).all()


def check_from_pretrained(adapter_class, pipe, model, prompts: list[str], folder, **kwargs) -> None:
    pipe.save_pretrained(folder)
    loaded = adapter_class.from_pretrained(folder, **kwargs)
    x = torch.randn(len(prompts), *model.latent_shape())
    t = model.schedule(4)["timesteps"][1]
    torch.testing.assert_close(loaded.predict(x, t, loaded.encode(prompts)), model.predict(x, t, model.encode(prompts)))
