"""The built-in compositional text-to-image task: coloured shapes, counts and spatial relations.

A scene holds one or two object groups (shape, colour, count 1..3); two groups are tied by a
relation ("left of", "right of", "above", "below"; the first group is the subject). Captions
follow one fixed grammar, e.g. "a green triangle", "two red circles left of a blue square":

    caption  := group [relation group]
    group    := count colour shape        (shape is plural when count > 1)
    count    := "a" | "two" | "three"

Images are drawn on a black background with pure RGB colours, so every palette colour sits at
distance >= 1 from every other one and from the background (what `reward.ShapesReward` relies
on). Objects are 6-9 px wide at 32 px (scaled with `size`), axis-aligned, never touching
(>= 2 px apart), and placed so that every subject centre lies on the related side of every
object centre, at least `RELATION_SEPARATION` px away along the relation's axis.
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import torch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
BACKGROUND: tuple[float, float, float] = (0.0, 0.0, 0.0)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {shape: shape + "s" for shape in SHAPES}
COUNT_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three"}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
MAX_COUNT = 3
MAX_CAPTION_WORDS = 8  # "three yellow triangles right of three green circles"
VOCABULARY: tuple[str, ...] = (
    *COUNT_WORDS.values(),
    *COLOURS,
    *SHAPES,
    *PLURALS.values(),
    *dict.fromkeys(word for relation in RELATIONS for word in relation.split()),
)

REFERENCE_SIZE = 32  # px; object sizes and gaps below are given at this resolution
OBJECT_SIZE_RANGE = (6, 9)  # px, side of an object's bounding box
OBJECT_GAP = 2  # px of background between any two bounding boxes
RELATION_SEPARATION = 6  # px between subject and object centres along the relation axis
SUPERSAMPLE = 4  # anti-aliasing: coverage = mean of SUPERSAMPLE^2 sub-pixel samples


@dataclass(frozen=True)
class ObjectGroup:
    """`count` objects of one shape and colour."""

    shape: str
    colour: str
    count: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {', '.join(SHAPES)}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {', '.join(COLOURS)}")
        if not isinstance(self.count, int) or not 1 <= self.count <= MAX_COUNT:
            raise ValueError(f"count must be an int in [1, {MAX_COUNT}], got {self.count!r}")


@dataclass(frozen=True)
class Scene:
    """One group alone (relation None) or `groups[0]` <relation> `groups[1]`; group colours differ."""

    groups: tuple[ObjectGroup, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        if len(self.groups) not in (1, 2):
            raise ValueError(f"a scene holds 1 or 2 object groups, got {len(self.groups)}")
        if len(self.groups) == 2 and self.relation not in RELATIONS:
            raise ValueError(f"two groups need a relation in {RELATIONS}, got {self.relation!r}")
        if len(self.groups) == 1 and self.relation is not None:
            raise ValueError(f"a single group takes no relation, got {self.relation!r}")
        if len(self.groups) == 2 and self.groups[0].colour == self.groups[1].colour:
            raise ValueError(f"the two groups must have different colours, both are {self.groups[0].colour!r}")

    @property
    def num_objects(self) -> int:
        return sum(group.count for group in self.groups)


def _python_rng(generator: torch.Generator | int | None) -> random.Random:
    """A `random.Random` seeded from an int, a torch.Generator, or torch's global generator."""
    if isinstance(generator, int) and not isinstance(generator, bool):
        return random.Random(generator)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    return random.Random(int(torch.randint(0, 2**62, (), generator=generator)))


def sample_scene(generator: torch.Generator | int | None = None, single_group_prob: float = 1 / 3) -> Scene:
    """A uniformly random scene: one group with probability `single_group_prob`, else two
    groups of distinct colours with a uniform relation; shapes and counts uniform."""
    rng = _python_rng(generator)
    num_groups = 1 if rng.random() < single_group_prob else 2
    colours = rng.sample(list(COLOURS), num_groups)
    groups = tuple(ObjectGroup(rng.choice(SHAPES), colour, rng.randint(1, MAX_COUNT)) for colour in colours)
    return Scene(groups, rng.choice(RELATIONS) if num_groups == 2 else None)


def _group_phrase(group: ObjectGroup) -> str:
    shape = group.shape if group.count == 1 else PLURALS[group.shape]
    return f"{COUNT_WORDS[group.count]} {group.colour} {shape}"


def caption(scene: Scene) -> str:
    """The scene's caption, e.g. "two red circles left of a blue square"."""
    phrases = [_group_phrase(group) for group in scene.groups]
    return f"{phrases[0]} {scene.relation} {phrases[1]}" if scene.relation else phrases[0]


_WORD_TO_COUNT = {word: count for count, word in COUNT_WORDS.items()}
_PLURAL_TO_SHAPE = {plural: shape for shape, plural in PLURALS.items()}
_FIRST_WORD_TO_RELATION = {relation.split()[0]: relation for relation in RELATIONS}


def _parse_error(text: str, words: list[str], pos: int, expected: str) -> ValueError:
    if pos >= len(words):
        return ValueError(f"cannot parse caption {text!r}: it ends early, expected {expected}")
    return ValueError(f"cannot parse caption {text!r}: word {words[pos]!r} (word {pos + 1}) is not {expected}")


def _parse_group(text: str, words: list[str], pos: int) -> tuple[ObjectGroup, int]:
    def word_at(i: int, table, expected: str):
        if i >= len(words) or words[i] not in table:
            raise _parse_error(text, words, i, expected)
        return table[words[i]]

    count = word_at(pos, _WORD_TO_COUNT, f"a count word ({', '.join(_WORD_TO_COUNT)})")
    colour = word_at(pos + 1, {c: c for c in COLOURS}, f"a colour ({', '.join(COLOURS)})")
    forms = PLURALS if count > 1 else {shape: shape for shape in SHAPES}
    number = "plural" if count > 1 else "singular"
    shape = word_at(pos + 2, {form: _PLURAL_TO_SHAPE.get(form, form) for form in forms.values()},
                    f"a {number} shape after {words[pos]!r} ({', '.join(forms.values())})")
    return ObjectGroup(shape, colour, count), pos + 3


def parse_caption(text: str) -> Scene:
    """Inverse of `caption` (case and extra whitespace ignored). Raises ValueError naming the
    first word that does not fit the grammar, or saying the caption ends early."""
    if not isinstance(text, str):
        raise ValueError(f"caption must be a str, got {type(text).__name__}")
    words = text.lower().split()
    first, pos = _parse_group(text, words, 0)
    if pos == len(words):
        return Scene((first,))
    relation = _FIRST_WORD_TO_RELATION.get(words[pos])
    relation_words = relation.split() if relation else []
    if relation is None or words[pos:pos + len(relation_words)] != relation_words:
        bad = pos if relation is None else pos + 1
        raise _parse_error(text, words, bad, f"part of a relation ({', '.join(RELATIONS)})")
    second, end = _parse_group(text, words, pos + len(relation_words))
    if end != len(words):
        raise _parse_error(text, words, end, "allowed after the second group (the caption should end there)")
    try:
        return Scene((first, second), relation)
    except ValueError as err:  # same colour twice
        position = pos + len(relation_words) + 2  # 1-based index of the second group's colour word
        raise ValueError(f"cannot parse caption {text!r}: word {second.colour!r} (word {position}) "
                         f"repeats the first group's colour; {err}") from None


@dataclass(frozen=True)
class _Box:
    """An object's placement: top-left corner (x0, y0) and side `size`, in pixels."""

    x0: int
    y0: int
    size: int

    def apart_from(self, other: _Box, gap: int) -> bool:
        return (self.x0 + self.size + gap <= other.x0 or other.x0 + other.size + gap <= self.x0
                or self.y0 + self.size + gap <= other.y0 or other.y0 + other.size + gap <= self.y0)


def _place_objects(scene: Scene, size: int, rng: random.Random) -> list[tuple[ObjectGroup, _Box]]:
    """Random non-touching boxes respecting the relation (rejection sampling).

    For a relation, a split line s is drawn at 35-65% of the axis; subject centres go to one
    side (centre <= s - sep/2) and object centres to the other (centre >= s + sep/2). The
    largest allowed side shrinks with the object count (9 px for <= 2 objects, 8 for <= 4,
    7 above, at 32 px) and by one more px after every 50 failed attempts.
    """
    scale = size / REFERENCE_SIZE
    gap = max(1, round(OBJECT_GAP * scale))
    separation = RELATION_SEPARATION * scale
    n = scene.num_objects
    smallest = max(2, round(OBJECT_SIZE_RANGE[0] * scale))
    largest = max(smallest, round((OBJECT_SIZE_RANGE[1] - (n > 2) - (n > 4)) * scale))
    axis = 0 if scene.relation in ("left of", "right of") else 1
    subject_first = scene.relation in ("left of", "above")
    for attempt in range(400):
        max_side = max(smallest, largest - attempt // 50)
        split = rng.uniform(0.35, 0.65) * size
        placed: list[tuple[ObjectGroup, _Box]] = []
        for index, group in enumerate(scene.groups):
            for _ in range(group.count):
                side = rng.randint(smallest, max_side)
                lo = [1, 1]  # allowed range of the top-left corner per axis (1 px border)
                hi = [size - 1 - side, size - 1 - side]
                if scene.relation is not None:
                    before = (index == 0) == subject_first  # this group's centres lie before the split
                    if before:
                        hi[axis] = min(hi[axis], math.floor(split - separation / 2 - side / 2))
                    else:
                        lo[axis] = max(lo[axis], math.ceil(split + separation / 2 - side / 2))
                if lo[0] > hi[0] or lo[1] > hi[1]:
                    break  # this attempt fails: fewer than n boxes get placed
                for _ in range(100):
                    box = _Box(rng.randint(lo[0], hi[0]), rng.randint(lo[1], hi[1]), side)
                    if all(box.apart_from(other, gap) for _, other in placed):
                        placed.append((group, box))
                        break
                else:
                    break
        if len(placed) == n:
            return placed
    raise RuntimeError(f"could not place {n} objects on a {size}x{size} canvas; use a larger size")


def _coverage(shape: str, box: _Box, size: int) -> torch.Tensor:
    """(size, size) fraction of each pixel covered by the shape, from SUPERSAMPLE^2 samples."""
    fine = size * SUPERSAMPLE
    coords = (torch.arange(fine, dtype=torch.float32) + 0.5) / SUPERSAMPLE  # sample centres in px
    y, x = coords[:, None], coords[None, :]
    half = box.size / 2
    cx, cy = box.x0 + half, box.y0 + half
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    elif shape == "square":
        inside = ((x - cx).abs() <= half) & ((y - cy).abs() <= half)
    else:  # upward isosceles triangle: apex at the box's top centre, base along its bottom edge
        inside = (y >= box.y0) & (y <= box.y0 + box.size) & ((x - cx).abs() <= (y - box.y0) / 2)
    return inside.float().reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(dim=(1, 3))


def _check_size(size) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 16:
        raise ValueError(f"size must be an int >= 16 (objects are 6-9 px at 32 px), got {size!r}")


def render(scene: Scene, size: int = 32, generator: torch.Generator | int | None = None) -> torch.Tensor:
    """Draws the scene: float32 (3, size, size) in [0, 1], black background, anti-aliased."""
    _check_size(size)
    rng = _python_rng(generator)
    image = torch.zeros(3, size, size)
    for group, box in _place_objects(scene, size, rng):
        colour = torch.tensor(COLOURS[group.colour]).view(3, 1, 1)
        image += colour * _coverage(group.shape, box, size)
    return image.clamp_(0.0, 1.0)


class ShapesDataset(torch.utils.data.Dataset):
    """`num_samples` (image (3, size, size), caption) pairs; item i depends only on (seed, i)."""

    def __init__(self, num_samples: int, size: int = 32, seed: int = 0):
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        _check_size(size)
        self.num_samples, self.size, self.seed = num_samples, size, seed

    def __len__(self) -> int:
        return self.num_samples

    def scene(self, index: int) -> Scene:
        return sample_scene(self._item_seed(index, 0))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        scene = self.scene(index)
        return render(scene, self.size, self._item_seed(index, 1)), caption(scene)

    def _item_seed(self, index: int, stream: int) -> int:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        digest = hashlib.sha256(f"{self.seed}:{index % self.num_samples}:{stream}".encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 2
