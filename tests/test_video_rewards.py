"""Video rewards: an image reward per frame with a stride, the temporal-consistency term, and the
moving-shape video variant of the shapes task (captions, rendering, reward)."""
import pytest
import torch

from progrpo_fast.rewards import FrameReward, TemporalConsistency, WeightedReward
from progrpo_fast.rewards.base import Reward
from progrpo_fast.tasks import ShapesScore
from progrpo_fast.tasks.shapes_video import (
    DIRECTIONS,
    MovingShapesReward,
    moving_caption,
    parse_moving_caption,
    render_video,
    sample_moving_scene,
)
from progrpo_fast.train.reward_registry import build_reward


class MeanRed(Reward):
    """An image reward: the mean red value (records each call's batch shape)."""

    name = "mean_red"

    def __init__(self):
        self.calls = []

    def score(self, images, prompts):
        self.calls.append(tuple(images.shape))
        return images[:, 0].mean((1, 2))


def videos_and_captions(count=8, frames=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scenes = [sample_moving_scene(gen) for _ in range(count)]
    return torch.stack([render_video(s, frames=frames, generator=gen) for s in scenes]), [moving_caption(s) for s in scenes]


def test_frame_reward_averages_the_strided_frames():
    videos = torch.rand(3, 3, 9, 8, 8)
    image_reward = MeanRed()
    reward = FrameReward(image_reward, frame_stride=4)
    assert reward.frames(9) == [0, 4, 8] and reward.name == "mean_red"
    got = reward(videos, ["a", "b", "c"])
    torch.testing.assert_close(got, videos[:, 0, [0, 4, 8]].mean((2, 3)).mean(1))
    assert image_reward.calls == [(3, 3, 8, 8)] * 3  # one batched call per sampled frame


def test_temporal_consistency():
    still = torch.rand(2, 3, 1, 4, 4).expand(2, 3, 5, 4, 4)
    assert torch.equal(TemporalConsistency()(still, ["a", "b"]), torch.ones(2))
    flicker = torch.zeros(1, 3, 4, 2, 2)
    flicker[:, :, 1::2] = 1.0  # black / white every other frame: every pixel changes by 1
    assert TemporalConsistency()(flicker, ["a"]).item() == 0.0
    half = torch.zeros(1, 3, 2, 2, 2)
    half[:, :, 1, 0] = 1.0  # one frame change over half the pixels
    assert TemporalConsistency()(half, ["a"]).item() == pytest.approx(0.5)


def test_video_reward_errors():
    with pytest.raises(ValueError, match="frame_stride must be an int >= 1"):
        FrameReward(MeanRed(), frame_stride=0)
    with pytest.raises(ValueError, match="already scores videos"):
        FrameReward(TemporalConsistency())
    with pytest.raises(ValueError, match="images must be a \\(B, 3, H, W\\) or \\(B, 3, F, H, W\\)"):
        TemporalConsistency()(torch.rand(2, 3, 4), ["a", "b"])
    with pytest.raises(ValueError, match="videos must be \\(B, 3, F, H, W\\)"):
        TemporalConsistency()(torch.rand(2, 3, 4, 4), ["a", "b"])
    with pytest.raises(ValueError, match="at least 2 frames"):
        TemporalConsistency()(torch.rand(1, 3, 1, 4, 4), ["a"])
    with pytest.raises(ValueError, match="images must be a \\(B, 3, H, W\\) tensor"):
        ShapesScore()(torch.rand(1, 3, 2, 32, 32), ["a red circle"])  # image rewards still refuse videos


def test_weighted_reward_mixes_video_and_per_frame_rewards():
    videos, captions = videos_and_captions(count=4)
    weighted = WeightedReward({"moving_shapes": 1.0, "temporal_consistency": 0.1, "mean_red": 0.5},
                              {"moving_shapes": build_reward("moving_shapes"), "temporal_consistency": build_reward("temporal_consistency"),
                               "mean_red": FrameReward(MeanRed(), 2)})
    parts = weighted.components(videos, captions)
    assert set(parts) == {"moving_shapes", "temporal_consistency", "mean_red"} and all(v.shape == (4,) for v in parts.values())
    torch.testing.assert_close(weighted(videos, captions),
                               parts["moving_shapes"] + 0.1 * parts["temporal_consistency"] + 0.5 * parts["mean_red"])


def test_captions_round_trip_and_bad_captions_are_refused():
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        scene = sample_moving_scene(gen)
        assert parse_moving_caption(moving_caption(scene)) == scene
    for bad, message in [("a red circle", "expected '<group> moving"), ("a red circle moving sideways", "expected '<group> moving"),
                         ("a red circle left of a blue square moving up", "one object group"), ("a purple circle moving up", "colour")]:
        with pytest.raises(ValueError, match=message):
            parse_moving_caption(bad)


@pytest.mark.parametrize("frames", [2, 5, 9, 17])
def test_rendered_objects_move_in_the_caption_direction_and_stay_in_view(frames):
    gen = torch.Generator().manual_seed(frames)
    for direction in DIRECTIONS:
        scene = parse_moving_caption(f"two red squares moving {direction}")
        video = render_video(scene, frames=frames, generator=gen)
        assert video.shape == (3, frames, 32, 32) and video.min() >= 0 and video.max() <= 1
        mass = video[0].sum((1, 2))  # red mass per frame: the objects never leave the view
        torch.testing.assert_close(mass, mass[:1].expand_as(mass))
        ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        centre = torch.stack([(video[0] * xs).sum((1, 2)), (video[0] * ys).sum((1, 2))], 1) / mass[:, None]
        dx, dy = DIRECTIONS[direction]
        moved = (centre[-1] - centre[0]) @ torch.tensor([dx, dy], dtype=torch.float32)
        assert moved == pytest.approx(8.0)  # travel 0.25 x 32 px


def test_moving_shapes_reward_scores_rendered_reversed_still_and_blank_videos():
    videos, captions = videos_and_captions(count=12)
    reward = MovingShapesReward()
    torch.testing.assert_close(reward(videos, captions), torch.ones(12))
    torch.testing.assert_close(reward(videos.flip(2), captions), torch.full((12,), 0.5))  # played backwards: no motion credit
    still = videos[:, :, :1].expand_as(videos).contiguous()
    torch.testing.assert_close(reward(still, captions), torch.full((12,), 0.5))
    assert torch.equal(reward(torch.zeros_like(videos), captions), torch.zeros(12))
    wrong_colour = videos[:, [1, 2, 0]]  # red -> blue, green -> red, blue -> green: every colour changes
    assert reward(wrong_colour, captions).max() < 0.5
