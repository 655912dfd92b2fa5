"""Inputs that used to fail with a raw error (or train on nothing) fail with one naming the file,
key or argument and the fix: unreadable files, bad model folders, unwritable outputs, schedules
too large to index or to hold, a final group of 1, zero reward weights, a full disk, divergence."""
import errno
import json
import os

import pytest
import torch
from test_trainer import BASE, Brightness, model

from progrpo_fast.cli import main
from progrpo_fast.models.pipeline_folder import read_model_index
from progrpo_fast.sampling import PruneSchedule
from progrpo_fast.sampling.sampler import ExpandPruneSampler, available_memory
from progrpo_fast.train import checkpoint as checkpoint_module
from progrpo_fast.train import trainer as trainer_module
from progrpo_fast.train.checkpoint import CheckpointStore, DiskFullError
from progrpo_fast.train.config import load_config
from progrpo_fast.train.run import train
from progrpo_fast.train.run_folder import RunFolder
from progrpo_fast.train.trainer import DivergedError, check_history_fits, write_jsonl


# ------------------------------------------------------------------ files
@pytest.mark.parametrize("content, expected", [
    (b"a red circle\n\x00\x01\x02", r"'prompts.source': '.*p\.txt' is a binary file \(it holds NUL bytes\)"),
    (b"a red circle\ncaf\xe9 au lait\n", r"'prompts.source': '.*p\.txt' is not UTF-8 text \(byte 0xe9 on line 2\); save it as UTF-8"),
])
def test_unreadable_prompt_files_are_named(tmp_path, content, expected):
    (tmp_path / "p.txt").write_bytes(content)
    with pytest.raises(ValueError, match=expected):
        load_config(None, [f"prompts.source={tmp_path / 'p.txt'}"])


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "c.yaml").write_bytes(b"train:\n  lr: 1e-3\n  # caf\xe9\n")
    with pytest.raises(ValueError, match=r"config file: '.*c\.yaml' is not UTF-8 text \(byte 0xe9 on line 3\)"):
        load_config(str(tmp_path / "c.yaml"))


@pytest.mark.parametrize("text, expected", [
    ("{bad json", r"model_index\.json is not a valid model_index\.json \(Expecting property name"),
    ("[1, 2]", r"model_index\.json must be a JSON object naming the pipeline class in '_class_name'.*got list"),
    ('{"transformer": ["diffusers", "X"]}', r"must be a JSON object naming the pipeline class.*without _class_name"),
])
def test_an_invalid_model_index_is_named_with_the_config_key(tmp_path, text, expected):
    (tmp_path / "model_index.json").write_text(text)
    with pytest.raises(ValueError, match=r"config key 'model\.path': .*" + expected):
        load_config(None, ["model.kind=sd3", f"model.path={tmp_path}"])
    with pytest.raises(ValueError, match=expected):
        read_model_index(tmp_path)


def claim(out_dir, resume=False):
    RunFolder.claim(out_dir, load_config(None, [f"log.out_dir={out_dir}"]), resume=resume).close()


def test_file_typed_outputs_fail_before_training(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ValueError, match=r"config key 'log\.out_dir': '.*taken' is a file, not a folder: move the file away"):
        claim(tmp_path / "taken")
    with pytest.raises(ValueError, match=r"'log\.out_dir': cannot write to '.*taken/run' \('.*taken' is a file, not a folder\)"):
        claim(tmp_path / "taken" / "run")
    claim(tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints").is_dir()  # created with the run, so a save cannot fail on it later
    (tmp_path / "run" / "checkpoints").rmdir()
    (tmp_path / "run" / "checkpoints").write_text("x")
    with pytest.raises(ValueError, match=r"'log\.out_dir' \(its checkpoints folder\): '.*checkpoints' is a file"):
        train(load_config(None, [*BASE, f"log.out_dir={tmp_path / 'run'}"]), resume=True, model=model(), reward=Brightness())
    assert not (tmp_path / "run" / "log.jsonl").exists()  # refused before the first iteration


def test_an_unwritable_out_dir_is_named():
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc (a folder nobody can create entries in) here")
    with pytest.raises(ValueError, match=r"config key 'log\.out_dir': cannot write to '/proc/progrpo-fast-test' \(.*\): choose a writable"):
        claim("/proc/progrpo-fast-test")


# ------------------------------------------------------------------ schedules and rewards
def test_a_schedule_beyond_a_tensor_dimension_names_the_key():
    with pytest.raises(ValueError, match=r"'sampler\.schedule' is invalid: group_size_max must be <= 2147483647 .*got 9{20}"):
        load_config(None, ["sampler.schedule=99999999999999999999@5"])
    with pytest.raises(ValueError, match=r"num_steps must be <= 2147483647"):
        PruneSchedule.from_string(f"4@{2**31}")


@pytest.mark.parametrize("schedule", ["1@5", "2:2=1@5", "8:2=4,3=1@5"])
def test_a_final_group_of_one_is_a_config_error(schedule):
    with pytest.raises(ValueError, match=r"'sampler\.schedule' ends with a group of 1 row per prompt.*every advantage would be 0"):
        load_config(None, [f"sampler.schedule={schedule}"])


def test_zero_reward_weights_are_a_config_error():
    with pytest.raises(ValueError, match=r"'reward\.weights' has only zero weights .*nothing would train"):
        load_config(None, ["reward.weights={shapes: 0.0}"])
    load_config(None, ["reward.weights={shapes: 0.0, jpeg_compressibility: 0.5}"])  # one non-zero weight is enough


def test_a_history_larger_than_the_memory_is_refused_before_sampling(monkeypatch):
    sampler = ExpandPruneSampler(model(), PruneSchedule.from_string("200000@5"))
    latent = 1
    for size in sampler.model.latent_shape():
        latent *= size
    assert sampler.history_bytes(8) == 8 * 200000 * 6 * latent * 4
    monkeypatch.setattr(trainer_module, "available_memory", lambda device: sampler.history_bytes(8) - 1)
    with pytest.raises(ValueError, match=r"history needs [\d,]+ MiB \(8 prompts x G_max 200000 rows x 6 latents .*lower G_max in "
                                         r"sampler\.schedule \(200000@5\) or sampler\.prompts_per_iteration"):
        check_history_fits(sampler, 8)
    check_history_fits(sampler, 7)  # fits
    assert available_memory(torch.device("cpu")) is None or available_memory(torch.device("cpu")) > 0


def test_the_cli_refuses_a_schedule_too_large_for_memory_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trainer_module, "available_memory", lambda device: 2**20)  # 1 MiB: as if the history would not fit
    assert main(["train", "--set", "sampler.schedule=64@5", "--set", f"log.out_dir={tmp_path}", "--set", "log.progress=false"]) == 2
    assert "history needs 12 MiB (8 prompts x G_max 64 rows x 6 latents of (4, 16, 16) in torch.float32) but cpu has 1 MiB" \
        in capsys.readouterr().err
    assert not (tmp_path / "log.jsonl").exists()


# ------------------------------------------------------------------ full disk
def test_a_full_disk_during_a_checkpoint_names_the_file_and_keeps_the_previous(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(1, {"w": torch.ones(4)})
    written = {"bytes": 0}
    original = checkpoint_module._HashingWriter.write

    def fills_the_disk(self, data):
        written["bytes"] += len(data)
        if written["bytes"] > 200:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)

    monkeypatch.setattr(checkpoint_module._HashingWriter, "write", fills_the_disk)
    with pytest.raises(DiskFullError, match=r"no space left on the device while writing the checkpoint file .*step-00000002\.pt "
                                            r"\(\d+ MiB free there now\).*continue with --resume"):
        store.save(2, {"w": torch.zeros(1000)})
    monkeypatch.undo()
    assert store.steps() == [1] and torch.equal(store.latest()[1]["w"], torch.ones(4))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_full_disk_during_a_log_write_names_the_log():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with pytest.raises(DiskFullError, match=r"while writing the log /dev/full"):
        write_jsonl("/dev/full", {"iteration": 0, "pad": "x" * 10000})


# ------------------------------------------------------------------ divergence
def test_a_diverging_run_stops_at_once_and_saves_no_bad_weights(tmp_path, capsys):
    cfg = load_config(None, [*BASE, f"log.out_dir={tmp_path}", "train.iterations=3", "train.lr=1e30", "log.eval_prompts=0"])
    with pytest.raises(DivergedError, match=r"training diverged at iteration 0: after the update .* are not finite \(train\.lr=1e\+30\)"):
        train(cfg, model=model(), reward=Brightness())
    assert not list((tmp_path / "checkpoints").glob("step-*"))  # checkpoint_every=1: the bad weights were never saved
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()] if (tmp_path / "log.jsonl").exists() else []
    assert log == []
