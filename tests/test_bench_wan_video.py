"""The video benchmark (progrpo_fast.bench.wan_video): paired ratios, and one small run's rows."""
import math

import pytest

from progrpo_fast.bench import wan_video


def test_paired_ratio_mean_and_student_t_interval():
    mean, (low, high) = wan_video.paired_ratio([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert mean == pytest.approx(1.0)
    assert (low, high) == (pytest.approx(1.0 - 4.303 * 0.5 / math.sqrt(3)), pytest.approx(1.0 + 4.303 * 0.5 / math.sqrt(3)))
    assert math.isnan(wan_video.paired_ratio([1.0], [2.0])[1][0])


def test_run_reports_each_method_with_its_trajectory_step_ratio():
    rows = wan_video.measure(frames=(5,), iterations=2, methods={"naive": "4@5", "pro-grpo": "8:2=4,3=2@5"}, height=16, width=16,
                         progress=lambda line: None)
    naive, pro = rows
    assert (naive["method"], pro["method"]) == ("naive", "pro-grpo") and naive["latent_shape"] == "4x2x4x4"
    assert (naive["trajectory_steps"], pro["trajectory_steps"]) == (20, 8 * 2 + 4 + 2 * 2)
    assert pro["trajectory_steps_vs_naive"] == pytest.approx(24 / 20) and (naive["trained_rows"], pro["trained_rows"]) == (4, 2)
    assert naive["time_vs_naive"] == pytest.approx(1.0) and pro["total_s"] > 0 and pro["time_vs_naive_median"] > 0
    assert all(math.isfinite(r["reward_mean"]) for r in rows)


def test_methods_need_a_naive_baseline():
    with pytest.raises(ValueError, match="methods must include 'naive'"):
        wan_video.measure(methods={"pro-grpo": "8:2=4@4"})
