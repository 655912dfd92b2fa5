"""bench convergence: its methods on shared trajectory ids, the summary's math on synthetic curves
with known answers (speed-ups, never-reached thresholds, paired resampling, area per TFLOP), and a
tiny resumable run through the CLI."""
import json
import math

import pytest
import torch

from progrpo_fast.bench import convergence
from progrpo_fast.bench import main as bench_main

# per-seed gains of the synthetic curves (seed s rises by SLOPES[s] per evaluation, then holds)
SLOPES = [0.01, 0.03, 0.02, 0.05, 0.04, 0.015]


def rows_of(method, per_seed, tflops_per_evaluation):
    return [{"method": method, "seed": seed, "iteration": i, "tflops": tflops_per_evaluation * i, "train_wall_s": 0.0,
             "eval_reward": r, "eval_se": 0.01} for seed, rewards in enumerate(per_seed) for i, r in enumerate(rewards)]


def rising(offsets=None, ceiling=1.0):
    """Per seed: 0.4 + offset (0 when None), rising by the seed's slope for 4 evaluations, then
    flat (capped at ``ceiling`` of the full gain)."""
    offsets = offsets or [0.0] * len(SLOPES)
    return [[0.4 + offset + slope * min(i, 4 * ceiling) for i in range(7)] for offset, slope in zip(offsets, SLOPES)]


def by_method(summary):
    return {row["method"]: row for row in summary}


def test_default_methods_share_the_largest_groups_trajectory_ids():
    methods = convergence.default_methods(None)
    assert [(m.name, m.schedule) for m in methods] == [
        ("naive-16", "16@5"), ("naive-4", "4@5"), ("static-ovf", "16:2=8,3=4@5"), ("pro-grpo-reward", "16:2=8,3=4@5"),
        ("pro-grpo-hidden", "16:2=8,3=4@5"), ("pro-grpo-reward-2g", "32:2=16,3=8@5")]
    assert {m.id_stride for m in methods} == {32} and methods[2].static_ovf and methods[-1].proxy == "reward"
    with pytest.raises(ValueError, match="pruned sampler.schedule"):
        convergence.default_methods(None, ["sampler.schedule=16@5"])


def test_reach_interpolates_and_never_is_inf():
    tflops = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    curve = torch.tensor([[0.0, 0.4, 0.8], [0.0, 0.2, 0.4]], dtype=torch.float64)
    assert convergence.reach(curve, tflops, torch.tensor([0.6, 0.6], dtype=torch.float64)).tolist() == [pytest.approx(1.5), math.inf]
    assert convergence.reach(curve, tflops, torch.tensor([-1.0, 0.1], dtype=torch.float64)).tolist() == [0.0, pytest.approx(0.5)]


def test_area_weights_integrate_the_piecewise_linear_curve_up_to_the_cut():
    tflops = torch.tensor([0.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    line = tflops.clone()  # r(c) = c: integral_0^T = T^2 / 2
    assert float(line @ convergence.area_weights(tflops, 3.0)) == pytest.approx(4.5)
    assert float(line @ convergence.area_weights(tflops, 4.0)) == pytest.approx(8.0)
    assert float(torch.ones(4, dtype=torch.float64) @ convergence.area_weights(tflops, 1.5)) == pytest.approx(1.5)


def test_interpolation_weights_read_the_curve_between_and_at_its_points():
    tflops = torch.tensor([0.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    curve = torch.tensor([0.0, 2.0, 3.0, 7.0], dtype=torch.float64)
    assert [float(curve @ convergence.interpolation_weights(tflops, at)) for at in (0.0, 0.5, 1.0, 3.0, 4.0)] == pytest.approx(
        [0.0, 1.0, 2.0, 5.0, 7.0])


def test_a_method_twice_as_fast_has_speed_up_two_at_every_threshold():
    """The same per-seed curves at half the TFLOPs per evaluation: every crossing of every resample
    is at half the compute, so the speed-up is 2 and so are both CI bounds."""
    rows = rows_of("naive", rising(), 2.0) + rows_of("fast", rising(), 1.0)
    fast = by_method(convergence.summarize(rows, ["naive", "fast"], draws=300))["fast"]
    for q in convergence.THRESHOLDS:
        key = f"speedup_{convergence.percent(q)}"
        assert fast[key] == pytest.approx(2.0) and fast[f"{key}_ci_low"] == pytest.approx(2.0) == fast[f"{key}_ci_high"]
        assert fast[f"tflops_to_{convergence.percent(q)}"] == pytest.approx(fast[f"reference_tflops_to_{convergence.percent(q)}"] / 2)
    naive = by_method(convergence.summarize(rows, ["naive", "fast"], draws=300))["naive"]
    assert naive["speedup_50"] == 1.0 and naive["area_per_tflop_minus_reference"] == 0.0 == naive["reward_at_end_minus_reference"]
    # the common range ends at fast's last evaluation (6 TFLOPs): fast has its full gain there, naive 3 of its 4 steps
    assert fast["reward_at_end_minus_reference"] == pytest.approx(sum(SLOPES) / len(SLOPES))
    # the best seed-mean gain: mean slope x 4 evaluations; the 50% level sits halfway up
    assert naive["target_50"] == pytest.approx(0.4 + 0.5 * 4 * sum(SLOPES) / len(SLOPES))


def test_an_unreached_threshold_is_inf_compute_and_zero_speed_up():
    """A method that gains 60% of the reference's gain at the same compute reaches 25 and 50%, never 75 or 90%."""
    rows = rows_of("naive", rising(), 1.0) + rows_of("short", rising(ceiling=0.6), 1.0)
    short = by_method(convergence.summarize(rows, ["naive", "short"], draws=300))["short"]
    assert short["speedup_25"] == pytest.approx(1.0) and short["speedup_50"] == pytest.approx(1.0)
    for q in (75, 90):
        assert short[f"tflops_to_{q}"] == math.inf and short[f"speedup_{q}"] == 0.0 and short[f"speedup_{q}_text"].startswith("never")
        assert short[f"speedup_{q}_ci_low"] == 0.0
    assert short["area_per_tflop_minus_reference"] < 0 and short["area_per_tflop_minus_reference_ci_high"] < 0
    assert short["reward_at_end_minus_reference"] == pytest.approx(-0.4 * 4 * sum(SLOPES) / len(SLOPES))
    assert short["reward_at_end_minus_reference_ci_high"] < 0


def test_a_reference_that_never_gains_defines_no_levels():
    flat = [[0.4] * 7 for _ in SLOPES]
    pro = by_method(convergence.summarize(rows_of("naive", flat, 1.0) + rows_of("pro", rising(), 1.0), ["naive", "pro"], draws=100))["pro"]
    assert math.isnan(pro["speedup_50"]) and pro["speedup_50_text"] == "no gain"
    assert pro["area_per_tflop_minus_reference"] > 0 and by_method(convergence.summarize(
        rows_of("naive", flat, 1.0), ["naive"], draws=10))["naive"]["area_per_tflop"] == 0.0


def test_per_seed_offsets_shared_by_both_methods_cancel_in_the_paired_bootstrap():
    """Adding a large per-seed offset to both methods' curves of that seed changes no statistic nor
    CI; the same offsets on mismatched seeds (unpaired) widen the speed-up's CI."""
    offsets = [0.3, -0.2, 0.25, -0.1, 0.15, -0.3]
    plain = rows_of("naive", rising(), 2.0) + rows_of("pro", [[r + 0.002 * i for i, r in enumerate(c)] for c in rising()], 1.5)
    shared = (rows_of("naive", rising(offsets), 2.0)
              + rows_of("pro", [[r + 0.002 * i for i, r in enumerate(c)] for c in rising(offsets)], 1.5))
    mismatched = (rows_of("naive", rising(offsets), 2.0)
                  + rows_of("pro", [[r + 0.002 * i for i, r in enumerate(c)] for c in rising(offsets[::-1])], 1.5))
    keys = ["speedup_25", "speedup_50_ci_low", "speedup_50_ci_high", "speedup_90", "area_per_tflop_minus_reference_ci_low",
            "reward_at_end_minus_reference", "reward_at_end_minus_reference_ci_high"]
    first, second = (by_method(convergence.summarize(rows, ["naive", "pro"], draws=500))["pro"] for rows in (plain, shared))
    assert [second[k] for k in keys] == pytest.approx([first[k] for k in keys])
    unpaired = by_method(convergence.summarize(mismatched, ["naive", "pro"], draws=500))["pro"]
    assert unpaired["speedup_50_ci_high"] - unpaired["speedup_50_ci_low"] > 2 * (first["speedup_50_ci_high"] - first["speedup_50_ci_low"])


def test_paired_differences_read_the_method_at_the_references_points_per_seed():
    """fast (1 TFLOP per evaluation) minus naive (2), per seed s with slope k_s: at c = 0, 2, 4, 6
    fast stands at k_s * min(c, 4), naive at k_s * c / 2, so the difference is k_s * (0, 1, 2, 1);
    per-seed offsets shared by both cancel."""
    offsets = [0.3, -0.2, 0.25, -0.1, 0.15, -0.3]
    rows = rows_of("naive", rising(offsets), 2.0) + rows_of("fast", rising(offsets), 1.0)
    grid, differences = convergence.paired_differences(rows, "fast", "naive", upto=6.0)
    assert grid.tolist() == [0.0, 2.0, 4.0, 6.0]
    expected = torch.tensor([[k * d for d in (0, 1, 2, 1)] for k in SLOPES], dtype=torch.float64)
    torch.testing.assert_close(differences, expected)
    centre, low, high = convergence.band(differences)
    assert centre[2] == pytest.approx(2 * sum(SLOPES) / len(SLOPES)) and low[2] < centre[2] < high[2]
    grid, differences = convergence.paired_differences(rows, "fast", "naive", upto=5.0)  # the end between two points
    assert grid.tolist() == [0.0, 2.0, 4.0, 5.0] and differences[:, -1].tolist() == pytest.approx([1.5 * k for k in SLOPES])
    end = by_method(convergence.summarize(rows, ["naive", "fast"], draws=10))["fast"]["reward_at_end_minus_reference"]
    assert float(convergence.paired_differences(rows, "fast", "naive", upto=6.0)[1][:, -1].mean()) == pytest.approx(end)


def test_cli_run_writes_the_table_and_resumes(tmp_path, capsys):
    """2 methods x 2 seeds x 2 iterations on the shapes model, tiny evaluation; a rerun trains nothing."""
    argv = ["convergence", "--methods", "naive-8,pro-grpo-reward", "--seeds", "2", "--budget", "2", "--evaluations", "2",
            "--out", str(tmp_path), "--tag", "cpu"]
    for key in ("sampler.schedule=8:2=4,3=2@5", "sampler.prompts_per_iteration=1", "train.lora_rank=4", "train.lora_alpha=8",
                "log.eval_prompts=2", "log.eval_per_prompt=2", "prompts.pool=8"):
        argv += ["--set", key]
    assert bench_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("[bench convergence]") == 4 and "| naive-8 |" in out and "| pro-grpo-reward |" in out
    payload = json.loads((tmp_path / "convergence_cpu.json").read_text())
    rows = payload["rows"]
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in ("naive-8", "pro-grpo-reward") for s in (0, 1)}
    assert all({"iteration", "tflops", "eval_reward", "eval_se"} <= set(r) for r in rows)
    # paired: the same evaluation of the same adapter before training in every method of a seed
    assert len({(r["seed"], r["eval_reward"]) for r in rows if r["iteration"] == 0}) <= 2
    assert [r["method"] for r in payload["summary"]] == ["naive-8", "pro-grpo-reward"]
    assert (tmp_path / "convergence_summary_cpu.csv").exists() and (tmp_path / "convergence_cpu.png").stat().st_size > 0
    assert bench_main(argv) == 0
    assert "[bench convergence]" not in capsys.readouterr().out
    assert json.loads((tmp_path / "convergence_cpu.json").read_text())["rows"] == rows
