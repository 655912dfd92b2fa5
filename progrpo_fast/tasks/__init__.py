"""The built-in tiny compositional text-to-image task: procedural shapes data, a word-level
tokenizer for its captions, and a programmatic GenEval-like reward computed from pixels."""
from .reward import ShapesReward
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
    "COLOURS", "RELATIONS", "SHAPES", "ObjectGroup", "Scene", "ShapesDataset", "ShapesReward",
    "WordTokenizer", "caption", "parse_caption", "render", "sample_scene",
]
