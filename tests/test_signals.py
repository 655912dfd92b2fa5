"""A real ``python -m progrpo_fast train`` process stopped by signals: SIGTERM (a scheduler's
preemption) and SIGINT finish the iteration, save a checkpoint and summary.json and exit 143 / 130;
a second signal exits at once; kill -9 loses nothing beyond the last checkpoint. Each run then
resumes with no iteration logged twice, and a second trainer on a running one's folder is refused.
Under torchrun (2 processes on gloo) the ranks stop at the same iteration when one of them is
signalled, and rank 0's refusal of a folder reaches the other rank."""
import json
import os
import signal
import socket

import torch
import torch.multiprocessing as mp
from cli_runs import logged_iterations, start_train, tiny_config, wait_for_iterations

from progrpo_fast.train.checkpoint import CheckpointStore
from progrpo_fast.train.run import train
from progrpo_fast.train.run_folder import RunFolderError

FOREVER = "train.iterations=100000"


def resume_to(out_dir, iterations: int) -> dict:
    """Resumes the tiny run in ``out_dir`` in this process up to ``iterations``."""
    return train(tiny_config(out_dir, f"train.iterations={iterations}"), resume=True)


def test_sigterm_checkpoints_and_resume_continues_and_a_second_trainer_is_refused(tmp_path):
    first = start_train(tmp_path, FOREVER, "log.checkpoint_every=1000")
    wait_for_iterations(first, tmp_path, 2)
    second = start_train(tmp_path, "train.iterations=2", flags=["--resume"])
    out, err = second.communicate(timeout=240)
    assert second.returncode == 2, err
    assert f"is in use by another trainer: pid {first.pid} on host {socket.gethostname()}" in err
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=240)
    assert first.returncode == 143, err
    assert "SIGTERM: stopping after this iteration" in err and "stopped by SIGTERM at iteration" in out
    reached = len(logged_iterations(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM" and summary["iterations"] == reached
    assert (tmp_path / "reward_curve.png").is_file()
    assert CheckpointStore(tmp_path / "checkpoints").steps() == [reached]  # checkpoint_every=1000: the stop's only
    resumed = resume_to(tmp_path, reached + 2)
    assert [h["iteration"] for h in resumed["history"]] == [reached, reached + 1] and "stopped_by" not in resumed
    assert logged_iterations(tmp_path) == list(range(reached + 2))


def test_sigint_exits_130_with_a_checkpoint_and_a_second_sigint_exits_at_once(tmp_path):
    graceful, hasty = tmp_path / "graceful", tmp_path / "hasty"
    first = start_train(graceful, FOREVER, "log.checkpoint_every=1000")
    wait_for_iterations(first, graceful, 1)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=240)
    assert first.returncode == 130, err
    assert "KeyboardInterrupt" not in err
    reached = len(logged_iterations(graceful))
    assert json.loads((graceful / "summary.json").read_text())["stopped_by"] == "SIGINT"
    assert CheckpointStore(graceful / "checkpoints").latest()[0] == reached

    # slower iterations (32 px, 8 prompts) so that the second signal lands inside the iteration
    second = start_train(hasty, FOREVER, "log.checkpoint_every=1000", "model.resolution=32", "sampler.prompts_per_iteration=8")
    wait_for_iterations(second, hasty, 1)
    second.send_signal(signal.SIGINT)
    for line in second.stderr:
        if "SIGINT: stopping after this iteration" in line:
            break
    second.send_signal(signal.SIGINT)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 130, err
    assert "SIGINT again: exiting at once" in err
    assert not (hasty / "summary.json").exists() and not list((hasty / "checkpoints").iterdir())


def test_kill_9_loses_only_the_iterations_after_the_last_checkpoint(tmp_path):
    first = start_train(tmp_path, FOREVER, "log.checkpoint_every=2")
    wait_for_iterations(first, tmp_path, 5)
    first.kill()
    first.communicate(timeout=60)
    saved = CheckpointStore(tmp_path / "checkpoints").latest()[0]
    assert saved >= 4 and saved % 2 == 0
    resumed = resume_to(tmp_path, saved + 1)  # the OS released the dead trainer's lock
    assert [h["iteration"] for h in resumed["history"]] == [saved]
    assert logged_iterations(tmp_path) == list(range(saved + 1))


def _rank(rank, port, out_dir, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        summary = train(tiny_config(out_dir, FOREVER, "log.checkpoint_every=1000"))
        queue.put((rank, summary["iterations"], summary.get("stopped_by")))
    except RunFolderError as err:
        queue.put((rank, None, str(err)))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def start_two_ranks(out_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(rank, port, out_dir, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    return procs, queue


def finish(procs, queue) -> list[tuple]:
    results = sorted(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    return results


def test_under_torchrun_a_signal_to_one_rank_stops_both_at_the_same_iteration(tmp_path):
    refused = tmp_path / "refused"
    refused.mkdir()
    (refused / "log.jsonl").write_text("")  # another run's file: rank 0 refuses, rank 1 must hear of it
    (_, _, error0), (_, _, error1) = finish(*start_two_ranks(refused))
    assert "holds files of a run without run.json" in error0 and error1.startswith("rank 0 could not claim log.out_dir")

    procs, queue = start_two_ranks(tmp_path / "run")
    wait_for_iterations(procs[0], tmp_path / "run", 2)
    os.kill(procs[1].pid, signal.SIGTERM)
    (_, reached0, stop0), (_, reached1, stop1) = finish(procs, queue)
    assert reached0 == reached1 and stop0 == stop1 == "SIGTERM"
    assert logged_iterations(tmp_path / "run") == list(range(reached0))
    assert CheckpointStore(tmp_path / "run" / "checkpoints").steps() == [reached0]
