"""CheckpointStore: atomic writes, verification, fallback, pruning by validity and run id; RNG
capture/restore."""
import hashlib
import logging
import pickle
import random

import numpy as np
import pytest
import torch

from progrpo_fast.train.checkpoint import (
    CheckpointStore,
    CorruptCheckpointError,
    ForeignCheckpointError,
    capture_rng_state,
    restore_rng_state,
)


def make_state(step: int) -> dict:
    """A state shaped like the trainer's."""
    gen = torch.Generator().manual_seed(step)
    weight = torch.randn(4, 3, generator=gen)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(weight.clone())], lr=1e-3)
    optimizer.param_groups[0]["params"][0].grad = torch.ones(4, 3)
    optimizer.step()
    return {
        "iteration": step,
        "trainable": {"layer.lora_A.weight": weight},
        "optimizer": optimizer.state_dict(),
        "ema": [weight * 0.5],
        "probe": {5: {"features": [torch.randn(3, 2, generator=gen)], "rewards": [torch.randn(3, generator=gen)], "weights": None}},
        "rng": capture_rng_state(),
        "config": {"train": {"lr": 3e-4, "adam_betas": [0.9, 0.999], "ema_decay": None}},
    }


def assert_same_state(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"] and a["config"] == b["config"]
    assert torch.equal(a["trainable"]["layer.lora_A.weight"], b["trainable"]["layer.lora_A.weight"])
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
    assert torch.equal(a["probe"][5]["features"][0], b["probe"][5]["features"][0])


def visible_files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_save_load_round_trip(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", keep_last=3)
    assert store.latest() is None
    state = make_state(7)
    path = store.save(7, state)
    assert path.name == "step-00000007.pt"
    assert visible_files(tmp_path / "ckpt") == ["step-00000007.pt", "step-00000007.pt.sha256"]
    assert_same_state(store.load(7), state)
    step, latest = store.latest()
    assert step == 7
    assert_same_state(latest, state)


def test_keep_last_prunes_the_oldest(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    for step in range(1, 6):
        store.save(step, make_state(step))
    assert store.steps() == [4, 5]
    assert visible_files(tmp_path) == ["step-00000004.pt", "step-00000004.pt.sha256", "step-00000005.pt", "step-00000005.pt.sha256"]


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    for step in (5, 6):
        store.save(step, make_state(step))
    store.save(1, make_state(1))
    assert store.steps() == [1, 6]


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(data)


def test_pruning_keeps_the_newest_valid_checkpoints_and_removes_invalid_ones_older_and_newer(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep_last=2, run_id="a")
    for step in (1, 2, 3):
        store.save(step, make_state(step))
    assert store.steps() == [2, 3]
    # a crash left step 3 truncated, step 4 modified and step 5 without its checksum file
    full = store.path(3).read_bytes()
    store.path(3).write_bytes(full[:100])
    store.save(4, make_state(4))
    flip_a_byte(store.path(4))
    store.path(5).write_bytes(full)
    resumed = CheckpointStore(tmp_path, keep_last=2, run_id="a")  # the resuming process
    assert resumed.latest()[0] == 2
    with caplog.at_level(logging.WARNING, logger="progrpo_fast.train.checkpoint"):
        resumed.save(3, make_state(3))
    assert resumed.steps() == [2, 3]  # the newer invalid 4 and 5 are gone, the valid 2 stays
    assert "removed checkpoint" in caplog.text and "step-00000004.pt is corrupted" in caplog.text
    assert "step-00000005.pt has no checksum file" in caplog.text
    # a corrupt older checkpoint goes even where keep_last leaves room for it
    store = CheckpointStore(tmp_path / "b", keep_last=3, run_id="a")
    store.save(1, make_state(1))
    store.save(2, make_state(2))
    flip_a_byte(store.path(1))
    store.save(3, make_state(3))
    assert store.steps() == [2, 3]


def test_checkpoints_of_another_run_are_never_loaded_and_are_pruned(tmp_path, caplog):
    first = CheckpointStore(tmp_path, keep_last=3, run_id="a")
    first.save(1, make_state(1))
    first.save(2, make_state(2))
    second = CheckpointStore(tmp_path, keep_last=3, run_id="b")
    with caplog.at_level(logging.WARNING):
        assert second.latest() is None
    assert "step-00000002.pt is a checkpoint of run a, not of this run b: not loaded" in caplog.text
    with pytest.raises(ForeignCheckpointError, match="checkpoint of run a"):
        second.load(1)
    second.save(1, make_state(1))  # replaces run a's step 1 and prunes its step 2
    assert second.steps() == [1] and second.latest()[1]["run_id"] == "b"
    assert "removed checkpoint" in caplog.text and "step-00000002.pt: it is a checkpoint of run a" in caplog.text
    assert CheckpointStore(tmp_path).latest()[0] == 1  # a store of no run (a reader) loads any


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_damaged_newest_falls_back_to_the_previous_with_a_warning(tmp_path, caplog, damage):
    store = CheckpointStore(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        store.save(step, make_state(step))
    newest = store.path(3)
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="progrpo_fast.train.checkpoint"):
        step, state = store.latest()
    assert step == 2
    assert_same_state(state, make_state(2))
    assert "step-00000003.pt is corrupted: sha256" in caplog.text and "falling back" in caplog.text
    with pytest.raises(CorruptCheckpointError, match=r"step-00000003\.pt is corrupted: sha256 .* does not match"):
        store.load(3)


def test_unreadable_file_with_a_matching_checksum_is_reported(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep_last=3)
    store.save(1, make_state(1))
    store.save(2, make_state(2))
    # Garbage with a sidecar that agrees: the checksum passes, torch.load does not.
    store.path(2).write_bytes(b"not a checkpoint")
    store.checksum_path(store.path(2)).write_text(hashlib.sha256(b"not a checkpoint").hexdigest() + "  step-00000002.pt\n")
    with caplog.at_level(logging.WARNING):
        assert store.latest()[0] == 1
    assert "matches its checksum but torch.load failed" in caplog.text
    with pytest.raises(CorruptCheckpointError, match="torch.load failed"):
        store.load(2)


def test_crash_before_a_rename_leaves_no_visible_checkpoint(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep_last=3)
    store.save(1, make_state(1))
    full = store.path(1).read_bytes()
    # Crash during the data write of step 2: only a hidden, partial temporary file remains.
    (tmp_path / ".tmp-step-00000002.pt.1234.abcd").write_bytes(full[: len(full) // 3])
    assert store.steps() == [1]
    assert store.latest()[0] == 1
    # Crash between the data rename and the sidecar rename: the data file has no checksum yet.
    store.path(3).write_bytes(full)
    (tmp_path / ".tmp-step-00000003.pt.sha256.1234.abcd").write_text("")
    with caplog.at_level(logging.WARNING):
        assert store.latest()[0] == 1
    assert "step-00000003.pt has no checksum file step-00000003.pt.sha256: its save was interrupted" in caplog.text
    # The next save clears the leftovers.
    store.save(4, make_state(4))
    assert not [name for name in visible_files(tmp_path) if name.startswith(".tmp-")]
    assert store.latest()[0] == 4


def test_a_failing_save_leaves_nothing_behind(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=3)
    store.save(1, make_state(1))
    # a local lambda does not pickle (AttributeError or PicklingError, by Python version)
    with pytest.raises((AttributeError, pickle.PicklingError)):
        store.save(2, {"unpicklable": lambda: None})
    assert visible_files(tmp_path) == ["step-00000001.pt", "step-00000001.pt.sha256"]


def test_load_of_a_missing_step_lists_the_present_ones(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=3)
    store.save(4, make_state(4))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint .*step-00000009\.pt \(steps present: 4\)"):
        store.load(9)
    with pytest.raises(ValueError, match="keep_last must be an int >= 1"):
        CheckpointStore(tmp_path, keep_last=0)


def draws() -> tuple:
    return torch.rand(5), random.random(), np.random.rand(3), np.random.randn()


def test_rng_capture_restore_reproduces_draws_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    store = CheckpointStore(tmp_path, keep_last=1)
    store.save(0, {"rng": capture_rng_state()})
    expected = draws()
    draws()  # move every generator on
    restore_rng_state(store.latest()[1]["rng"])
    again = draws()
    assert torch.equal(expected[0], again[0])
    assert expected[1] == again[1]
    assert np.array_equal(expected[2], again[2]) and expected[3] == again[3]
