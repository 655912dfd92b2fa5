"""Benchmarks against naive GRPO: the cost model's counts (by hand), its FLOP units, interleaved
throughput rounds on the built-in model, selection quality against the oracle, paired and resumable
reward-per-compute runs with bootstrap CIs, the clustering summary, results files, the CLI table."""
import json

import pytest
import torch

from progrpo_fast.bench import BENCHMARKS, clustering, results, reward, selection, snr, throughput
from progrpo_fast.bench import main as bench_main
from progrpo_fast.bench.cost_model import UnitCosts, iteration_counts, measure_units, predict
from progrpo_fast.bench.methods import Method, paired_methods, select_methods
from progrpo_fast.models.sd3 import SD3Denoiser
from progrpo_fast.models.tiny import tiny_sd3_pipeline
from progrpo_fast.train.config import load_config
from progrpo_fast.train.trainer import Trainer

FLOW = "48:5=24,7=12@10"
SMALL = ["sampler.prompts_per_iteration=1", "sampler.proxy=latent", "train.minibatch_rows=4", "log.eval_prompts=0", "log.progress=false"]


class Brightness:
    weights = {"bright": 1.0}

    def components(self, images, prompts):
        return {"bright": images.mean((1, 2, 3))}


@pytest.mark.parametrize("method, expected", [
    # (S, C, R, N * tau, N) for one prompt and tau = 5 trained steps per row
    (Method("naive-24", "24@10"), (240, 0, 24, 120, 24)),
    (Method("naive-48", "48@10"), (480, 0, 48, 240, 48)),
    (Method("static-ovf", FLOW, static_ovf=True), (480, 0, 48, 60, 12)),  # samples 48 to the end, trains 12
    (Method("pro-latent", FLOW, proxy="latent"), (48 * 5 + 24 * 2 + 12 * 3, 0, 12, 60, 12)),
    (Method("pro-reward", FLOW, proxy="reward"), (324, 48 + 24, 12, 60, 12)),  # scores 48 rows at step 5, 24 at step 7
])
def test_iteration_counts_by_hand(method, expected):
    counts = iteration_counts(method, prompts=1, trained_steps=5)
    assert (counts.trajectory_steps, counts.proxy_scored, counts.reward_scored, counts.trained_row_steps, counts.trained_rows) == expected
    assert iteration_counts(method, prompts=3, trained_steps=5).trajectory_steps == 3 * expected[0]


def test_predict_and_network_evaluations():
    counts = iteration_counts(Method("pro-reward", FLOW, proxy="reward"), prompts=1, trained_steps=5)
    cost = predict(counts, UnitCosts(net=1.0, score=10.0, train=3.0))
    assert cost == {"sampling": 324.0, "proxy": 720.0, "reward": 120.0, "training": 180.0, "total": 1344.0}
    assert counts.network_evaluations(cfg=True, kl=True) == 2 * (324 + 2 * 60)
    assert counts.network_evaluations(cfg=False, kl=False) == 324 + 60


def test_paper_setting_costs_less_than_naive_24_when_training_dominates():
    """Pro-GRPO samples more (324 vs 240 trajectory-steps) but trains on half the rows."""
    units = UnitCosts(net=1.0, score=0.0, train=3.0)  # backward = 2 forwards
    naive = predict(iteration_counts(Method("n", "24@10"), 1, 9), units)["total"]
    pro = predict(iteration_counts(Method("p", FLOW), 1, 9), units)["total"]
    assert (naive, pro) == (240 + 24 * 9 * 3, 324 + 12 * 9 * 3) and pro / naive < 0.74


def tiny_trainer(tmp_path, *extra):
    config = load_config(None, ["sampler.schedule=6:2=3@4", "train.lora_rank=4", f"log.out_dir={tmp_path}", *SMALL, *extra])
    model = SD3Denoiser(tiny_sd3_pipeline(), max_sequence_length=4, resolution=16)
    return Trainer(config, model, Brightness(), lambda it, rank, n: ["a red circle"] * n)


def test_flop_units_are_per_row_and_training_costs_forward_plus_backward(tmp_path):
    trainer = tiny_trainer(tmp_path, "train.beta_kl=0")
    flops2, seconds2 = measure_units(trainer, rows=2, repeats=1)
    flops4, _ = measure_units(trainer, rows=4, repeats=1)
    assert flops2.net == pytest.approx(flops4.net, rel=0.02) and flops2.train == pytest.approx(flops4.train, rel=0.02)
    assert flops2.net > 0 and min(seconds2.net, seconds2.score, seconds2.train) > 0
    # one forward plus a backward: with frozen LoRA bases the backward computes input gradients
    # (about one forward, less the layers nothing upstream needs) but no base-weight gradients
    assert 1.5 * flops2.net < flops2.train < 3.1 * flops2.net
    with_kl, _ = measure_units(tiny_trainer(tmp_path, "train.beta_kl=0.1"), rows=2, repeats=1)
    assert with_kl.train == pytest.approx(flops2.train + flops2.net, rel=0.02)  # plus the reference forward


def test_interleaved_throughput_rounds_on_the_built_in_model():
    methods = [Method("naive", "4@8"), Method("static", "6:3=4,5=2@8", static_ovf=True),
               Method("pro-reward", "6:3=4,5=2@8", proxy="reward")]
    rows = throughput.throughput(None, methods, rounds=2, overrides=SMALL, progress=False)
    assert [r["method"] for r in rows] == [m.name for m in methods]
    for method, row in zip(methods, rows):
        counts = iteration_counts(method, 1, row["trained_row_steps"] // row["trained_rows"])
        assert row["trajectory_steps"] == counts.trajectory_steps and row["rounds"] == 2 and len(row["per_round_total_s"]) == 2
        assert row["measured_s_total_min"] <= row["measured_s_total"] <= row["measured_s_total_max"]
        assert all(row[f"measured_s_{p}"] >= 0 for p in throughput.PHASES) and row["predicted_s_total"] > 0
        assert (row["measured_s_proxy"] > 0) == method.name.startswith("pro")  # only pruning rollouts consult a proxy
        assert (row["tflops_proxy"] > 0) == (method.proxy == "reward" and not method.static_ovf)
        assert row["time_vs_first_naive_min"] <= row["time_vs_first_naive"] <= row["time_vs_first_naive_max"]
    assert rows[0]["time_vs_first_naive"] == 1.0
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        throughput.throughput(None, methods, rounds=0, overrides=SMALL)


def test_throughput_pins_the_paper_presets_cfg_noise_and_trained_steps():
    """bench throughput runs the sd35m_pickscore preset's CFG, SDE window and trained fraction on
    the built-in model: all 9 noisy steps of 10 trained, as Flow-GRPO's pickscore_sd3."""
    from progrpo_fast.bench.methods import THROUGHPUT_METHODS, build_trainer, method_config

    paper = load_config(throughput.PAPER_PRESET, check_paths=False)
    trainer = build_trainer(method_config(None, THROUGHPUT_METHODS[0], [*throughput.paper_setting(), "log.progress=false"]))
    config = trainer.config
    assert (config.model.guidance_scale, config.sampler.noise_steps, config.train.timestep_fraction) == (
        paper.model.guidance_scale, paper.sampler.noise_steps, paper.train.timestep_fraction)
    assert trainer.model.cfg and trainer.trained_steps(0) == list(range(9))


def test_selection_quality_is_bounded_by_the_oracle():
    methods = [Method("pro-grpo-latent", "6:3=3,5=2@8"), Method("pro-grpo-random", "6:3=3,5=2@8", proxy="random"),
               Method("pro-grpo-hidden", "6:3=3,5=2@8", proxy="hidden")]
    rows = selection.selection_quality(None, methods, batches=2, prompts_per_batch=3, overrides=[*SMALL, "prompts.pool=0"])
    assert {(r["method"], r["checkpoint_step"]) for r in rows} == {(m.name, t) for m in methods for t in (3, 5)}
    for r in rows:
        assert r["groups"] == (3 if r["method"] == "pro-grpo-hidden" else 6)  # a learning proxy is scored on the second half
        assert r["proxy_ms_per_call"] > 0
        assert r["kept_minus_random"] == pytest.approx(r["std_kept"] - r["std_random"]) and r["kept_minus_random_se"] >= 0
        assert r["std_kept"] <= r["std_oracle"] + 1e-6 and r["std_random"] <= r["std_oracle"] + 1e-6
        assert r["kept_over_oracle"] <= 1 + 1e-6


@pytest.mark.parametrize("ratio", [0.0, 0.05, 1.0])
def test_signal_to_noise_estimate_recovers_a_known_ratio(ratio):
    """Draws g = mu + noise with |mu|^2 = ratio * tr(Cov) in 256 dimensions."""
    gen = torch.Generator().manual_seed(0)
    n, dim = 4000, 256
    mu = torch.zeros(dim)
    mu[0] = (ratio * dim) ** 0.5  # tr(Cov) = dim for unit-variance noise
    draws = mu + torch.randn(n, dim, generator=gen)
    estimate = snr.signal_to_noise(draws.sum(0), float(draws.pow(2).sum()), n)
    assert estimate == pytest.approx(ratio, abs=0.01 + 0.05 * ratio)
    with pytest.raises(ValueError, match="n >= 2"):
        snr.signal_to_noise(draws[0], 1.0, 1)


def test_gradient_snr_per_trained_step_leaves_the_weights_alone(tmp_path):
    trainer = tiny_trainer(tmp_path, "train.beta_kl=0", "sampler.noise_steps=null")
    before = [p.detach().clone() for p in trainer.parameters]
    rows = snr.gradient_snr(trainer, batches=3)
    assert [r["step"] for r in rows] == [0, 1, 2, "all"]  # T = 4 steps: steps 0..2 are trainable
    window = snr.gradient_snr(tiny_trainer(tmp_path, "train.beta_kl=0", "sampler.noise_steps=[1]"), batches=2)
    assert [r["step"] for r in window] == [1, "all"]
    assert all(r["rows_per_batch"] == 3 and r["batches"] == 3 for r in rows)  # 1 prompt x K = 3 survivors
    assert all(r["snr_per_batch"] == r["snr_per_batch"] for r in rows)  # finite, not NaN
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.parameters)) and trainer.iteration == 0


def test_sd35_medium_sized_random_model_for_gpu_throughput(tmp_path):
    """model.kind=sd35m_random: SD3.5-Medium's published transformer and VAE sizes (built on the
    meta device here: no memory), selectable from a config, with no model.path."""
    from progrpo_fast.models.tiny import sd35_medium_sized_pipeline

    pipe = sd35_medium_sized_pipeline(device="meta")
    assert sum(p.numel() for p in pipe.transformer.parameters()) == pytest.approx(2.243e9, rel=1e-3)
    assert len(pipe.transformer.transformer_blocks) == 24 and pipe.transformer.config.dual_attention_layers == tuple(range(13))
    assert pipe.vae.config.latent_channels == 16 and pipe.vae_scale_factor == 8 and pipe.tokenizer.model_max_length == 77
    config = load_config("sd35m_pickscore",
                         ["model.kind=sd35m_random", "reward.weights={jpeg_compressibility: 1.0}", "prompts.source=shapes"])
    assert config.model.path is None and config.model.resolution == 512
    with pytest.raises(ValueError, match="takes no model.path"):
        load_config(None, ["model.kind=sd35m_random", f"model.path={tmp_path}"])


def test_build_model_wraps_the_sd35m_sized_pipeline(monkeypatch):
    """The config -> model path of model.kind=sd35m_random, with the tiny pipeline standing in for
    the 2.2e9-parameter one (which this CPU test cannot afford to run)."""
    from progrpo_fast.models import tiny
    from progrpo_fast.train.build import build_model

    monkeypatch.setattr(tiny, "sd35_medium_sized_pipeline", lambda device: tiny_sd3_pipeline())
    config = load_config(None, ["model.kind=sd35m_random", "model.resolution=16", "model.dtype=bf16", "model.max_sequence_length=4"])
    model = build_model(config.model, device="cpu")
    assert isinstance(model, SD3Denoiser) and model.dtype == torch.bfloat16 and model.latent_shape() == (4, 8, 8)


def curve_rows(method, per_seed, tflops_per_iteration=2.0):
    return [{"method": method, "seed": seed, "iteration": i, "tflops": tflops_per_iteration * i, "train_wall_s": float(i), "eval_reward": r}
            for seed, rewards in enumerate(per_seed) for i, r in enumerate(rewards)]


def test_compute_to_reach_interpolates_the_seed_mean_curve():
    rows = curve_rows("m", [[0.0, 0.4, 0.8], [0.0, 0.2, 0.6]])
    curve = reward.mean_curve(list(reward.curves(rows, "m").values()))
    assert curve == [(0.0, 0.0), (2.0, pytest.approx(0.3)), (4.0, pytest.approx(0.7))]
    assert reward.compute_to_reach(curve, 0.5) == pytest.approx(3.0)
    assert reward.compute_to_reach(curve, 0.9) is None and reward.compute_to_reach(curve, -1.0) == 0.0


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_more_seeds():
    gen = torch.Generator().manual_seed(0)
    values = (0.1 + 0.05 * torch.randn(64, generator=gen)).tolist()
    low, high = reward.bootstrap_ci(lambda chosen: sum(values[s] for s in chosen) / len(chosen), list(range(64)), draws=2000)
    assert low < sum(values) / 64 < high and high - low < 0.05  # about 4 standard errors (0.05 / 8) wide
    few_low, few_high = reward.bootstrap_ci(lambda chosen: sum(values[s] for s in chosen) / len(chosen), list(range(8)), draws=2000)
    assert few_high - few_low > high - low


def test_summary_pairs_seeds_with_the_reference():
    """The reference ends at 0.6 after 4 TFLOPs; the method reaches 0.6 at 2 TFLOPs (half) and
    ends 0.1 above it in every seed; a method without seed 1 is paired on seed 0 only."""
    rows = curve_rows("naive", [[0.4, 0.5, 0.6], [0.4, 0.5, 0.6]])
    rows += curve_rows("pro", [[0.4, 0.6, 0.7], [0.4, 0.6, 0.7]])
    rows += curve_rows("late", [[0.4, 0.4, 0.5]])
    summary = {row["method"]: row for row in reward.summarize(rows, ["naive", "pro", "late"], draws=200)}
    assert summary["naive"]["final_minus_reference"] == 0 and summary["naive"]["fraction_of_reference_compute"] == 1.0
    pro = summary["pro"]
    assert pro["seeds"] == 2 and pro["final_minus_reference"] == pytest.approx(0.1)
    assert pro["final_minus_reference_ci_low"] == pytest.approx(0.1) and pro["fraction_of_reference_compute"] == pytest.approx(0.5)
    assert pro["per_seed_final_minus_reference"] == [pytest.approx(0.1)] * 2
    assert summary["late"]["seeds"] == 1 and summary["late"]["fraction_of_reference_compute"] == float("inf")


def test_paired_methods_share_noise_naive_k_takes_the_first_ids_of_each_group():
    methods = {m.name: m for m in paired_methods("16:3=8,5=4@8")}
    assert list(methods) == ["naive-16", "naive-4", "static-ovf", "pro-grpo-reward", "pro-grpo-latent", "pro-grpo-probe",
                             "pro-grpo-hidden", "pro-grpo-random"]
    assert methods["naive-4"].schedule == "4@8" and "sampler.trajectory_id_stride=16" in methods["naive-4"].overrides()
    from progrpo_fast.sampling.sampler import ExpandPruneSampler
    from progrpo_fast.sampling.schedule import PruneSchedule

    model = SD3Denoiser(tiny_sd3_pipeline(), max_sequence_length=4, resolution=16)
    prompts = ["a red circle", "two blue squares"]
    wide = ExpandPruneSampler(model, PruneSchedule.naive(6, 3)).sample(prompts, seed=3)
    narrow = ExpandPruneSampler(model, PruneSchedule.naive(2, 3), id_stride=6).sample(prompts, seed=3)
    assert narrow.trajectory_ids.tolist() == [0, 1, 6, 7] and narrow.prompt_index.tolist() == [0, 0, 1, 1]
    assert torch.allclose(narrow.latents, wide.latents[[0, 1, 6, 7]], atol=1e-5)
    with pytest.raises(ValueError, match="id_stride must be >= the schedule's G_max"):
        ExpandPruneSampler(model, PruneSchedule.naive(6, 3), id_stride=4)


def test_reward_per_compute_is_resumable_and_refuses_another_setup(tmp_path, monkeypatch):
    methods = [Method("naive-2", "2@8", id_stride=4), Method("pro-grpo-random", "4:3=2@8", proxy="random")]
    overrides = [*SMALL, "sampler.noise_steps=[0]", "log.eval_prompts=2", "log.eval_per_prompt=2"]
    path = tmp_path / "reward.json"
    rows = reward.reward_per_compute(None, methods, [0], 1, 1, path, "test", overrides)
    assert {(r["method"], r["seed"]) for r in rows} == {("naive-2", 0), ("pro-grpo-random", 0)}
    assert all(r["iteration"] == 0 for r in rows if r["tflops"] == 0) and len(rows) == 4  # iteration 0 and the end of each
    saved = json.loads(path.read_text())
    assert saved["rows"] == rows and set(saved["flops_per_iteration"]) == {"naive-2", "pro-grpo-random"}
    trained = []
    monkeypatch.setattr(reward, "train_curve", lambda base, method, seed, *args, **kwargs: trained.append((method.name, seed)) or
                        [{"iteration": 0, "train_wall_s": 0.0, "eval_reward": 0.5}])
    again = reward.reward_per_compute(None, methods, [0, 1], 1, 1, path, "test", overrides)
    assert trained == [("naive-2", 1), ("pro-grpo-random", 1)] and len(again) == 6  # seed 0 skipped
    trained.clear()
    reward.reward_per_compute(None, methods, [0, 1, 2], 1, 1, path, "test", overrides, only={"pro-grpo-random"})
    assert trained == [("pro-grpo-random", 2)]  # naive-2 seed 2 is left to another process
    with pytest.raises(ValueError, match="holds results of another setup"):
        reward.reward_per_compute(None, methods, [0], 2, 1, path, "test", overrides)


def test_results_written_before_a_config_key_existed_take_rows_at_its_default():
    current = {"config": None, "overrides": [], "resolved": load_config(None, []).to_dict(), "budget_iterations": 4}
    stored = json.loads(json.dumps(current))
    del stored["resolved"]["sampler"]["history_dtype"], stored["resolved"]["train"]["recompute_old_logprobs"]
    assert results.same_setup(stored, current)
    changed = json.loads(json.dumps(current))
    changed["resolved"]["sampler"]["history_dtype"] = "bf16"  # a new key away from its default
    assert not results.same_setup(stored, changed)
    changed = json.loads(json.dumps(current))
    changed["resolved"]["train"]["lr"] *= 2  # a key the file knew
    assert not results.same_setup(stored, changed)
    assert not results.same_setup(current, {**current, "budget_iterations": 5})
    assert not results.same_setup(current, stored)  # a key the run no longer has


def test_evaluation_iterations_are_evenly_spaced_and_end_at_the_last():
    assert reward.evaluation_iterations(10, 4) == [2, 5, 8, 10]
    assert reward.evaluation_iterations(3, 5) == [1, 2, 3]


def test_clustering_summary_counts_small_advantages_and_pairs_seeds():
    rows = [{"method": "naive-16", "seed": s, "iterations": 4, "eval_before": 0.5, "eval_after": 0.55,
             "abs_adv_start": [0.1, 0.2, 1.0, 2.0], "abs_adv_end": [0.1, 0.2, 0.3, 2.0]} for s in (0, 1)]
    rows += [{"method": "static-ovf", "seed": s, "iterations": 4, "eval_before": 0.5, "eval_after": 0.6 + 0.1 * s,
              "abs_adv_start": [1.0, 1.0], "abs_adv_end": [1.0, 0.4]} for s in (0, 1)]
    summary = {r["method"]: r for r in clustering.summarize(rows, "naive-16", draws=200)}
    assert summary["naive-16"]["abs_adv_below_half_start"] == 0.5 and summary["naive-16"]["abs_adv_below_half_end"] == 0.75
    static = summary["static-ovf"]
    assert static["after_minus_naive"] == pytest.approx(0.1)
    assert static["per_seed_after_minus_naive"] == [pytest.approx(0.05), pytest.approx(0.15)]
    assert static["after_minus_naive_ci_low"] >= 0.05 - 1e-9 and static["abs_adv_below_half_end"] == 0.5
    naive, static_method = clustering.clustering_methods("16:3=8,5=4@8")
    assert (naive.name, static_method.name, static_method.static_ovf) == ("naive-16", "static-ovf", True)


def test_results_files_table_and_plots(tmp_path):
    rows = [{"method": m, "schedule": "4@8", "trajectory_steps": 32, "network_evaluations": 64, "tflops_total": 1.5,
             **{f"measured_s_{p}": 0.5 for p in throughput.PHASES}, "measured_s_total": 2.0, "measured_s_total_min": 1.9,
             "measured_s_total_max": 2.1, "time_vs_first_naive": 1.0, "predicted_s_total": 2.2, "measured_over_predicted": 2.0 / 2.2}
            for m in ("a", "b")]
    path = results.write_results(tmp_path, "throughput_test", rows, "progrpo-fast bench throughput")
    payload = json.loads(path.read_text())
    assert payload["rows"] == rows and payload["command"].startswith("progrpo-fast bench") and "torch" in payload["machine"]
    assert (tmp_path / "throughput_test.csv").read_text().splitlines()[0].startswith("method,schedule")
    table = results.markdown_table(rows, throughput.COLUMNS)
    assert table.count("\n") == 3 and "| a | 4@8 | 32 |" in table
    assert throughput.plot_throughput(rows, tmp_path / "t.png").stat().st_size > 0
    records = curve_rows("a", [[0.1, 0.2, 0.3]]) + curve_rows("b", [[0.1, 0.3, 0.2], [0.2, 0.2, 0.2]])
    assert reward.plot(records, ["a", "b"], tmp_path / "r.png").stat().st_size > 0
    cluster_rows = [{"method": m, "seed": 0, "eval_before": 0.5, "eval_after": 0.6, "abs_adv_start": [0.1, 1.0], "abs_adv_end": [0.2, 0.9]}
                    for m in ("naive-16", "static-ovf")]
    assert clustering.plot(cluster_rows, "naive-16", tmp_path / "c.png").stat().st_size > 0


def test_cli_bench_help_lists_every_benchmark_of_the_table(capsys):
    from progrpo_fast.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in BENCHMARKS) and {"throughput", "reward", "selection", "snr", "clustering"} <= set(BENCHMARKS)


def test_every_benchmark_module_has_the_registry_interface():
    import importlib

    for module_name in BENCHMARKS.values():
        module = importlib.import_module(module_name)
        assert isinstance(module.DESCRIPTION, str) and callable(module.add_arguments) and callable(module.run)


def test_bench_rejects_unknown_benchmark():
    with pytest.raises(SystemExit):
        bench_main(["speed"])


def test_cli_bench_reports_a_bad_option_value_as_an_error(capsys, tmp_path):
    from progrpo_fast.cli import main

    assert main(["bench", "clustering", "--iterations", "2", "--window", "3", "--out", str(tmp_path)]) == 2
    assert "--window must be in [1, --iterations=2]" in capsys.readouterr().err


def test_bench_hides_third_party_warnings_raised_on_import_unless_verbose():
    import subprocess
    import sys

    code = "from progrpo_fast.bench import main; main(['-h'])"
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert quiet.returncode == 0 and "throughput" in quiet.stdout
    assert "[transformers]" not in quiet.stderr and "requires torchvision" not in quiet.stderr, quiet.stderr


def test_seeds_option_takes_a_count_or_a_range_and_rejects_others(capsys):
    assert results.seed_range("3") == [0, 1, 2] and results.seed_range("4-7") == [4, 5, 6, 7]
    for bad in ("0", "7-4", "-2", "two"):
        with pytest.raises(SystemExit):
            bench_main(["reward", "--seeds", bad])
        assert "--seeds: expected N (seeds 0..N-1, N >= 1) or A-B" in capsys.readouterr().err


def test_select_methods_keeps_the_named_order_and_rejects_unknown_names():
    methods = paired_methods("16:3=8,5=4@8")
    assert select_methods(methods, None) == methods
    assert [m.name for m in select_methods(methods, "naive-16, pro-grpo-reward")] == ["naive-16", "pro-grpo-reward"]
    with pytest.raises(ValueError, match=r"--methods must name one or more of naive-16, naive-4, static-ovf"):
        select_methods(methods, "naive-16,grpo")


def test_default_run_benchmark_writes_per_seed_curves_with_standard_errors(tmp_path, capsys):
    overrides = ["train.iterations=2", "sampler.prompts_per_iteration=1", "train.minibatch_rows=4", "log.eval_prompts=2",
                 "log.eval_per_prompt=2", "log.eval_every=1", "prompts.pool=4"]
    argv = ["default", "--seeds", "1", "--out", str(tmp_path), "--runs", str(tmp_path / "runs"), "--tag", "t"]
    assert bench_main([*argv, *(a for o in overrides for a in ("--set", o))]) == 0
    payload = json.loads((tmp_path / "default_run_t.json").read_text())
    (row,) = payload["rows"]
    assert {"seed", "pool_before", "pool_after", "heldout_before", "heldout_after", "heldout_change_se"} <= set(row) and row["seed"] == 0
    assert row["heldout_change"] == pytest.approx(row["heldout_after"] - row["heldout_before"]) and row["heldout_change_se"] >= 0
    assert [p["iteration"] for p in row["curve"]] == [0, 1, 2]  # before, every log.eval_every, after
    assert all(p["heldout_se"] >= 0 and p["pool_se"] >= 0 for p in row["curve"])
    assert row["heldout_after"] == row["curve"][-1]["heldout"] and row["heldout_best"] == max(p["heldout"] for p in row["curve"])
    assert payload["summary"]["heldout_gain"] == pytest.approx(row["heldout_change"]) and payload["summary"]["iterations"] == [0, 1, 2]
    assert (tmp_path / "default_run_t.png").stat().st_size > 0 and "heldout: gain" in capsys.readouterr().out
    with pytest.raises(ValueError, match="needs prompts.pool > 0"):
        bench_main(["default", "--out", str(tmp_path), "--set", "prompts.pool=0"])


def test_default_run_summary_says_whether_the_mean_curve_rises_and_holds():
    from progrpo_fast.bench.default_run import across_seeds

    def rows(curves):
        return [{"seed": seed, "curve": [{"iteration": 10 * i, "pool": r, "heldout": r} for i, r in enumerate(c)]}
                for seed, c in enumerate(curves)]

    rising = across_seeds(rows([[0.40, 0.45, 0.50], [0.41, 0.47, 0.52], [0.39, 0.44, 0.49]]))
    assert rising["heldout_rises"] and rising["heldout_holds"] and rising["heldout_best_iteration"] == 20
    assert rising["heldout_gain"] == pytest.approx(0.31 / 3) and rising["heldout_decay"] == 0.0
    decaying = across_seeds(rows([[0.40, 0.50, 0.46], [0.41, 0.52, 0.47], [0.39, 0.49, 0.45]]))
    assert decaying["heldout_rises"] and not decaying["heldout_holds"] and decaying["heldout_best_iteration"] == 10
    assert decaying["heldout_decay"] == pytest.approx(-0.0433, abs=1e-4)
    flat = across_seeds(rows([[0.40, 0.40, 0.41], [0.42, 0.44, 0.40], [0.39, 0.38, 0.40]]))
    assert not flat["heldout_rises"]
    with pytest.raises(ValueError, match="evaluation iterations differ"):
        across_seeds(rows([[0.4, 0.5], [0.4, 0.5, 0.6]]))


def test_results_added_by_two_processes_under_the_lock_are_all_kept(tmp_path):
    import multiprocessing

    path = tmp_path / "r.json"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_add_rows, args=(path, name)) for name in ("a", "b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    rows = json.loads(path.read_text())["rows"]
    assert sorted((r["method"], r["seed"]) for r in rows) == [(m, s) for m in ("a", "b") for s in range(20)]


def _add_rows(path, name):
    for seed in range(20):
        results.add_to_results(path, {"setup": 1}, {"rows": []}, "test",
                               lambda payload, seed=seed: payload["rows"].append({"method": name, "seed": seed}))


def test_foreign_sampler_bench_writes_its_table(tmp_path):
    """bench foreign on tiny settings: StepPruner in the Flow-GRPO-shaped loop, timed against the unpruned loop."""
    assert bench_main(["foreign", "--out", str(tmp_path), "--tag", "t", "--schedule", "4:2=2@4", "--prompts", "1", "--rounds", "1"]) == 0
    row = json.loads((tmp_path / "foreign_sampler_t.json").read_text())["rows"][0]
    assert row["schedule"] == "4:2=2@4" and row["trajectory_steps_pruned"] == 4 + 4 + 2 + 2
    assert 0 < row["pruner_calls_s"] < row["pruned_s"] and 0 < row["pruner_share"] < 1
    assert row["naive_gmax_s"] > 0 and "pruner share" in (tmp_path / "foreign_sampler_t.md").read_text()
