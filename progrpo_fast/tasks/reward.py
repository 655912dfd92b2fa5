"""A programmatic GenEval-like reward for the shapes task, computed from pixels.

Pipeline per image: (1) every pixel takes the nearest of the palette colours and the background
in RGB, and stays unlabelled when that distance exceeds `colour_threshold`; (2) 8-connected
components per colour (batched max-label propagation with pointer jumping, pure torch);
components under `min_area` are speckle and dropped; (3) each component's shape comes from
two numbers: fill = area / bounding-box area (square ~1, circle ~pi/4, upward triangle ~0.5)
and drop = (centroid y - bbox centre y) / bbox height (triangle ~ +1/6 since its mass sits low,
0 for the symmetric shapes); sparse components (fill < 0.4) and oversized ones (a bbox side
over `max_extent` of the image; objects are 6-9 px at 32) are "irregular" and match no shape;
(4) the prompt's groups are matched to components by colour.

Score in [0, 1], with n_g the prompt's count for group g and m_g the components of its colour:
    count_g    = 1 if m_g == n_g, 0.5 if |m_g - n_g| == 1 and m_g > 0, else 0
    shape_g    = fraction of the m_g components classified as g's shape (0 if m_g == 0)
    relation   = fraction of (subject, object) component pairs whose centres differ along the
                 relation's axis by more than `relation_margin` on the right side (0 if a group
                 is missing); 1 for one-group prompts
    extras     = components of colours the prompt does not name
    score      = mean_g count_g * (1 + mean_g shape_g) / 2 * (1 + relation) / 2
                 / (1 + extra_object_penalty * extras)
So a correct image scores 1, a blank one 0; an off-by-one count halves the group's count term,
a wrong shape or a swapped relation halves the score at most, and stray objects divide it.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from progrpo_fast.rewards.base import Reward

from .shapes import BACKGROUND, COLOURS, SHAPES, Scene, parse_caption

COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
IRREGULAR = "irregular"  # a component too sparse or too large to be any shape; matches no prompt
SHAPE_CLASSES: tuple[str, ...] = (*SHAPES, IRREGULAR)


@functools.lru_cache(maxsize=4096)
def _parse(prompt: str) -> Scene:
    return parse_caption(prompt)


def classify_shape(fill: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Index into SHAPE_CLASSES from fill ratio and normalised centroid drop (see module doc).

    Irregular when fill < 0.4; else triangle when drop > 0.06 or fill < 0.6; else square when
    fill > 0.9; else circle. (Rendered shapes at 6-9 px: square fill 1; circle fill 0.67-0.89;
    triangle fill 0.51-0.60 and drop 0.11-0.16; circle and square drop 0.)
    """
    index = {name: i for i, name in enumerate(SHAPE_CLASSES)}
    shape = torch.where(fill > 0.9, index["square"], index["circle"])
    shape = torch.where((drop > 0.06) | (fill < 0.6), index["triangle"], shape)
    return torch.where(fill < 0.4, index[IRREGULAR], shape)


class ShapesReward:
    """reward(images (B, 3, H, W) in [0, 1], prompts list[str]) -> (B,) float32 in [0, 1].

    colour_threshold: max RGB distance from the nearest palette colour for a pixel to take it
        (palette colours and background are >= 1 apart; at 0.5 the half-covered edge pixels of
        yellow shapes, (0.5, 0.5, 0), stay unlabelled instead of turning red or green).
    min_area: smallest component kept, as a fraction of the image (10 px at 32x32; the
        smallest rendered object covers 18 px).
    max_extent: a component whose bbox side exceeds this fraction of the image is irregular.
    relation_margin: centre offset a relation needs, as a fraction of the image side (2 px at 32).
    extra_object_penalty: the score is divided by 1 + penalty * (objects of unnamed colours).
    """

    def __init__(self, colour_threshold: float = 0.5, min_area: float = 10 / 1024, max_extent: float = 0.5,
                 relation_margin: float = 2 / 32, extra_object_penalty: float = 0.5):
        self.colour_threshold = colour_threshold
        self.min_area = min_area
        self.max_extent = max_extent
        self.relation_margin = relation_margin
        self.extra_object_penalty = extra_object_penalty
        self.palette = torch.tensor([COLOURS[name] for name in COLOUR_NAMES] + [BACKGROUND])

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        images, scenes = self._check(images, prompts)
        scores = [self._score(scene, objects, images.shape[-2:])[0]
                  for scene, objects in zip(scenes, self.components(images))]
        return torch.tensor(scores, dtype=torch.float32)

    def details(self, image: torch.Tensor, prompt: str) -> dict:
        """Everything the score of one image (3, H, W) came from: components found, per-group
        matches, each term and the score."""
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            raise ValueError(f"image must be a (3, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
        images, (scene,) = self._check(image[None], [prompt])
        objects = self.components(images)[0]
        score, terms = self._score(scene, objects, images.shape[-2:])
        return {"prompt": prompt, "scene": scene, "objects": objects, **terms, "score": score}

    def _check(self, images, prompts) -> tuple[torch.Tensor, list[Scene]]:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            got = getattr(images, "shape", type(images).__name__)
            raise ValueError(f"images must be a (B, 3, H, W) tensor, got {got}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")
        if isinstance(prompts, str) or len(prompts) != images.shape[0]:
            raise ValueError(f"prompts must be a list of {images.shape[0]} strings (one per image)")
        images = images.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images contain NaN or inf values")
        return images, [_parse(prompt) for prompt in prompts]

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H, W) int64 palette index per pixel, -1 for background/unlabelled."""
        dist2 = ((images[:, None] - self.palette[None, :, :, None, None]) ** 2).sum(2)  # (B, K+1, H, W)
        best, label = dist2.min(1)
        background = len(COLOUR_NAMES)
        return label.masked_fill((label == background) | (best > self.colour_threshold**2), -1)

    def components(self, images: torch.Tensor) -> list[list[dict]]:
        """Per image, the kept connected components: colour, shape, area (px), centre (x, y) in
        px, bbox (x0, y0, x1, y1) inclusive, fill and drop."""
        batch, _, height, width = images.shape
        labels = self.segment(images)
        num_colours = len(COLOUR_NAMES)
        mask = (labels[:, None] == torch.arange(num_colours)[None, :, None, None]).reshape(-1, 1, height, width)
        pixel_ids = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, 1, height, width)
        component = torch.where(mask, pixel_ids, 0.0)  # id of the largest pixel seen so far, 0 = none
        flat_mask = mask.view(mask.shape[0], -1)
        while True:  # max over 3x3 same-colour neighbours, then jump to that pixel's current id
            grown = F.max_pool2d(component, 3, stride=1, padding=1).view(mask.shape[0], -1) * flat_mask
            jumped = component.view(mask.shape[0], -1).gather(1, (grown.long() - 1).clamp_(min=0)) * flat_mask
            jumped = torch.maximum(jumped, grown).view_as(component)
            if torch.equal(jumped, component):
                break
            component = jumped

        plane, pixel = flat_mask.nonzero(as_tuple=True)
        roots = component.view(mask.shape[0], -1)[plane, pixel].long()
        keys, which = torch.unique(plane * (height * width + 1) + roots, return_inverse=True)
        count = len(keys)
        xs, ys = (pixel % width).float(), (pixel // width).float()
        area = torch.bincount(which, minlength=count).float()
        centre_x = torch.bincount(which, xs, minlength=count) / area
        centre_y = torch.bincount(which, ys, minlength=count) / area

        def reduce(values: torch.Tensor, how: str) -> torch.Tensor:
            start = torch.full((count,), float("inf") if how == "amin" else -float("inf"))
            return start.scatter_reduce(0, which, values, how)

        x0, x1, y0, y1 = reduce(xs, "amin"), reduce(xs, "amax"), reduce(ys, "amin"), reduce(ys, "amax")
        box_w, box_h = x1 - x0 + 1, y1 - y0 + 1
        fill = area / (box_w * box_h)
        drop = (centre_y - (y0 + y1) / 2) / box_h
        oversized = (box_w > self.max_extent * width) | (box_h > self.max_extent * height)
        shape = classify_shape(fill, drop).masked_fill(oversized, SHAPE_CLASSES.index(IRREGULAR))
        key_plane = keys // (height * width + 1)
        kept = area >= self.min_area * height * width

        objects: list[list[dict]] = [[] for _ in range(batch)]
        columns = (key_plane, shape, area, centre_x, centre_y, x0, y0, x1, y1, fill, drop)
        rows = zip(*(column[kept].tolist() for column in columns))
        for p, s, a, cx, cy, bx0, by0, bx1, by1, f, d in rows:
            objects[p // num_colours].append({
                "colour": COLOUR_NAMES[p % num_colours], "shape": SHAPE_CLASSES[s], "area": int(a),
                "centre": (cx, cy), "bbox": (int(bx0), int(by0), int(bx1), int(by1)), "fill": f, "drop": d,
            })
        return objects

    def _score(self, scene: Scene, objects: list[dict], image_hw: tuple[int, int]) -> tuple[float, dict]:
        matched = [[o for o in objects if o["colour"] == group.colour] for group in scene.groups]
        counts, shapes = [], []
        for group, found in zip(scene.groups, matched):
            off_by = abs(len(found) - group.count)
            counts.append(1.0 if off_by == 0 else 0.5 if off_by == 1 and found else 0.0)
            shapes.append(sum(o["shape"] == group.shape for o in found) / len(found) if found else 0.0)
        relation = 1.0
        if scene.relation is not None:
            axis = 0 if scene.relation in ("left of", "right of") else 1
            sign = 1.0 if scene.relation in ("left of", "above") else -1.0
            margin = self.relation_margin * image_hw[1 - axis]
            pairs = [sign * (b["centre"][axis] - a["centre"][axis]) > margin
                     for a in matched[0] for b in matched[1]]
            relation = sum(pairs) / len(pairs) if pairs else 0.0
        named = {group.colour for group in scene.groups}
        extras = sum(o["colour"] not in named for o in objects)
        count_term, shape_term = sum(counts) / len(counts), sum(shapes) / len(shapes)
        score = count_term * (1 + shape_term) / 2 * (1 + relation) / 2 / (1 + self.extra_object_penalty * extras)
        terms = {"found": [len(found) for found in matched], "count": counts, "shape": shapes,
                 "relation": relation, "extras": extras}
        return score, terms


class ShapesScore(Reward):
    """ShapesReward behind the reward interface (registered as "shapes" by
    progrpo_fast.train.reward_registry); keyword arguments go to it (thresholds, penalty)."""

    name = "shapes"

    def __init__(self, **kwargs):
        self.scorer = ShapesReward(**kwargs)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.scorer(images, prompts)
