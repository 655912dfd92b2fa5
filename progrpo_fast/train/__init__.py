"""GRPO training: config tree, trainer, checkpoints and the run loop behind `progrpo-fast train`."""
