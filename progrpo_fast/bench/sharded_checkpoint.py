"""``progrpo-fast bench sharded-checkpoint``: peak host memory (RSS) of one rank while an FSDP2 run
saves its checkpoint, sharded (train.sharded_checkpoint: DCP, every rank writes its own shards) vs
the full-gather one-file save (every parameter and AdamW moment gathered whole, rank 0 writes).

The model is Qwen-Image's transformer (models.tiny.QWEN_IMAGE_TRANSFORMER: 60 MMDiT blocks) with
``--heads`` of its 24 attention heads (default 2: width 256 instead of 3072, 1.4e8 instead of 2.0e10
parameters, so two processes fit a small host) and ``--layers`` of its blocks, built on the meta device, FSDP2-sharded over
``--processes`` gloo processes and materialised shard by shard, so a rank only ever holds its shard.
One AdamW step gives the optimizer its moments; the saved state is weights + both moments, as a full
fine-tune checkpoints it. Each rank reports its shard's bytes, its RSS before the save, the peak RSS
during each save (the kernel's high-water mark, reset before each), and the seconds.
"""
from __future__ import annotations

import ctypes
import os
import socket
import tempfile
import time
from pathlib import Path

import torch

DESCRIPTION = "peak host memory of an FSDP2 checkpoint save per rank (gloo, CPU): sharded (DCP) vs full-gather one file"
COLUMNS = {"rank": "rank", "shard_mib": "shard MiB", "baseline_mib": "process before model MiB", "before_save_mib": "RSS before save MiB",
           "sharded_peak_mib": "sharded save peak MiB", "sharded_increase_mib": "sharded peak - RSS before",
           "sharded_over_shard_mib": "sharded peak - shard - process", "sharded_s": "sharded save s",
           "load_peak_mib": "sharded load peak MiB", "gather_peak_mib": "full-gather save peak MiB",
           "gather_increase_mib": "full-gather peak - RSS before", "gather_s": "full-gather save s"}
MIB = 2**20


def resident_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (VmRSS) or its high-water mark (VmHWM), MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line: this benchmark reads Linux's process memory counters")


def trim_heap() -> None:
    """Returns the C heap's freed memory to the OS (glibc's malloc_trim; a no-op elsewhere), so RSS
    counts live memory, not what earlier small allocations (AdamW's step, the gradients) left free."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_during(fn) -> tuple[float, float]:
    """(peak RSS in MiB while ``fn()`` ran, its seconds): the heap trimmed and the high-water mark
    reset just before."""
    trim_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError as err:
        raise RuntimeError(f"cannot reset the peak-RSS counter (/proc/self/clear_refs: {err}); this benchmark needs Linux >= 4.0") from err
    started = time.perf_counter()
    fn()
    return resident_mib("VmHWM"), time.perf_counter() - started


def sharded_transformer(heads: int, layers: int, seed: int):
    """Qwen-Image's transformer with ``heads`` heads and ``layers`` blocks, FSDP2-sharded over the process group and
    filled shard by shard with seeded random values (never whole on one rank)."""
    from diffusers import QwenImageTransformer2DModel

    from progrpo_fast.models.tiny import QWEN_IMAGE_TRANSFORMER
    from progrpo_fast.train.trainer import fully_shard_network

    with torch.device("meta"):
        network = QwenImageTransformer2DModel(**{**QWEN_IMAGE_TRANSFORMER, "num_attention_heads": heads, "num_layers": layers})
    fully_shard_network(network)
    network.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            p.to_local().normal_(0.0, 0.02, generator=gen)
    return network


def _rank(rank: int, world: int, port: int, heads: int, layers: int, folder: str, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from diffusers import QwenImageTransformer2DModel  # noqa: F401  (imported before the baseline, as DCP is)
    from torch.distributed.checkpoint import FileSystemWriter  # noqa: F401
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from progrpo_fast.train.checkpoint import CheckpointStore
    from progrpo_fast.train.sharded_checkpoint import ShardedCheckpointStore, training_tensors
    from progrpo_fast.train.trainer import full_tensor

    trim_heap()
    baseline = resident_mib()
    network = sharded_transformer(heads, layers, seed=rank)
    names, parameters = zip(*network.named_parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    for p in parameters:
        p.grad = torch.ones_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tensors = training_tensors(network, list(names), list(parameters), optimizer, None)
    local = [t.to_local() if hasattr(t, "to_local") else t for t in (*tensors["trainable"].values(),
             *(v for moments in tensors["optimizer"]["state"].values() for v in moments.values()))]
    shard = sum(t.nbytes for t in local) / MIB
    trim_heap()
    row = {"rank": rank, "parameters": sum(p.numel() for p in parameters), "shard_mib": shard, "baseline_mib": baseline,
           "before_save_mib": resident_mib()}
    sharded = ShardedCheckpointStore(Path(folder) / "sharded")
    row["sharded_peak_mib"], row["sharded_s"] = peak_during(lambda: sharded.save(1, tensors, {"iteration": 1}, {}))
    row["load_peak_mib"], row["load_s"] = peak_during(lambda: (sharded.verify(1), sharded.load_tensors(1, tensors)))
    row["sharded_bytes"] = sum(f.stat().st_size for f in sharded.path(1).iterdir())

    def full_gather_save():  # the one-file path train.parallel=fsdp took before sharded checkpoints
        state = {"trainable": {n: full_tensor(p.detach()).clone() for n, p in zip(names, parameters)},
                 "optimizer": get_optimizer_state_dict(network, optimizer, options=StateDictOptions(full_state_dict=True))}
        if rank == 0:
            CheckpointStore(Path(folder) / "one_file").save(1, state)
        torch.distributed.barrier()

    row["gather_peak_mib"], row["gather_s"] = peak_during(full_gather_save)
    for path in ("sharded", "gather"):
        row[f"{path}_increase_mib"] = row[f"{path}_peak_mib"] - row["before_save_mib"]
    row["sharded_over_shard_mib"] = row["sharded_peak_mib"] - shard - baseline
    queue.put(row)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def add_arguments(parser) -> None:
    parser.add_argument("--heads", type=int, default=2, help="attention heads of 128 (Qwen-Image has 24; default 2, width 256)")
    parser.add_argument("--layers", type=int, default=60, help="MMDiT blocks (Qwen-Image's 60 by default)")
    parser.add_argument("--processes", type=int, default=2, help="gloo processes the model is sharded over (default 2)")


def run(args, command: str, tag: str) -> Path:
    import torch.multiprocessing as mp

    from progrpo_fast.bench.results import markdown_table, write_results

    if min(args.heads, args.layers) < 1 or args.processes < 2:
        raise ValueError(f"--heads and --layers must be >= 1 and --processes >= 2, got {args.heads}, {args.layers} and {args.processes}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    with tempfile.TemporaryDirectory(prefix="progrpo-sharded-bench-") as folder:
        processes = [context.Process(target=_rank, args=(rank, args.processes, port, args.heads, args.layers, folder, queue))
                     for rank in range(args.processes)]
        for p in processes:
            p.start()
        rows = sorted((queue.get(timeout=3600) for _ in processes), key=lambda r: r["rank"])
        for p in processes:
            p.join()
    if any(p.exitcode != 0 for p in processes):
        raise RuntimeError(f"a benchmark process failed (exit codes {[p.exitcode for p in processes]})")
    model = (f"Qwen-Image transformer, {args.layers} of 60 blocks, {args.heads} of 24 heads (width {128 * args.heads}), "
             f"{rows[0]['parameters'] / 1e6:.0f}M parameters, fp32, weights + AdamW moments: {sum(r['shard_mib'] for r in rows):.0f} MiB")
    path = write_results(args.out, f"sharded_checkpoint_{tag}", rows, command,
                         {"description": DESCRIPTION, "model": model, "processes": args.processes, "backend": "gloo"})
    table = markdown_table(rows, COLUMNS)
    (args.out / f"sharded_checkpoint_{tag}.md").write_text(f"{model}, {args.processes} gloo processes\n\n{table}\n")
    print(table)
    return path
