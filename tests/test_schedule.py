"""PruneSchedule: validation, presets, per-step sizes (pruning before the checkpoint step runs),
trajectory-step arithmetic and the string form."""
import pytest

from progrpo_fast.sampling import PruneSchedule


def test_flow_preset_prunes_before_checkpoint_steps():
    schedule = PruneSchedule.flow()
    # steps 0..4 run with 48 rows, 5..6 with 24, 7..9 with 12
    assert schedule.sizes() == [48] * 5 + [24] * 2 + [12] * 3
    assert schedule.trajectory_steps() == 48 * 5 + 24 * 2 + 12 * 3 == 324
    assert schedule.trajectory_steps(num_prompts=3) == 3 * 324
    assert schedule.final_group_size == 12 and not schedule.is_naive
    assert schedule.keep_at(5) == 24 and schedule.keep_at(7) == 12 and schedule.keep_at(6) is None


def test_other_presets():
    flash = PruneSchedule.flash()
    assert flash.sizes() == [24] * 5 + [16] * 2 + [12] * 3
    assert flash.trajectory_steps() == 24 * 5 + 16 * 2 + 12 * 3 == 188
    diffusion = PruneSchedule.diffusion()
    assert diffusion.sizes() == [48] * 30 + [32] * 10 + [8] * 10
    assert diffusion.trajectory_steps() == 48 * 30 + 32 * 10 + 8 * 10 == 1840
    assert diffusion.final_group_size == 8


def test_naive_schedule():
    naive = PruneSchedule.naive(24, 10)
    assert naive.is_naive and naive.final_group_size == 24
    assert naive.sizes() == [24] * 10 and naive.trajectory_steps(2) == 480
    assert naive.keep_at(5) is None


def test_paper_compute_comparison():
    """Pro-GRPO 48 -> 24 -> 12 costs 324 trajectory-steps, 1.35x naive G = 24 (240), with a final group of 12."""
    assert PruneSchedule.flow().trajectory_steps() / PruneSchedule.naive(24, 10).trajectory_steps() == pytest.approx(1.35)


def test_lists_become_tuples_and_schedule_is_hashable():
    schedule = PruneSchedule(8, [2, 4], [4, 2], 6)
    assert schedule.checkpoints == (2, 4) and schedule.keep == (4, 2)
    assert hash(schedule) == hash(PruneSchedule(8, (2, 4), (4, 2), 6))


@pytest.mark.parametrize(
    "args,field",
    [
        ((48, (5, 7), (24, 12), 0), "num_steps"),
        ((0, (), (), 10), "group_size_max"),
        ((48, (5, 7), (24,), 10), "same length"),
        ((48, (0,), (24,), 10), "checkpoints must be ints in"),
        ((48, (9,), (24,), 10), "checkpoints must be ints in"),
        ((48, (7, 5), (24, 12), 10), "strictly ascending"),
        ((48, (5, 5), (24, 12), 10), "strictly ascending"),
        ((48, (5, 7), (48, 12), 10), "keep must be strictly decreasing"),
        ((48, (5, 7), (24, 24), 10), "keep must be strictly decreasing"),
        ((48, (5, 7), (24, 0), 10), "keep must be strictly decreasing"),
        ((48, (5.0,), (24,), 10), "checkpoints must be ints"),
        ((True, (), (), 10), "group_size_max"),
    ],
)
def test_validation_errors_name_the_field(args, field):
    with pytest.raises(ValueError, match=field):
        PruneSchedule(*args)


def test_last_legal_checkpoint():
    schedule = PruneSchedule(4, (8,), (2,), 10)
    assert schedule.sizes() == [4] * 8 + [2] * 2


@pytest.mark.parametrize(
    "text,expected",
    [
        ("48:5=24,7=12@10", PruneSchedule.flow()),
        (" 24 : 5 = 16 , 7 = 12 @ 10 ", PruneSchedule.flash()),
        ("48:30=32,40=8@50", PruneSchedule.diffusion()),
        ("24@10", PruneSchedule.naive(24, 10)),
    ],
)
def test_from_string(text, expected):
    assert PruneSchedule.from_string(text) == expected
    assert PruneSchedule.from_string(str(expected)) == expected


def test_str_form():
    assert str(PruneSchedule.flow()) == "48:5=24,7=12@10"
    assert str(PruneSchedule.naive(24, 10)) == "24@10"


@pytest.mark.parametrize("text", ["48:5=24,7=12", "48:5-24@10", "", "a@10", "48:@10", None])
def test_from_string_rejects_malformed(text):
    with pytest.raises(ValueError, match="G_MAX:T1=K1"):
        PruneSchedule.from_string(text)


def test_from_string_validates_values():
    with pytest.raises(ValueError, match="keep must be strictly decreasing"):
        PruneSchedule.from_string("48:5=48@10")
