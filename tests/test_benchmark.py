"""Benchmarks against naive GRPO: the cost model's counts (by hand), its FLOP units, one measured
iteration per kind of method on the built-in model, selection quality against the oracle, results files."""
import json

import pytest
import torch

from progrpo_fast import benchmark as bench
from progrpo_fast.benchmark import Method, UnitCosts, iteration_counts, predict
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
    flops2, seconds2 = bench.measure_units(trainer, rows=2, repeats=1)
    flops4, _ = bench.measure_units(trainer, rows=4, repeats=1)
    assert flops2.net == pytest.approx(flops4.net, rel=0.02) and flops2.train == pytest.approx(flops4.train, rel=0.02)
    assert flops2.net > 0 and min(seconds2.net, seconds2.score, seconds2.train) > 0
    # one forward plus a backward: with frozen LoRA bases the backward computes input gradients
    # (about one forward, less the layers nothing upstream needs) but no base-weight gradients
    assert 1.5 * flops2.net < flops2.train < 3.1 * flops2.net
    with_kl, _ = bench.measure_units(tiny_trainer(tmp_path, "train.beta_kl=0.1"), rows=2, repeats=1)
    assert with_kl.train == pytest.approx(flops2.train + flops2.net, rel=0.02)  # plus the reference forward


@pytest.mark.parametrize("method", [Method("naive", "4@8"), Method("static", "4:3=2,5=1@8", static_ovf=True),
                                    Method("pro-reward", "4:3=2,5=1@8", proxy="reward")])
def test_measured_iteration_on_the_built_in_model(method):
    row = bench.measure_throughput(None, method, iterations=1, overrides=SMALL)
    counts = iteration_counts(method, 1, row["trained_row_steps"] // row["trained_rows"])
    assert row["trajectory_steps"] == counts.trajectory_steps
    assert row["measured_s_total"] == pytest.approx(sum(row[f"measured_s_{p}"] for p in bench.PHASES))
    assert all(row[f"measured_s_{p}"] >= 0 for p in bench.PHASES) and row["predicted_s_total"] > 0
    assert (row["measured_s_proxy"] > 0) == method.name.startswith("pro")  # only pruning rollouts consult a proxy
    assert (row["tflops_proxy"] > 0) == (method.proxy == "reward" and not method.static_ovf)
    assert row["peak_memory_mib"] > 0


def test_selection_quality_is_bounded_by_the_oracle():
    methods = [Method("pro-grpo-latent", "6:3=3,5=2@8"), Method("pro-grpo-random", "6:3=3,5=2@8", proxy="random")]
    rows = bench.selection_quality(None, methods, batches=2, prompts_per_batch=3, overrides=SMALL)
    assert {(r["method"], r["checkpoint_step"]) for r in rows} == {(m.name, t) for m in methods for t in (3, 5)}
    for r in rows:
        assert r["groups"] == 6
        assert r["std_kept"] <= r["std_oracle"] + 1e-6 and r["std_random"] <= r["std_oracle"] + 1e-6
        assert r["kept_over_oracle"] <= 1 + 1e-6


@pytest.mark.parametrize("snr", [0.0, 0.05, 1.0])
def test_signal_to_noise_estimate_recovers_a_known_ratio(snr):
    """Draws g = mu + noise with |mu|^2 = snr * tr(Cov) in 256 dimensions."""
    gen = torch.Generator().manual_seed(0)
    n, dim = 4000, 256
    mu = torch.zeros(dim)
    mu[0] = (snr * dim) ** 0.5  # tr(Cov) = dim for unit-variance noise
    draws = mu + torch.randn(n, dim, generator=gen)
    estimate = bench.signal_to_noise(draws.sum(0), float(draws.pow(2).sum()), n)
    assert estimate == pytest.approx(snr, abs=0.01 + 0.05 * snr)
    with pytest.raises(ValueError, match="n >= 2"):
        bench.signal_to_noise(draws[0], 1.0, 1)


def test_gradient_snr_per_trained_step_leaves_the_weights_alone(tmp_path):
    trainer = tiny_trainer(tmp_path, "train.beta_kl=0", "sampler.noise_steps=null")
    before = [p.detach().clone() for p in trainer.parameters]
    rows = bench.gradient_snr(trainer, batches=3)
    assert [r["step"] for r in rows] == [0, 1, 2, "all"]  # T = 4 steps: steps 0..2 are trainable
    window = bench.gradient_snr(tiny_trainer(tmp_path, "train.beta_kl=0", "sampler.noise_steps=[1]"), batches=2)
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
    config = load_config("sd35m_pickscore", ["model.kind=sd35m_random", "reward.weights={jpeg_compressibility: 1.0}", "prompts.source=shapes"])
    assert config.model.path is None and config.model.resolution == 512
    with pytest.raises(ValueError, match="takes no model.path"):
        load_config(None, ["model.kind=sd35m_random", f"model.path={tmp_path}"])


def test_build_model_wraps_the_sd35m_sized_pipeline(monkeypatch):
    """The config -> model path of model.kind=sd35m_random, with the tiny pipeline standing in for
    the 2.2e9-parameter one (which this CPU test cannot afford to run)."""
    from progrpo_fast.models import tiny
    from progrpo_fast.train.run import build_model

    monkeypatch.setattr(tiny, "sd35_medium_sized_pipeline", lambda device: tiny_sd3_pipeline())
    config = load_config(None, ["model.kind=sd35m_random", "model.resolution=16", "model.dtype=bf16", "model.max_sequence_length=4"])
    model = build_model(config.model, device="cpu")
    assert isinstance(model, SD3Denoiser) and model.dtype == torch.bfloat16 and model.latent_shape() == (4, 8, 8)


def test_compute_to_reach_interpolates_the_seed_mean_curve():
    records = [{"method": "m", "seed": s, "iteration": i, "tflops": 2.0 * i, "eval_reward": r}
               for s, rewards in enumerate([[0.0, 0.4, 0.8], [0.0, 0.2, 0.6]]) for i, r in enumerate(rewards)]
    assert bench.seed_mean_curve(records, "m") == [(0.0, 0.0), (2.0, pytest.approx(0.3)), (4.0, pytest.approx(0.7))]
    assert bench.compute_to_reach(records, "m", 0.5) == pytest.approx(3.0)
    assert bench.compute_to_reach(records, "m", 0.9) is None


def test_results_files_table_and_plots(tmp_path):
    rows = [{"method": m, "schedule": "4@8", "trajectory_steps": 32, "network_evaluations": 64, "tflops_total": 1.5,
             **{f"measured_s_{p}": 0.5 for p in bench.PHASES}, "measured_s_total": 2.0, "time_vs_first_naive": 1.0,
             "predicted_s_total": 2.2, "measured_over_predicted": 2.0 / 2.2, "peak_memory_mib": 100.0} for m in ("a", "b")]
    path = bench.write_results(tmp_path, "throughput_test", rows, "progrpo-fast bench throughput")
    payload = json.loads(path.read_text())
    assert payload["rows"] == rows and payload["command"].startswith("progrpo-fast bench") and "torch" in payload["machine"]
    assert (tmp_path / "throughput_test.csv").read_text().splitlines()[0].startswith("method,schedule")
    table = bench.markdown_table(rows, bench.THROUGHPUT_COLUMNS)
    assert table.count("\n") == 3 and "| a | 4@8 | 32 |" in table
    assert bench.plot_throughput(rows, tmp_path / "t.png").stat().st_size > 0
    records = [{"method": m, "seed": 0, "iteration": i, "tflops": float(i), "train_wall_s": float(i), "eval_reward": 0.1 * i}
               for m in ("a", "b") for i in range(3)]
    assert bench.plot_reward_per_compute(records, tmp_path / "r.png").stat().st_size > 0


def test_cli_bench_help_lists_the_benchmarks(capsys):
    from progrpo_fast.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "throughput" in out and "selection" in out and "snr" in out


def test_bench_rejects_unknown_benchmark():
    with pytest.raises(SystemExit):
        bench.main(["speed"])


def test_select_methods_keeps_the_named_order_and_rejects_unknown_names():
    methods = bench.SHAPES_METHODS
    assert bench.select_methods(methods, None) == methods
    assert [m.name for m in bench.select_methods(methods, "naive-8, pro-grpo-reward")] == ["naive-8", "pro-grpo-reward"]
    with pytest.raises(ValueError, match=r"--methods must name one or more of naive-8, static-ovf"):
        bench.select_methods(methods, "naive-8,grpo")
