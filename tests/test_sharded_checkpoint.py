"""Sharded (DCP) checkpoints of train.parallel=fsdp runs: atomic, verified per file, pruned; resumed
on another number of processes (2 -> 1 and 1 -> 2 on gloo: the same weights, AdamW state and EMA);
exported to one safetensors file without a process group (a LoRA that diffusers loads)."""
import logging
import os
import pickle
import socket

import pytest
import torch
import torch.multiprocessing as mp
from test_trainer import Brightness, config, model, trainable

from progrpo_fast.cli import main
from progrpo_fast.train.checkpoint import CorruptCheckpointError
from progrpo_fast.train.run import train
from progrpo_fast.train.sharded_checkpoint import MANIFEST, RunCheckpoints, ShardedCheckpointStore, newest_checkpoint
from progrpo_fast.train.trainer import Distributed, Trainer, full_tensor

PROMPTS = ["a red circle", "two blue squares"]
FULL = ["train.lora=false", "train.ema_decay=0.9", "train.beta_kl=0", "train.lr=1e-3", "train.parallel=fsdp", "log.eval_prompts=0"]


def tensors(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"trainable": {"block.weight": torch.randn(4, 3, generator=gen), "block.bias": torch.randn(5, generator=gen)}}


def test_save_verify_load_prune_and_clear_leftovers(tmp_path):
    store = ShardedCheckpointStore(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        path = store.save(step, tensors(step), {"iteration": step}, {"rng": step})
    assert path.name == "step-00000003.dcp" and store.steps() == [2, 3]
    assert sorted(os.listdir(path)) == [".metadata", MANIFEST, "__0_0.distcp", "rank-00000.pt", "trainer.pt"]
    assert store.verify(3) == ({"iteration": 3, "world_size": 1}, {"rng": 3})
    loaded = {"trainable": {name: torch.zeros_like(t) for name, t in tensors(0)["trainable"].items()}}
    store.load_tensors(3, loaded)
    read = store.read_tensors(3, "trainable", dtype=torch.float64)
    for name, t in tensors(3)["trainable"].items():
        assert torch.equal(loaded["trainable"][name], t) and torch.equal(read[name], t.double())
    crashed = tmp_path / ".step-00000004.dcp.tmp-1234"  # a save that crashed before its rename
    crashed.mkdir()
    (crashed / "__0_0.distcp").write_bytes(b"partial")
    assert store.steps() == [2, 3] and newest_checkpoint(tmp_path) == store.path(3)
    store.save(5, tensors(5), {"iteration": 5}, {})
    store.save(5, tensors(6), {"iteration": 5}, {})  # the same step again replaces it
    assert sorted(os.listdir(tmp_path)) == ["step-00000003.dcp", "step-00000005.dcp"]
    assert torch.equal(store.read_tensors(5, "trainable")["block.bias"], tensors(6)["trainable"]["block.bias"])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint .*step-00000009\.dcp \(steps present: 3, 5\)"):
        store.verify(9)
    with pytest.raises((AttributeError, pickle.PicklingError)):  # a local lambda does not pickle
        store.save(6, tensors(6), {"iteration": 6}, {"unpicklable": lambda: None})
    assert sorted(os.listdir(tmp_path)) == ["step-00000003.dcp", "step-00000005.dcp"]  # a failed save leaves nothing


@pytest.mark.parametrize("damage, message", [
    ("flip_data", r"step-00000002\.dcp is corrupted: sha256 \w+ of __0_0\.distcp \(\d+ bytes\) does not match \w+ recorded in MANIFEST"),
    ("truncate_rank_file", r"step-00000002\.dcp is corrupted: sha256 \w+ of rank-00000\.pt"),
    ("delete_metadata", r"step-00000002\.dcp: \.metadata, listed in MANIFEST\.sha256, is missing"),
    ("delete_manifest", r"step-00000002\.dcp has no MANIFEST\.sha256: its save did not complete"),
])
def test_a_damaged_file_is_named_and_the_newest_valid_checkpoint_is_used(tmp_path, caplog, damage, message):
    store = ShardedCheckpointStore(tmp_path)
    for step in (1, 2):
        store.save(step, tensors(step), {"iteration": step}, {"rng": step})
    newest = store.path(2)
    if damage == "flip_data":
        data = bytearray((newest / "__0_0.distcp").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (newest / "__0_0.distcp").write_bytes(data)
    elif damage == "truncate_rank_file":
        (newest / "rank-00000.pt").write_bytes((newest / "rank-00000.pt").read_bytes()[:50])
    else:
        (newest / (".metadata" if damage == "delete_metadata" else MANIFEST)).unlink()
    with pytest.raises(CorruptCheckpointError, match=message):
        store.verify(2)
    with caplog.at_level(logging.WARNING):
        assert newest_checkpoint(tmp_path) == store.path(1)
    assert "falling back to an earlier checkpoint" in caplog.text


def test_a_one_process_fsdp_run_resumes_from_sharded_checkpoints_and_exports_a_lora_diffusers_loads(tmp_path):
    from progrpo_fast.models.sd3 import SD3Denoiser
    from progrpo_fast.models.tiny import tiny_sd3_pipeline

    overrides = ["train.parallel=fsdp", "log.eval_prompts=0", "train.ema_decay=0.9"]
    train(config(tmp_path / "full", "train.iterations=2", *overrides), model=model(), reward=Brightness())
    train(config(tmp_path / "split", "train.iterations=1", *overrides), model=model(), reward=Brightness())
    train(config(tmp_path / "split", "train.iterations=2", *overrides), resume=True, model=model(), reward=Brightness())
    assert sorted(os.listdir(tmp_path / "split" / "checkpoints")) == ["step-00000001.dcp", "step-00000002.dcp"]
    (step, full), (_, split) = trainable(tmp_path / "full"), trainable(tmp_path / "split")
    assert step == 2 and list(full) == list(split)
    for name in full:
        assert torch.equal(full[name], split[name]), name

    out = tmp_path / "lora.safetensors"
    assert main(["export-checkpoint", str(tmp_path / "split"), "--out", str(out)]) == 0
    trained = Trainer(config(tmp_path / "split", *overrides), model(), Brightness(), lambda it, rank, n: PROMPTS[:n])
    assert RunCheckpoints(tmp_path / "split" / "checkpoints", 3, trained).restore() == 2
    pipe = tiny_sd3_pipeline()
    pipe.load_lora_weights(str(out))
    loaded = SD3Denoiser(pipe, max_sequence_length=4, resolution=16)
    x = torch.randn(2, *loaded.latent_shape(), generator=torch.Generator().manual_seed(0))
    cond = {k: v.repeat(2, *[1] * (v.dim() - 1)) for k, v in loaded.encode(PROMPTS[:1]).items()}
    with torch.no_grad():
        want = trained.model.predict(x, trained.sampler.stepper.timesteps[0], cond)
        got = loaded.predict(x, trained.sampler.stepper.timesteps[0], cond)
        base = SD3Denoiser(tiny_sd3_pipeline(), max_sequence_length=4, resolution=16).predict(x, trained.sampler.stepper.timesteps[0], cond)
    assert not torch.allclose(want, base)  # the adapter acts
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_export_names_a_one_file_lora_as_diffusers_does_and_refuses_what_is_not_there(tmp_path, capsys):
    import json

    from safetensors import safe_open

    from progrpo_fast.train.checkpoint import CheckpointStore
    from progrpo_fast.train.config import load_config

    sd1 = ["model.kind=sd1", "sampler.method=ddim", "train.lora_rank=4", "train.lora_alpha=8"]
    cfg = load_config(None, sd1, check_paths=False).to_dict()
    names = ["down_blocks.0.attentions.0.to_q.lora_A.default.weight", "down_blocks.0.attentions.0.to_q.lora_B.default.weight"]
    weights = {name: torch.full((4, 4), float(i)) for i, name in enumerate(names)}
    CheckpointStore(tmp_path / "run" / "checkpoints").save(3, {"iteration": 3, "trainable": weights, "ema": None, "config": cfg})
    out = tmp_path / "lora.safetensors"
    assert main(["export-checkpoint", str(tmp_path / "run"), "--out", str(out), "--dtype", "bf16"]) == 0
    assert "LoRA adapter (diffusers format: pipe.load_lora_weights), 2 tensors" in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as f:
        assert sorted(f.keys()) == [f"unet.down_blocks.0.attentions.0.to_q.lora_{ab}.weight" for ab in "AB"]
        assert f.get_tensor("unet.down_blocks.0.attentions.0.to_q.lora_B.weight").dtype == torch.bfloat16
        adapter = json.loads(f.metadata()["lora_adapter_metadata"])
    assert adapter == {"unet.r": 4, "unet.lora_alpha": 8, "unet.target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    assert main(["export-checkpoint", str(tmp_path / "run"), "--out", str(out), "--ema"]) == 2
    assert "holds no EMA (its run had train.ema_decay=null): export it without --ema" in capsys.readouterr().err
    assert main(["export-checkpoint", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "expected a run folder, its checkpoints/ folder, a step-XXXXXXXX.pt file" in capsys.readouterr().err


# ------------------------------------------------------------------ 2 processes <-> 1 on gloo
def full_state(trainer) -> dict:
    """The trainer's whole weights, EMA and AdamW state (by parameter name): a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    optimizer = get_optimizer_state_dict(trainer.network, trainer.optimizer, options=StateDictOptions(full_state_dict=True))
    return {"iteration": trainer.iteration, "optimizer": optimizer["state"],
            "trainable": {n: full_tensor(p.detach()).clone() for n, p in zip(trainer.parameter_names, trainer.parameters)},
            "ema": {n: full_tensor(e).clone() for n, e in zip(trainer.parameter_names, trainer.ema)}}


def full_trainer(out_dir, distributed=None) -> Trainer:
    return Trainer(config(out_dir, *FULL), model(), Brightness(), lambda it, rank, n: PROMPTS[:n], distributed)


def _worker(rank, world, port, out_dir, mode):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = full_trainer(out_dir, Distributed.from_environment("fsdp"))
    checkpoints = RunCheckpoints(out_dir / "checkpoints", 3, trainer)
    if mode == "train":
        trainer.train_iteration()
        checkpoints.save()
    else:
        assert checkpoints.restore() == 1
    state = full_state(trainer)
    if rank == 0:
        torch.save(state, out_dir / f"{mode}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def run_two(out_dir, mode):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(2, port, out_dir, mode), nprocs=2, start_method="spawn")
    return torch.load(out_dir / f"{mode}.pt", weights_only=True)


def assert_same_state(got: dict, want: dict) -> None:
    assert got["iteration"] == want["iteration"] and list(got["trainable"]) == list(want["trainable"])
    for part in ("trainable", "ema"):
        for name, t in want[part].items():
            assert torch.equal(got[part][name], t), (part, name)
    assert got["optimizer"].keys() == want["optimizer"].keys()
    for name, moments in want["optimizer"].items():
        for key, t in moments.items():
            assert torch.equal(got["optimizer"][name][key], t), (name, key)


def test_sharded_checkpoints_resume_from_two_processes_on_one_and_from_one_on_two(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    want = run_two(two, "train")
    checkpoint = two / "checkpoints" / "step-00000001.dcp"
    listed = [line.split()[1] for line in (checkpoint / MANIFEST).read_text().splitlines()]
    assert listed == [".metadata", "__0_0.distcp", "__1_0.distcp", "rank-00000.pt", "rank-00001.pt", "trainer.pt"]
    assert any(float(m["exp_avg"].abs().max()) > 0 for m in want["optimizer"].values())

    resumed = full_trainer(two)  # one process: train.parallel=fsdp without a process group holds whole tensors
    assert RunCheckpoints(two / "checkpoints", 3, resumed).restore() == 1
    assert_same_state(full_state(resumed), want)
    RunCheckpoints(one / "checkpoints", 3, resumed).save()
    assert_same_state(run_two(one, "restore"), want)

    for flag, part in (([], "trainable"), (["--ema"], "ema")):
        from safetensors.torch import load_file

        out = tmp_path / f"{part}.safetensors"
        assert main(["export-checkpoint", str(checkpoint), "--out", str(out), *flag]) == 0
        exported = load_file(out)
        assert exported.keys() == want[part].keys() and all(torch.equal(exported[n], t) for n, t in want[part].items())


def test_bench_sharded_checkpoint_writes_its_table(tmp_path):
    """bench sharded_checkpoint on 2 blocks of 1 head: every rank's shard, RSS and peaks."""
    import json

    from progrpo_fast.bench import main as bench_main

    assert bench_main(["sharded_checkpoint", "--heads", "1", "--layers", "2", "--out", str(tmp_path), "--tag", "t"]) == 0
    payload = json.loads((tmp_path / "sharded_checkpoint_t.json").read_text())
    assert payload["processes"] == 2 and [row["rank"] for row in payload["rows"]] == [0, 1]
    for row in payload["rows"]:
        assert 0 < row["shard_mib"] < row["before_save_mib"] <= row["sharded_peak_mib"] and row["sharded_bytes"] > 0
        assert row["gather_peak_mib"] > 0 and row["sharded_s"] > 0
    assert "sharded save peak MiB" in (tmp_path / "sharded_checkpoint_t.md").read_text()
