"""The built-in tiny compositional text-to-image task: procedural shapes data, a word-level
tokenizer for its captions, and a programmatic GenEval-like reward computed from pixels
(``ShapesReward``; ``ShapesScore`` is it behind the reward interface of progrpo_fast.rewards)."""
from .reward import ShapesReward, ShapesScore
from .shapes import (
    COLOURS,
    RELATIONS,
    SHAPES,
    ObjectGroup,
    Scene,
    ShapesDataset,
    caption,
    parse_caption,
    render,
    sample_scene,
)
from .tokenizer import WordTokenizer

__all__ = [
    "COLOURS", "RELATIONS", "SHAPES", "ObjectGroup", "Scene", "ShapesDataset", "ShapesReward", "ShapesScore",
    "WordTokenizer", "caption", "parse_caption", "render", "sample_scene",
]
