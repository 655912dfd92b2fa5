"""The moving-shape video variant of the shapes task: one group of coloured shapes that moves
left, right, up or down, e.g. "two red circles moving right", and a programmatic reward read from
the frames' pixels, so the whole video path (Wan adapter, video pruning, video rewards) trains
end to end on a CPU.

    caption := group "moving" direction        (group as in the shapes task; one group)

Rendering: the scene is drawn once (``shapes.render``) on a canvas ``travel`` x size larger than
the frame and seen through a size x size window that slides across it, so the objects cross
``travel`` x size pixels, in whole-pixel steps spread evenly over the frames, and stay fully
inside every frame (scenes that would leave the view are redrawn).

Reward (``MovingShapesReward``), per video with frames sampled every ``frame_stride``:
    appearance = mean over the sampled frames of the shapes score of the static caption ("two red
                 circles"): colour, shape and count
    motion     = clamp(d / d_expected, 0, 1): d = the displacement of the named colour's pixel
                 centroid from the first to the last sampled frame along the caption's direction,
                 d_expected = travel x width x (f_last - f_first) / (F - 1), what a rendered video
                 moves; 0 when a sampled frame shows no pixel of that colour
    score      = appearance x (1 + motion) / 2
A rendered video scores 1, the same video played backwards or a still frame 1/2, a blank one 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from progrpo_fast.rewards.base import Reward
from progrpo_fast.rewards.video import FrameReward, check_video
from progrpo_fast.tasks.reward import COLOUR_NAMES, ShapesScore
from progrpo_fast.tasks.shapes import COLOURS, MAX_COUNT, SHAPES, ObjectGroup, Scene, caption, parse_caption, render

DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy) in pixels
VIDEO_WORDS: tuple[str, ...] = ("moving", *DIRECTIONS)
TRAVEL = 0.25  # fraction of the frame side the objects cross over a video


@dataclass(frozen=True)
class MovingScene:
    """One object group and the direction it moves in."""

    group: ObjectGroup
    direction: str

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}; expected one of {', '.join(DIRECTIONS)}")

    @property
    def still(self) -> Scene:
        return Scene((self.group,))


def moving_caption(scene: MovingScene) -> str:
    """e.g. "two red circles moving right"."""
    return f"{caption(scene.still)} moving {scene.direction}"


def parse_moving_caption(text: str) -> MovingScene:
    """Inverse of `moving_caption`; ValueError saying what does not fit the grammar."""
    if not isinstance(text, str):
        raise ValueError(f"caption must be a str, got {type(text).__name__}")
    still, sep, direction = text.lower().strip().rpartition(" moving ")
    if not sep or direction.strip() not in DIRECTIONS:
        raise ValueError(f"cannot parse video caption {text!r}: expected '<group> moving <{'|'.join(DIRECTIONS)}>'")
    scene = parse_caption(still)
    if len(scene.groups) != 1:
        raise ValueError(f"cannot parse video caption {text!r}: the moving-shape task has one object group, got {len(scene.groups)}")
    return MovingScene(scene.groups[0], direction.strip())


def sample_moving_scene(generator: torch.Generator | None = None) -> MovingScene:
    """A uniformly random shape, colour, count (1..MAX_COUNT) and direction."""

    def pick(n: int) -> int:
        return int(torch.randint(n, (), generator=generator))

    group = ObjectGroup(SHAPES[pick(len(SHAPES))], list(COLOURS)[pick(len(COLOURS))], 1 + pick(MAX_COUNT))
    return MovingScene(group, list(DIRECTIONS)[pick(len(DIRECTIONS))])


def render_video(scene: MovingScene, frames: int = 9, size: int = 32, travel: float = TRAVEL,
                 generator: torch.Generator | None = None, max_attempts: int = 200) -> torch.Tensor:
    """float32 (3, frames, size, size) in [0, 1]: the scene seen through a sliding window (module doc)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise ValueError(f"frames must be an int >= 2 (a video moves between frames), got {frames!r}")
    if not 0 < travel < 1:
        raise ValueError(f"travel must be in (0, 1) (a fraction of the frame side), got {travel!r}")
    shift = max(1, round(travel * size))
    dx, dy = DIRECTIONS[scene.direction]
    for _ in range(max_attempts):
        canvas = render(scene.still, size + shift, generator=generator)
        # offsets of the window per frame: the objects move by +step along the direction
        steps = [round(f * shift / (frames - 1)) for f in range(frames)]
        xs = [shift - s if dx > 0 else s if dx < 0 else shift // 2 for s in steps]
        ys = [shift - s if dy > 0 else s if dy < 0 else shift // 2 for s in steps]
        seen = torch.zeros(size + shift, size + shift, dtype=torch.bool)  # pixels inside every window
        seen[max(ys) : min(ys) + size, max(xs) : min(xs) + size] = True
        if not bool(canvas[:, ~seen].any()):
            return torch.stack([canvas[:, y : y + size, x : x + size] for x, y in zip(xs, ys)], dim=1)
    raise RuntimeError(f"could not keep {scene.group.count} objects inside a {size} px view over {frames} frames; use a larger size")


class MovingShapesReward(Reward):
    """videos (B, 3, F, H, W) in [0, 1], moving-shape captions -> (B,) float32 in [0, 1] (module doc).
    Keyword arguments other than frame_stride and travel go to the shapes score."""

    name = "moving_shapes"
    accepts_video = True

    def __init__(self, frame_stride: int = 2, travel: float = TRAVEL, **shapes_kwargs):
        self.appearance = FrameReward(ShapesScore(**shapes_kwargs), frame_stride)
        self.travel = travel

    def score(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_video(videos, self.name)
        if videos.shape[2] < 2:
            raise ValueError(f"{self.name}: a video needs at least 2 frames, got {videos.shape[2]}")
        scenes = [parse_moving_caption(p) for p in prompts]
        appearance = self.appearance(videos, [caption(s.still) for s in scenes])
        return appearance * (1 + self.motion(videos, scenes).to(appearance.device)) / 2

    def motion(self, videos: torch.Tensor, scenes: list[MovingScene]) -> torch.Tensor:
        """(B,) clamp(d / d_expected, 0, 1) of the named colour's centroid (module doc)."""
        sampled = self.appearance.frames(videos.shape[2])
        first, last = sampled[0], sampled[-1]
        if first == last:
            raise ValueError(f"frame_stride={self.appearance.frame_stride} samples one frame of {videos.shape[2]}: no motion to measure")
        scorer = self.appearance.image_reward.scorer
        height, width = videos.shape[-2:]
        expected = self.travel * width * (last - first) / (videos.shape[2] - 1)
        pixels = videos[:, :, [first, last]].detach().to("cpu", torch.float32)
        scores = []
        for video, scene in zip(pixels, scenes):
            labels = scorer.segment(video.transpose(0, 1))  # (2, H, W) palette index per pixel
            mask = labels == COLOUR_NAMES.index(scene.group.colour)
            if not bool(mask.flatten(1).any(1).all()):
                scores.append(0.0)
                continue
            dx, dy = DIRECTIONS[scene.direction]
            ys, xs = torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32)
            area = mask.sum((1, 2)).float()
            centre_x = (mask * xs).sum((1, 2)) / area
            centre_y = (mask * ys[:, None]).sum((1, 2)) / area
            moved = dx * float(centre_x[1] - centre_x[0]) + dy * float(centre_y[1] - centre_y[0])
            scores.append(min(max(moved / expected, 0.0), 1.0))
        return torch.tensor(scores, dtype=torch.float32)
