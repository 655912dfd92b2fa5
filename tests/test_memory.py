"""Memory options for the large models: gradient checkpointing gives the same gradients (on every
new adapter, and under FSDP2 on 2 gloo processes), and the rollout history offloaded to the host
or kept in bf16 is the trajectory the trainer replays, and network calls capped at
sampler.forward_rows rows sample the same rollout."""
import pytest
import torch
from test_trainer import run_two_processes, trainable

from progrpo_fast.models.qwen_image import QwenImageDenoiser
from progrpo_fast.models.sd3 import SD3Denoiser
from progrpo_fast.models.tiny import tiny_qwen_image_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline
from progrpo_fast.models.wan import WanDenoiser
from progrpo_fast.sampling import PruneSchedule
from progrpo_fast.sampling.sampler import ExpandPruneSampler
from progrpo_fast.train.config import load_config
from progrpo_fast.train.trainer import Trainer

MODELS = {
    "sd3": lambda: SD3Denoiser(tiny_sd3_pipeline(), max_sequence_length=4, resolution=16),
    "qwen_image": lambda: QwenImageDenoiser(tiny_qwen_image_pipeline(), resolution=16, max_sequence_length=32),
    "wan": lambda: WanDenoiser(tiny_wan_pipeline(), num_frames=5, height=16, width=16, max_sequence_length=8),
}
BASE = ["sampler.schedule=4:2=2@4", "sampler.prompts_per_iteration=2", "sampler.proxy=latent", "sampler.noise_steps=null",
        "train.lora_rank=4", "train.lora_alpha=8", "train.minibatch_rows=4", "train.clip_range=0.2", "log.progress=false"]
PROMPTS = ["a red circle", "two blue squares"]


class MeanPixel:
    weights = {"bright": 1.0}

    def components(self, images, prompts):
        return {"bright": images.flatten(1).mean(1)}

    def __call__(self, images, prompts):  # the reward proxy's call
        return self.components(images, prompts)["bright"]


def trainer(name, *overrides):
    config = load_config(None, [*BASE, *overrides], check_paths=False)
    return Trainer(config, MODELS[name](), MeanPixel(), lambda iteration, rank, count: PROMPTS[:count])


def count_block_forwards(network) -> list:
    """A list that grows by one per run of the network's first block's forward, recomputations
    in backward included (a forward hook does not see those)."""
    calls = []
    block = next(child for child in network.children() if isinstance(child, torch.nn.ModuleList))[0]
    forward = block.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    block.forward = counted
    return calls


@pytest.mark.parametrize("name", MODELS)
def test_gradient_checkpointing_gives_the_same_gradients(name):
    run = trainer(name, "train.gradient_checkpointing=true", "train.beta_kl=0")  # no reference pass: every forward is recomputed
    assert run.network.is_gradient_checkpointing
    rollout, _, _, advantages, _ = run.rollout(0)
    step = run.trained_steps(0)[0]

    calls = count_block_forwards(run.network)

    def gradients():
        run.optimizer.zero_grad(set_to_none=True)
        calls.clear()
        total = run.step_objective(step, rollout.latents[:, step], rollout.latents[:, step + 1], rollout.log_probs[:, step], advantages,
                                   rollout.cond)[0]
        forwards = len(calls)
        total.backward()
        return [p.grad.clone() for p in run.parameters], forwards, len(calls) - forwards

    checkpointed, forwards, recomputed = gradients()
    assert recomputed == forwards > 0, "backward recomputes the checkpointed blocks"
    run.network.disable_gradient_checkpointing()
    plain, _, recomputed_plain = gradients()
    assert recomputed_plain == 0
    assert any(float(g.abs().max()) > 0 for g in plain)
    for a, b in zip(checkpointed, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_gradient_checkpointing_under_fsdp_trains_the_same_weights(tmp_path):
    """2 gloo processes, FSDP2 over the tiny SD3 network's blocks: one iteration with and without
    gradient checkpointing gives the same sharded LoRA weights."""
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    run_two_processes(plain, "train.iterations=1", "train.parallel=fsdp", "log.eval_prompts=0")
    run_two_processes(checkpointed, "train.iterations=1", "train.parallel=fsdp", "log.eval_prompts=0", "train.gradient_checkpointing=true")
    (_, want), (_, got) = trainable(plain), trainable(checkpointed)
    assert list(got) == list(want) and any(float(w.abs().max()) > 0 for n, w in got.items() if "lora_B" in n)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["sd3", "wan"])
def test_history_offloaded_to_the_host_is_the_same_rollout(name):
    model = MODELS[name]()
    schedule = PruneSchedule.from_string("4:1=3,2=2@4")
    default = ExpandPruneSampler(model, schedule).sample(PROMPTS, seed=1)
    offloaded = ExpandPruneSampler(model, schedule, history_device="cpu").sample(PROMPTS, seed=1)
    assert offloaded.latents.device.type == "cpu" and offloaded.latents.shape == default.latents.shape
    assert torch.equal(offloaded.latents.to(default.latents.device), default.latents)
    assert torch.equal(offloaded.log_probs, default.log_probs) and torch.equal(offloaded.trajectory_ids, default.trajectory_ids)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_history_records_the_transitions_the_trainer_replays(dtype):
    model = MODELS["wan"]()
    schedule = PruneSchedule.from_string("4:1=3,2=2@4")
    full = ExpandPruneSampler(model, schedule).sample(PROMPTS, seed=1)
    sampler = ExpandPruneSampler(model, schedule, history_dtype=dtype)
    half = sampler.sample(PROMPTS, seed=1)
    assert half.latents.dtype == dtype and torch.equal(half.trajectory_ids, full.trajectory_ids)
    for step in range(3):  # the trainer's recomputation from the stored latents: ratio = 1
        x = half.latents[:, step].float()
        out = sampler.stepper(step, x, model.predict(x, sampler.stepper.timesteps[step], half.cond), x_next=half.latents[:, step + 1])
        torch.testing.assert_close(out.log_prob, half.log_probs[:, step], rtol=0, atol=1e-6)
    scale = full.latents.abs().max()
    torch.testing.assert_close(half.latents.float(), full.latents, rtol=0, atol=float(scale) * 2e-2)  # the same trajectories, rounded


def test_training_with_the_history_on_the_host_equals_training_without():
    weights = []
    for overrides in ([], ["sampler.history_device=cpu"]):
        run = trainer("wan", *overrides)
        run.train_iteration()
        weights.append([p.detach().clone() for p in run.parameters])
    for a, b in zip(*weights):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["sd3", "wan"])
def test_sampler_forward_rows_caps_the_rows_of_every_network_call(name):
    """sampler.forward_rows=3 on 8 rows (then 4 after the prune): denoiser calls and the reward
    proxy's and final reward's decodes of <= 3 trajectories, and the rollout of one call per
    step to fp32 rounding."""
    chunked, whole = trainer(name, "sampler.forward_rows=3", "sampler.proxy=reward"), trainer(name, "sampler.proxy=reward")
    assert chunked.sampler.forward_rows == 3 and whole.sampler.forward_rows is None
    rows, decoded = [], []
    predict, decode = chunked.model.predict, chunked.model.decode
    chunked.model.predict = lambda x, timestep, cond: rows.append(x.shape[0]) or predict(x, timestep, cond)
    chunked.model.decode = lambda latents: decoded.append(latents.shape[0]) or decode(latents)
    got, expected = chunked.rollout(0)[0], whole.rollout(0)[0]
    assert rows == [3, 3, 2] * 2 + [3, 1] * 2  # 4 steps: 2 prompts x 4 rows, pruned to x 2 at step 2
    assert decoded == [3, 3, 2] + [3, 1]  # the checkpoint's 8 x0_hat, then the 4 survivors
    assert torch.equal(got.trajectory_ids, expected.trajectory_ids)
    torch.testing.assert_close(got.latents, expected.latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.log_probs, expected.log_probs, rtol=1e-5, atol=1e-5)
