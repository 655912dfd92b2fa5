"""The GRPO trainer on a tiny random-weight SD3 pipeline: objective pieces, first-step ratio,
resume equals an uninterrupted run, baselines, multi-process training on gloo."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from progrpo_fast.models.sd3 import SD3Denoiser
from progrpo_fast.models.tiny import tiny_sd3_pipeline
from progrpo_fast.train.config import load_config
from progrpo_fast.train.grpo import group_advantages, kl_to_reference, policy_loss, weighted_group_advantages
from progrpo_fast.train.run import train
from progrpo_fast.train.trainer import Trainer

BASE = ["sampler.schedule=6:2=3@4", "sampler.prompts_per_iteration=2", "sampler.proxy=latent", "train.lora_rank=4", "train.lora_alpha=8",
        "train.minibatch_rows=3", "train.lr=1e-2", "train.clip_range=0.2", "log.progress=false", "log.checkpoint_every=1",
        "log.eval_prompts=2", "log.eval_per_prompt=2"]


class Brightness:
    """Mean pixel value, and its negative as a second component (for per-reward aggregation)."""

    weights = {"bright": 1.0, "dark": 0.5}

    def components(self, images, prompts):
        bright = images.mean((1, 2, 3))
        return {"bright": bright, "dark": -bright}


def model():
    return SD3Denoiser(tiny_sd3_pipeline(), max_sequence_length=4, resolution=16)


def config(tmp_path, *extra):
    return load_config(None, [*BASE, f"log.out_dir={tmp_path}", *extra])


def trainable(summary_dir):
    """(step, trainable weights by name) of the run's newest checkpoint, one file or sharded."""
    from progrpo_fast.train.export import read_weights
    from progrpo_fast.train.sharded_checkpoint import newest_checkpoint

    weights, _, iteration = read_weights(newest_checkpoint(summary_dir / "checkpoints"))
    return iteration, weights


# ------------------------------------------------------------------ objective
def test_group_advantages_normalise_each_group_and_clip():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    adv = group_advantages(rewards, 3)
    torch.testing.assert_close(adv[:3], torch.tensor([-1.0, 0.0, 1.0]) / (torch.tensor(2 / 3).sqrt() + 1e-4))
    assert torch.equal(adv[3:], torch.zeros(3))
    assert group_advantages(torch.tensor([0.0, 1e6]), 2, clip=5.0).abs().max() <= 5.0
    with pytest.raises(ValueError, match="divisible by group_size"):
        group_advantages(torch.ones(5), 2)


def test_per_reward_aggregation_weights_normalised_advantages():
    rewards = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.0, 100.0])}
    adv = weighted_group_advantages(rewards, {"a": 1.0, "b": 2.0}, 2)
    torch.testing.assert_close(adv, 3 * group_advantages(rewards["a"], 2), rtol=1e-3, atol=1e-3)


def test_policy_loss_clips_the_ratio():
    adv = torch.tensor([1.0, -1.0])
    loss, ratio, clipped = policy_loss(torch.tensor([0.5, 0.5]), torch.zeros(2), adv, clip_range=0.1)
    r = torch.exp(torch.tensor(0.5))
    torch.testing.assert_close(loss, (-1.1 + r) / 2)  # positive A: clipped to 1.1; negative A: max takes -A r
    assert float(clipped) == 1.0 and torch.allclose(ratio, r.expand(2))


def test_kl_is_the_gaussian_kl_of_equal_stds():
    mean, ref, std = torch.ones(2, 4), torch.zeros(2, 4), torch.full((2, 1), 0.5)
    torch.testing.assert_close(kl_to_reference(mean, ref, std), torch.full((2,), 1 / (2 * 0.25)))
    assert kl_to_reference(mean, ref, torch.zeros(2, 1)).eq(0).all()


# ------------------------------------------------------------------ trainer
def test_first_inner_step_ratio_is_one_and_training_changes_the_adapter(tmp_path):
    cfg = config(tmp_path, "train.iterations=2", "train.beta_kl=0.1", "train.ema_decay=0.9")
    trainer = Trainer(cfg, model(), Brightness(), lambda it, rank, n: ["a red circle", "two blue squares"][:n])
    before = [p.detach().clone() for p in trainer.parameters]
    metrics = trainer.train_iteration()
    assert metrics["first_ratio_abs_error"] < 1e-3
    assert metrics["trained_steps"] == 2 and metrics["trajectory_steps"] == 2 * (6 * 2 + 3 * 2)
    assert metrics["kl"] >= 0 and 0 <= metrics["clip_fraction"] <= 1
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.parameters))
    assert trainer.ema is not None and not torch.equal(trainer.ema[0], trainer.parameters[0].float())


def shifted_sampler(trainer, shift):
    """The trainer's sampler with every recorded log-prob shifted by ``shift`` (a sampler whose
    numerics differ from the trainer's, as bf16 batches of other shapes do)."""
    sample = trainer.sampler.sample

    def sample_shifted(*args, **kwargs):
        rollout = sample(*args, **kwargs)
        rollout.log_probs = rollout.log_probs + shift
        return rollout

    trainer.sampler.sample = sample_shifted


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_logprob_drift_is_logged_and_recomputing_the_old_logprobs_removes_it(tmp_path, precision):
    prompts = lambda it, rank, n: ["a red circle", "two blue squares"][:n]  # noqa: E731
    plain = Trainer(config(tmp_path, f"train.mixed_precision={precision}"), model(), Brightness(), prompts)
    shifted_sampler(plain, 1e-3)
    metrics = plain.train_iteration()
    assert 1e-3 - 1e-4 < metrics["logprob_drift_mean"] <= metrics["logprob_drift_max"] < 1e-3 + (1e-4 if precision == "no" else 1e-2)
    assert metrics["first_ratio_abs_error"] == pytest.approx(abs(torch.expm1(torch.tensor(-metrics["logprob_drift_max"])).item()), rel=0.05)
    fixed = Trainer(config(tmp_path, f"train.mixed_precision={precision}", "train.recompute_old_logprobs=true"), model(), Brightness(),
                    prompts)
    shifted_sampler(fixed, 1e-3)
    metrics = fixed.train_iteration()
    assert metrics["logprob_drift_max"] == 0.0 and metrics["first_ratio_abs_error"] == 0.0
    assert metrics["sampler_logprob_drift_mean"] == pytest.approx(1e-3, abs=1e-4 if precision == "no" else 1e-2)


def test_a_noise_window_trains_only_its_steps_and_a_noiseless_sampler_is_refused(tmp_path):
    cfg = config(tmp_path, "sampler.schedule=6:2=3@5", "sampler.noise_steps=[0,2]", "train.timestep_fraction=1.0")
    trainer = Trainer(cfg, model(), Brightness(), lambda it, rank, n: ["a red circle"] * n)
    assert trainer.trainable_steps == [0, 2] and trainer.trained_steps(0) == [0, 2]
    metrics = trainer.train_iteration()
    assert metrics["trained_steps"] == 2 and metrics["first_ratio_abs_error"] < 1e-3
    half = Trainer(config(tmp_path, "sampler.schedule=6:2=3@5", "sampler.noise_steps=null", "train.timestep_fraction=0.5"),
                   model(), Brightness(), lambda *a: [])
    assert len(half.trained_steps(0)) == 2 and set(half.trained_steps(0)) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match=r"sampler\.method='ode' with eta=0\.7 adds no noise before the last step: nothing to train"):
        Trainer(config(tmp_path, "sampler.method=ode"), model(), Brightness(), lambda *a: [])


def test_run_evaluates_before_and_after_and_writes_its_outputs(tmp_path):
    import json

    from PIL import Image

    summary = train(config(tmp_path, "train.iterations=2", "train.lr=5e-2", "log.eval_every=1"), model=model(), reward=Brightness())
    record = json.loads((tmp_path / "summary.json").read_text())
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # evaluated every iteration but the last, whose numbers are eval_after's (no doubled evaluation)
    assert ["eval_reward" in r and "eval_reward_held_out" in r for r in logged] == [True, False]
    assert record["eval_before"]["iteration"] == 0 and record["eval_after"]["iteration"] == 2
    assert record["eval_before"]["reward_mean"] != record["eval_after"]["reward_mean"]  # the policy changed
    assert len(record["eval_before"]["prompt_means"]) == 2 and len(record["eval_after_held_out"]["prompt_means"]) == 2
    # schedule 6:2=3@4: 6 rows for steps 0-1, 3 for steps 2-3 = 18 per prompt; naive keeps 6 for 4 steps = 24
    assert (record["trajectory_steps_per_prompt"], record["naive_trajectory_steps_per_prompt"]) == (18, 24)
    assert (record["trained_rows_per_prompt"], record["naive_trained_rows_per_prompt"]) == (3, 6)
    grid = Image.open(summary["before_after_grid"])
    tile = 16 * (128 // 16)  # 16 px images enlarged to 128
    assert grid.size == (2 * 2 * tile + tile // 4, 22 + 2 * (18 + tile))  # header; 2 prompts: caption band, 2 before | gap | 2 after
    assert summary["reward_curve"].is_file()


def test_before_after_grid_is_labelled_and_shows_at_most_max_samples_per_prompt(tmp_path):
    from PIL import Image

    from progrpo_fast.train.report import save_before_after

    def evaluation(value):  # 3 prompts x 5 samples of 32 px
        return {"rewards": torch.full((3, 5), value), "images": torch.full((15, 3, 32, 32), value), "prompts": ["a red circle", "b", "c"]}

    path = save_before_after(evaluation(0.0), evaluation(1.0), tmp_path / "grid.png", (0, 7), max_prompts=2, max_samples=4)
    grid = Image.open(path).convert("RGB")
    assert grid.size == (2 * 4 * 128 + 32, 22 + 2 * (18 + 128))  # 4 before | gap | 4 after, enlarged 4x, under a header and captions
    before_tile, after_tile = (grid.crop((40, 22 + 18 + 40, 100, 22 + 18 + 100)),
                               grid.crop((4 * 128 + 72, 22 + 18 + 40, 4 * 128 + 132, 22 + 18 + 100)))
    assert before_tile.getextrema() == ((0, 0),) * 3 and after_tile.getextrema() == ((255, 255),) * 3  # images away from the labels
    caption_band, header = grid.crop((0, 22, 200, 22 + 18)), grid.crop((0, 0, 300, 22))
    assert caption_band.getextrema()[0][0] < 128 and header.getextrema()[0][0] < 128  # dark text on white
    reward_label = grid.crop((4 * 128 + 32, 22 + 18, 4 * 128 + 32 + 30, 22 + 18 + 14))  # the after tile's corner: white on black
    assert reward_label.getextrema()[0] == (0, 255)


def test_paired_change_takes_the_prompt_as_the_unit():
    from progrpo_fast.train.evaluate import paired_change

    change, se = paired_change({"reward_mean": 0.5, "prompt_means": [0.4, 0.6]}, {"reward_mean": 0.6, "prompt_means": [0.45, 0.75]})
    assert change == pytest.approx(0.1) and se == pytest.approx(0.05)  # changes 0.05, 0.15: std 0.0707 / sqrt(2)


def test_reward_curve_plots_rollouts_their_moving_average_and_evaluations(tmp_path):
    import json

    from progrpo_fast.train.report import plot_reward_curve, smoothed

    assert smoothed([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"iteration": i, "reward_mean": 0.1 * i}) + "\n" for i in range(12)))
    path = plot_reward_curve(log, tmp_path / "curve.png", {"pool": [(0, 0.2), (6, 0.4), (12, 0.5)], "held-out": [(0, 0.1), (12, 0.3)]})
    assert path.stat().st_size > 0


def test_caption_pool_feeds_training_and_the_evaluation_keeps_held_out_prompts_apart():
    from progrpo_fast.train.build import build_prompts, caption_pool
    from progrpo_fast.train.evaluate import evaluation_prompts

    cfg = load_config(None, ["prompts.pool=5", "log.eval_prompts=3"])
    pool = caption_pool(cfg)
    assert len(pool) == 5 and pool == caption_pool(cfg)
    draws = build_prompts(cfg)(7, 0, 40)
    assert set(draws) <= set(pool) and len(set(draws)) > 1
    assert evaluation_prompts(cfg, held_out=False) == pool[:3]
    held_out = evaluation_prompts(cfg, held_out=True)
    assert len(held_out) == 3 and not set(held_out) <= set(pool)
    fresh = load_config(None, ["prompts.pool=0"])
    assert build_prompts(fresh)(0, 0, 4) != build_prompts(fresh)(1, 0, 4)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_grpo_moves_a_simple_reward_in_the_rewarded_direction(tmp_path, sign):
    """Rewarding brightness makes samples brighter; rewarding darkness makes them darker."""

    class Signed:
        weights = {"r": 1.0}

        def components(self, images, prompts):
            return {"r": sign * images.mean((1, 2, 3))}

    cfg = config(tmp_path, "sampler.schedule=8@4", "sampler.prompts_per_iteration=4", "train.minibatch_rows=32", "train.lr=3e-3",
                 "train.lora_alpha=64", "train.beta_kl=0", "train.timestep_fraction=1.0", "log.eval_prompts=0")
    trainer = Trainer(cfg, model(), Signed(), lambda it, rank, n: ["a red circle"] * n)
    brightness = [sign * trainer.train_iteration()["reward_mean"] for _ in range(30)]
    change = sum(brightness[-5:]) / 5 - sum(brightness[:5]) / 5
    assert sign * change > 0.003, brightness


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    train(config(tmp_path / "full", "train.iterations=3"), model=model(), reward=Brightness())
    train(config(tmp_path / "split", "train.iterations=1"), model=model(), reward=Brightness())
    resumed = train(config(tmp_path / "split", "train.iterations=3"), resume=True, model=model(), reward=Brightness())
    assert [h["iteration"] for h in resumed["history"]] == [1, 2]
    (step_a, full), (step_b, split) = trainable(tmp_path / "full"), trainable(tmp_path / "split")
    assert step_a == step_b == 3
    for name in full:
        assert torch.equal(full[name], split[name]), name
    logs = [(tmp_path / d / "log.jsonl").read_text().splitlines() for d in ("full", "split")]
    assert len(logs[1]) == 3
    assert all('"logprob_drift_mean"' in line and '"logprob_drift_max"' in line for line in logs[0] + logs[1])
    assert [line.split('"sample_s"')[0] for line in logs[0]] == [line.split('"sample_s"')[0] for line in logs[1]]


def test_cosine_lr_follows_its_formula_per_iteration_and_a_resumed_run_continues_it(tmp_path):
    import math

    cosine = ["train.lr_schedule=cosine", "log.eval_prompts=0"]
    train(config(tmp_path / "full", "train.iterations=3", *cosine), model=model(), reward=Brightness())
    train(config(tmp_path / "split", "train.iterations=1", *cosine), model=model(), reward=Brightness())
    train(config(tmp_path / "split", "train.iterations=3", *cosine), resume=True, model=model(), reward=Brightness())
    expected = [1e-2 * (1 + math.cos(math.pi * i / 3)) / 2 for i in range(3)]
    for run in ("full", "split"):
        logged = [json.loads(line)["lr"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        assert logged == pytest.approx(expected, rel=1e-12), run
    (_, full), (_, split) = trainable(tmp_path / "full"), trainable(tmp_path / "split")
    assert all(torch.equal(full[name], split[name]) for name in full)
    constant = train(config(tmp_path / "constant", "train.iterations=2", "train.lr_schedule=constant", "log.eval_prompts=0"),
                     model=model(), reward=Brightness())
    assert [h["lr"] for h in constant["history"]] == [1e-2, 1e-2]


def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    train(config(tmp_path, "train.iterations=2"), model=model(), reward=Brightness())
    newest = tmp_path / "checkpoints" / "step-00000002.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    resumed = train(config(tmp_path, "train.iterations=2"), resume=True, model=model(), reward=Brightness())
    assert [h["iteration"] for h in resumed["history"]] == [1]
    # the log keeps iteration 0 (before the checkpoint it resumed from) and the rerun iteration 1 once
    logged = [json.loads(line)["iteration"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == [0, 1]


def test_resume_drops_a_torn_log_line(tmp_path):
    train(config(tmp_path, "train.iterations=1", "log.eval_prompts=0"), model=model(), reward=Brightness())
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"iteration": 1, "rew')  # a crash mid-write
    train(config(tmp_path, "train.iterations=2", "log.eval_prompts=0"), resume=True, model=model(), reward=Brightness())
    assert [json.loads(line)["iteration"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [0, 1]


def test_adapter_steps_noisy_samples_the_base_model_at_deterministic_steps(tmp_path):
    cfg = config(tmp_path, "sampler.noise_steps=[0]", "train.adapter_steps=noisy", "train.lr=5e-2")
    trainer = Trainer(cfg, model(), Brightness(), lambda it, rank, n: ["a red circle"] * n)
    for _ in range(2):
        trainer.train_iteration()
    x = torch.randn(2, *trainer.model.latent_shape(), generator=torch.Generator().manual_seed(0))
    cond = {k: v.repeat(2, *[1] * (v.dim() - 1)) for k, v in trainer.model.encode(["a red circle"]).items()}

    def velocity(step):
        with torch.no_grad(), trainer.step_context(step):
            return trainer.model.predict(x, trainer.sampler.stepper.timesteps[step], cond)

    with torch.no_grad(), trainer.reference_model():
        base = [trainer.model.predict(x, trainer.sampler.stepper.timesteps[t], cond) for t in (0, 1)]
    assert not torch.allclose(velocity(0), base[0])  # the trained, noisy step: the adapter acts
    assert torch.equal(velocity(1), base[1])  # a deterministic step: the base model
    assert trainer.sampler.step_context == trainer.step_context
    with pytest.raises(ValueError, match="train.adapter_steps=noisy .* needs train.lora=true"):
        config(tmp_path, "train.adapter_steps=noisy", "train.lora=false")


def test_static_ovf_trains_on_the_max_variance_subset(tmp_path):
    cfg = config(tmp_path, "sampler.static_ovf=true")
    trainer = Trainer(cfg, model(), Brightness(), lambda it, rank, n: ["a red circle"] * n)
    metrics = trainer.train_iteration()
    assert metrics["trajectory_steps"] == 2 * 6 * 4  # sampled unpruned
    assert metrics["first_ratio_abs_error"] < 1e-3


def test_full_finetuning_with_kl_and_per_reward_advantages(tmp_path):
    cfg = config(tmp_path, "train.lora=false", "train.beta_kl=0.05", "train.lr=1e-4", "reward.aggregation=per_reward")
    trainer = Trainer(cfg, model(), Brightness(), lambda it, rank, n: ["a red circle"] * n)
    metrics = trainer.train_iteration()
    assert trainer.reference_copy is not None and metrics["first_ratio_abs_error"] < 1e-3


def test_unknown_lora_target_is_a_clear_error(tmp_path):
    cfg = config(tmp_path, "train.lora_targets=[nothing_here]")
    with pytest.raises(ValueError, match="matched no module"):
        Trainer(cfg, model(), Brightness(), lambda it, rank, n: ["a"] * n)


# ------------------------------------------------------------------ two processes on gloo
def _worker(rank, world, port, out_dir, queue, overrides, resume):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    summary = train(config(out_dir, *overrides), resume=resume, model=model(), reward=Brightness())
    queue.put((rank, summary["history"][-1]["reward_mean"], torch.distributed.get_rank()))
    torch.distributed.barrier()  # rank 0 hosts the store: no rank tears down while the other still talks to it
    torch.distributed.destroy_process_group()


def run_two_processes(out_dir, *overrides, resume=False):
    """train() in 2 spawned processes on gloo -> [(rank, last logged reward_mean, process-group rank)]."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(rank, 2, port, out_dir, queue, overrides, resume)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    assert all(p.exitcode == 0 for p in procs)
    return sorted(queue.get(timeout=5) for _ in range(2))


def test_two_processes_on_gloo_ddp_and_fsdp(tmp_path):
    """Rank-local groups on 2 processes: ddp averages the logged metrics and checkpoints; fsdp
    (weights, gradients and AdamW state sharded over the ranks) trains the same weights as ddp, and
    1 iteration + --resume + 1 iteration equals 2 iterations under fsdp."""
    ddp, fsdp, resumed = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "fsdp_resumed"
    results = run_two_processes(ddp, "train.iterations=2")
    assert [r[0] for r in results] == [0, 1] == [r[2] for r in results]
    assert results[0][1] == pytest.approx(results[1][1])  # logged metrics are averaged across ranks
    run_two_processes(fsdp, "train.iterations=2", "train.parallel=fsdp")
    run_two_processes(resumed, "train.iterations=1", "train.parallel=fsdp")
    run_two_processes(resumed, "train.iterations=2", "train.parallel=fsdp", resume=True)
    (step_ddp, weights_ddp), (_, weights_fsdp), (step, weights_resumed) = map(trainable, (ddp, fsdp, resumed))
    assert step_ddp == step == 2 and list(weights_fsdp) == list(weights_ddp)
    assert any(float(w.abs().max()) > 0 for n, w in weights_fsdp.items() if "lora_B" in n)  # trained (lora_B starts at 0)
    for name in weights_ddp:
        torch.testing.assert_close(weights_fsdp[name], weights_ddp[name], rtol=1e-4, atol=2e-5)  # AdamW at lr 1e-2 steps ~1e-2
        torch.testing.assert_close(weights_resumed[name], weights_fsdp[name], rtol=0, atol=1e-7)
