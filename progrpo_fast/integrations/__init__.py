"""Integrations with training frameworks: a distributed prompt sampler that keeps each group on one rank."""
from .distributed import RankLocalGroupSampler

__all__ = ["RankLocalGroupSampler"]
