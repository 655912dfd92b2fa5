"""Multi-node training as README.md shows it: two torchrun "nodes" of one process each on 127.0.0.1,
joined by torchrun's static rendezvous, sharing one run folder. One log.jsonl with every iteration once and one
writer per checkpoint: rank 0's one file under ddp; under fsdp one sharded checkpoint holding both
ranks' shards."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["sampler.schedule=4:2=2@4", "sampler.prompts_per_iteration=1", "sampler.proxy=latent", "prompts.pool=8", "train.iterations=2",
        "train.lora_rank=4", "train.lora_alpha=8", "train.minibatch_rows=4", "log.checkpoint_every=1", "log.eval_prompts=0",
        "log.progress=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(node_rank: int, port: int, out_dir: Path, parallel: str) -> subprocess.Popen:
    """One "node": torchrun --nnodes 2 --nproc-per-node 1 --node-rank N with the static rendezvous on
    127.0.0.1:port (node 0 hosts the store). With c10d the agent of the node that hosts the store may
    exit first while the other agent still polls it, which fails that agent after training succeeded."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node_rank),
               "--rdzv-backend", "static", "--rdzv-endpoint", f"127.0.0.1:{port}", "--local-addr", "127.0.0.1",
               "-m", "progrpo_fast", "train"]
    for override in [*TINY, f"train.parallel={parallel}", f"log.out_dir={out_dir}"]:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_nodes_share_one_run_folder(tmp_path, parallel):
    port = free_port()
    nodes = [start_node(rank, port, tmp_path, parallel) for rank in (0, 1)]
    outputs = []
    for node in nodes:
        try:
            outputs.append(node.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            raise
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)[-4000:]
    logged = [json.loads(line)["iteration"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == [0, 1]
    checkpoints = tmp_path / "checkpoints"
    if parallel == "ddp":
        assert sorted(os.listdir(checkpoints)) == [f"step-0000000{step}.pt{suffix}" for step in (1, 2) for suffix in ("", ".sha256")]
        return
    assert sorted(os.listdir(checkpoints)) == ["step-00000001.dcp", "step-00000002.dcp"]
    for step in (1, 2):
        folder = checkpoints / f"step-{step:08d}.dcp"
        listed = [line.split()[1] for line in (folder / "MANIFEST.sha256").read_text().splitlines()]
        assert listed == [".metadata", "__0_0.distcp", "__1_0.distcp", "rank-00000.pt", "rank-00001.pt", "trainer.pt"]
        shared = torch.load(folder / "trainer.pt", weights_only=True)
        assert (shared["iteration"], shared["world_size"]) == (step, 2)
