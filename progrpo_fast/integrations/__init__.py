"""Pro-GRPO inside the sampler and trainer loops you already have (Flow-GRPO's ``pipeline_with_logprob``,
DanceGRPO's, your own):

- ``StepPruner`` is called once per denoising step and shrinks the loop's per-row state at the
  schedule's checkpoints;
- ``keyed_noise`` / ``keyed_generators`` key each row's noise by its trajectory id, the one change a
  sampler must make so that pruning never changes what a survivor samples;
- ``RankLocalGroupSampler`` keeps each prompt's G_max copies on one rank in multi-GPU training.

Layer: imports ``ops`` and ``sampling`` only."""
from progrpo_fast.integrations.distributed import RankLocalGroupSampler
from progrpo_fast.integrations.stepping import PruneStep, StepPruner, keyed_generators, keyed_seed
from progrpo_fast.sampling.sde import keyed_noise

__all__ = ["PruneStep", "RankLocalGroupSampler", "StepPruner", "keyed_generators", "keyed_noise", "keyed_seed"]
