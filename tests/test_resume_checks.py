"""--resume compares the checkpoint's config with the new one: changes a run cannot continue with
are one error listing each; the others are one log line and take effect (lr included); EMA
switched on starts from the resumed weights, switched off is refused, and the trainer never
crashes on either."""
import shutil

import pytest
import torch
from test_trainer import Brightness, config, model

from progrpo_fast.train.checkpoint import CheckpointStore
from progrpo_fast.train.resume_check import ResumeConfigError, check_resume
from progrpo_fast.train.run import train
from progrpo_fast.train.trainer import Trainer

QUIET = ["log.eval_prompts=0"]


def run(out_dir, *extra, resume=True) -> dict:
    return train(config(out_dir, *QUIET, *extra), resume=resume, model=model(), reward=Brightness())


@pytest.fixture(scope="module")
def one_iteration(tmp_path_factory):
    """A run folder after 1 iteration without EMA (LoRA rank 4, schedule 6:2=3@4)."""
    out_dir = tmp_path_factory.mktemp("base")
    run(out_dir, "train.iterations=1", resume=False)
    return out_dir


@pytest.fixture
def folder(one_iteration, tmp_path):
    return shutil.copytree(one_iteration, tmp_path / "run")


def latest(out_dir) -> tuple[int, dict]:
    return CheckpointStore(out_dir / "checkpoints").latest()


def test_changes_a_run_cannot_continue_with_are_one_error_listing_each(folder):
    with pytest.raises(ResumeConfigError) as caught:
        run(folder, "train.iterations=2", "sampler.schedule=8:2=4@4", "train.lora_rank=8", "train.lr=5e-3")
    message = str(caught.value)
    assert "sampler.schedule: 6:2=3@4 -> 8:2=4@4 (the prune schedule" in message
    assert "train.lora_rank: 4 -> 8 (the LoRA adapter the checkpoint holds)" in message
    assert "train.lr" not in message and "train.iterations" not in message  # those continue
    assert "--set sampler.schedule=6:2=3@4 --set train.lora_rank=4" in message and "--overwrite" in message
    assert latest(folder)[0] == 1  # nothing was trained or saved


def test_continuable_changes_are_one_log_line_and_take_effect(folder, capsys):
    resumed = run(folder, "train.iterations=2", "train.lr=5e-3", "log.keep_last=2")
    lines = [line for line in capsys.readouterr().out.splitlines() if "with changes:" in line]
    assert len(lines) == 1
    assert "train.iterations: 1 -> 2; train.lr: 0.01 -> 0.005; log.keep_last: 3 -> 2" in lines[0]
    assert [h["iteration"] for h in resumed["history"]] == [1]
    step, state = latest(folder)
    # the new lr on the default cosine schedule at iteration 1 of 2: 5e-3 * (1 + cos(pi / 2)) / 2, not the checkpoint's 1e-2
    assert step == 2 and state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2.5e-3)


def test_ema_switched_on_starts_from_the_resumed_weights_and_switched_off_is_refused(folder, capsys):
    _, before = latest(folder)
    run(folder, "train.iterations=2", "train.ema_decay=0.9")
    assert "the EMA starts from the resumed weights" in capsys.readouterr().out
    _, after = latest(folder)
    for average, name in zip(after["ema"], after["trainable"]):
        expected = 0.9 * before["trainable"][name] + 0.1 * after["trainable"][name]
        torch.testing.assert_close(average, expected)
    with pytest.raises(ResumeConfigError, match=r"train\.ema_decay: 0\.9 -> null \(the checkpoint's EMA weights would be lost\)"):
        run(folder, "train.iterations=3")


def test_a_trainer_loading_an_ema_checkpoint_without_ema_trains_on(folder):
    """Trainer.load_state_dict follows the config: an EMA it switched off is dropped (no crash in
    the next iteration's EMA update)."""
    state = latest(folder)[1]
    state["ema"] = [weight.clone() for weight in state["trainable"].values()]
    trainer = Trainer(config(folder, *QUIET), model(), Brightness(), lambda it, rank, n: ["a red circle"] * n)
    trainer.load_state_dict(state)
    assert trainer.ema is None
    assert trainer.train_iteration()["iteration"] == 1


def test_proxy_lora_and_ema_changes_block_only_where_the_checkpoint_holds_their_state():
    base = config("unused")
    state = {"config": base.to_dict(), "probe": None, "ema": None}
    changed = config("unused", "sampler.proxy=reward", "sampler.grid=2")
    assert check_resume(state, changed, "ckpt") == ["sampler.proxy: latent -> reward", "sampler.grid: 4 -> 2"]
    with pytest.raises(ResumeConfigError, match=r"sampler\.proxy: latent -> reward \(the checkpoint holds the learned state"):
        check_resume({**state, "probe": {}}, changed, "ckpt")
    full = {**state, "config": config("unused", "train.lora=false").to_dict()}
    assert check_resume(full, config("unused", "train.lora=false", "train.lora_rank=8"), "ckpt") == ["train.lora_rank: 4 -> 8"]
    with pytest.raises(ResumeConfigError, match=r"model\.resolution: null -> 32"):
        check_resume(state, config("unused", "model.resolution=32"), "ckpt")
    ema = config("unused", "train.ema_decay=0.9")  # a checkpoint whose config has an EMA it did not save (older versions)
    assert check_resume({**state, "config": ema.to_dict()}, ema, "ckpt") == [
        "train.ema_decay: 0.9 but the checkpoint holds no EMA weights (the EMA starts from the resumed weights)"]
