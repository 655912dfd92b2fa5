"""progrpo-fast: a fast engine for Pro-GRPO (expand-and-prune GRPO for diffusion/flow models)."""
__version__ = "0.1.0"
