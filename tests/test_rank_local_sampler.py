"""RankLocalGroupSampler: every prompt's group on one rank, consecutive; disjoint, seeded, resumable.

(a) simulated ranks (one sampler per rank, world sizes 1..4), (b) resume through state_dict, and
(c) two real gloo processes that take num_replicas/rank from torch.distributed and all_gather their batches.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch

from progrpo_fast.integrations import RankLocalGroupSampler

ROOT = Path(__file__).resolve().parents[1]


def make_world(dataset_size, world, **kwargs):
    return [RankLocalGroupSampler(dataset_size, num_replicas=world, rank=r, **kwargs) for r in range(world)]


def epoch_batches(samplers, epoch=None):
    """Per iteration, the list of every rank's batch (flat iteration, cut into batch_size pieces)."""
    per_rank = []
    for sampler in samplers:
        if epoch is not None:
            sampler.set_epoch(epoch)
        flat = list(sampler)
        assert len(flat) == len(sampler)
        per_rank.append([flat[i:i + sampler.batch_size] for i in range(0, len(flat), sampler.batch_size)])
    return [list(batches) for batches in zip(*per_rank)]


def check_iteration(rank_batches, prompts_per_rank, group_size):
    """Groups whole, consecutive and on one rank; equal batch sizes; prompts disjoint across ranks."""
    seen = set()
    for batch in rank_batches:
        assert len(batch) == prompts_per_rank * group_size
        groups = [batch[j * group_size:(j + 1) * group_size] for j in range(prompts_per_rank)]
        prompts = [g[0] for g in groups]
        assert all(g == [g[0]] * group_size for g in groups), f"a group is not consecutive: {batch}"
        assert len(set(prompts)) == prompts_per_rank, f"a prompt appears in two groups of one rank: {batch}"
        assert not seen & set(prompts), "a prompt is on two ranks in one iteration (its group was split)"
        seen |= set(prompts)
    return seen


# ---------------------------------------------------------------------------------------- (a) simulation
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [True, False])
def test_groups_stay_on_one_rank_and_prompts_are_used_once(world, drop_last):
    size, ppr, group = 53, 3, 4
    samplers = make_world(size, world, prompts_per_rank=ppr, group_size=group, seed=7, drop_last=drop_last)
    iterations = epoch_batches(samplers)
    full, rest = divmod(size, ppr * world)
    assert len(iterations) == full + (1 if rest and not drop_last else 0) == samplers[0].iterations_per_epoch
    used = []
    for rank_batches in iterations:
        used.append(check_iteration(rank_batches, ppr, group))
    flat = [p for prompts in used for p in prompts]
    if drop_last:
        assert len(flat) == len(set(flat)) == full * ppr * world  # each prompt at most once, rest dropped
    else:
        assert set(flat) == set(range(size))  # every prompt once, the last iteration padded from the start
        assert len(flat) - len(set(flat)) == (ppr * world - rest) % (ppr * world)


def test_order_is_seeded_and_epoch_dependent():
    def order(seed, epoch=0):
        return epoch_batches(make_world(40, 2, prompts_per_rank=2, group_size=3, seed=seed), epoch)

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1, epoch=0) != order(1, epoch=1)
    assert order(0, epoch=3) == order(3, epoch=0)  # the generator is seeded with seed + epoch
    # set_epoch on a live sampler changes its order too
    sampler = RankLocalGroupSampler(40, prompts_per_rank=2, group_size=3, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert first != second and sorted(set(first)) == sorted(set(second))


def test_no_shuffle_takes_dataset_order_and_matches_the_group_layout():
    samplers = make_world(8, 2, prompts_per_rank=2, group_size=2, shuffle=False)
    assert epoch_batches(samplers) == [[[0, 0, 1, 1], [2, 2, 3, 3]], [[4, 4, 5, 5], [6, 6, 7, 7]]]


def test_batches_and_batch_sampler_match_the_flat_iteration():
    make = lambda: RankLocalGroupSampler(30, prompts_per_rank=2, group_size=3, num_replicas=2, rank=1, seed=5)  # noqa: E731
    flat = list(make())
    batches = list(make().batches())
    view = make().batch_sampler
    assert len(view) == len(batches) == 7
    assert list(view) == batches == [flat[i:i + 6] for i in range(0, len(flat), 6)]
    loader = torch.utils.data.DataLoader(list(range(30)), batch_sampler=make().batch_sampler)
    assert [b.tolist() for b in loader] == batches
    loader = torch.utils.data.DataLoader(list(range(30)), sampler=make(), batch_size=6)
    assert [b.tolist() for b in loader] == batches


def test_infinite_iteration_rolls_over_epochs():
    sampler = RankLocalGroupSampler(10, prompts_per_rank=2, group_size=2, num_replicas=2, rank=0, seed=3, infinite=True)
    got = list(islice(sampler.batches(), 6))  # 2 iterations per epoch: epochs 0, 1, 2
    expected = [sampler.iteration_batch(e, t) for e in range(3) for t in range(2)]
    assert got == expected and sampler.epoch == 2
    with pytest.raises(TypeError, match="no length"):
        len(sampler)
    # Flow-GRPO's loop: set_epoch(step) before each draw gives that epoch's first iteration
    sampler = RankLocalGroupSampler(10, prompts_per_rank=2, group_size=2, num_replicas=2, rank=1, infinite=True)
    it = iter(sampler.batches())
    for step in range(4):
        sampler.set_epoch(step)
        assert next(it) == sampler.iteration_batch(step, 0)


def test_defaults_without_torch_distributed_and_dataset_objects():
    sampler = RankLocalGroupSampler(list(range(12)), prompts_per_rank=4, group_size=2)
    assert (sampler.num_replicas, sampler.rank, sampler.dataset_size) == (1, 0, 12)
    assert len(sampler) == 3 * 8


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts_per_rank=0, group_size=2), "prompts_per_rank"),
    (dict(prompts_per_rank=2, group_size=0), "group_size"),
    (dict(prompts_per_rank=2.0, group_size=2), "prompts_per_rank"),
    (dict(prompts_per_rank=2, group_size=2, num_replicas=0), "num_replicas"),
    (dict(prompts_per_rank=2, group_size=2, num_replicas=2, rank=2), "rank"),
    (dict(prompts_per_rank=2, group_size=2, num_replicas=2, rank=-1), "rank"),
    (dict(prompts_per_rank=2, group_size=2, rank=1), "rank"),
    (dict(prompts_per_rank=4, group_size=2, num_replicas=3, rank=0), "dataset too small"),
    (dict(prompts_per_rank=2, group_size=2, seed=None), "seed"),
])
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RankLocalGroupSampler(10, **kwargs)


def test_bad_dataset_raises():
    with pytest.raises(ValueError, match="dataset"):
        RankLocalGroupSampler(object(), prompts_per_rank=1, group_size=1)


# ---------------------------------------------------------------------------------------- (b) resume
@pytest.mark.parametrize("mode", ["flat", "batches"])
@pytest.mark.parametrize("consumed", [0, 1, 3, 4])
def test_resume_continues_with_the_exact_next_batch(mode, consumed):
    kwargs = dict(prompts_per_rank=2, group_size=3, num_replicas=2, rank=1, seed=11)
    size, epochs = 40, 3  # 10 iterations per epoch

    def run(sampler, start_epoch=0):
        out = []
        for epoch in range(start_epoch, epochs):
            sampler.set_epoch(epoch)
            if mode == "flat":
                flat = list(sampler)
                out += [flat[i:i + sampler.batch_size] for i in range(0, len(flat), sampler.batch_size)]
            else:
                out += list(sampler.batches())
        return out

    uninterrupted = run(RankLocalGroupSampler(size, **kwargs))
    first = RankLocalGroupSampler(size, **kwargs)
    first.set_epoch(1)  # stop inside epoch 1, after `consumed` of its batches
    per_epoch = first.iterations_per_epoch
    if mode == "flat":
        it = iter(first)
        for _ in range(consumed * first.batch_size):
            next(it)
    else:
        it = first.batches()
        for _ in range(consumed):
            next(it)
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (1, consumed)
    resumed = RankLocalGroupSampler(size, **kwargs)
    resumed.load_state_dict(state)
    rest = run(resumed, start_epoch=1)  # the loop's set_epoch(1) keeps the loaded position
    assert rest == uninterrupted[per_epoch + consumed:]


def test_flat_iterator_stopped_mid_batch_resumes_at_the_batch_start():
    sampler = RankLocalGroupSampler(20, prompts_per_rank=2, group_size=3, seed=4)
    it = iter(sampler)
    for _ in range(sampler.batch_size + 2):  # one batch and two indices of the next
        next(it)
    assert sampler.state_dict()["position"] == 1
    resumed = RankLocalGroupSampler(20, prompts_per_rank=2, group_size=3, seed=4)
    resumed.load_state_dict(sampler.state_dict())
    assert next(resumed.batches()) == sampler.iteration_batch(0, 1)


def test_load_state_dict_rejects_another_layout_and_accepts_a_bare_position():
    sampler = RankLocalGroupSampler(20, prompts_per_rank=2, group_size=2, num_replicas=2, rank=0)
    state = sampler.state_dict()
    for key, value in [("num_replicas", 4), ("seed", 1), ("dataset_size", 21), ("prompts_per_rank", 1)]:
        with pytest.raises(ValueError, match=key):
            sampler.load_state_dict({**state, key: value})
    with pytest.raises(ValueError, match="position"):
        sampler.load_state_dict({"epoch": 0, "position": 99})
    sampler.load_state_dict({"epoch": 2, "position": 3})  # e.g. from the training loop's step count
    assert next(sampler.batches()) == sampler.iteration_batch(2, 3)
    # the state is rank-independent: rank 1 can load rank 0's
    other = RankLocalGroupSampler(20, prompts_per_rank=2, group_size=2, num_replicas=2, rank=1)
    other.load_state_dict(sampler.state_dict())
    assert other.state_dict() == sampler.state_dict()


# ---------------------------------------------------------------------------------------- (c) real gloo
WORKER = r"""
import datetime, json, os, sys
import torch
import torch.distributed as dist
from progrpo_fast.integrations import RankLocalGroupSampler

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
sampler = RankLocalGroupSampler(37, prompts_per_rank=3, group_size=4, seed=5)  # world and rank from dist
gathered = []
for epoch in range(2):
    sampler.set_epoch(epoch)
    for batch in sampler.batches():
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, batch)
        gathered.append(everyone)
with open(sys.argv[1], "w") as f:
    json.dump({"rank": sampler.rank, "world": sampler.num_replicas, "per_epoch": sampler.iterations_per_epoch,
               "gathered": gathered}, f)
dist.destroy_process_group()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="no gloo")
def test_two_gloo_ranks_get_whole_disjoint_groups(tmp_path):
    world = 2
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / f"rank{r}.json")], cwd=ROOT,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    try:
        outputs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {r} failed:\n{out}"
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert [(res["rank"], res["world"]) for res in results] == [(0, 2), (1, 2)]
    assert results[0]["gathered"] == results[1]["gathered"]
    gathered = results[0]["gathered"]
    per_epoch = results[0]["per_epoch"]
    assert per_epoch == 37 // (3 * world) and len(gathered) == 2 * per_epoch
    for epoch in range(2):
        used = [check_iteration(rank_batches, 3, 4) for rank_batches in gathered[epoch * per_epoch:(epoch + 1) * per_epoch]]
        flat = [p for prompts in used for p in prompts]
        assert len(flat) == len(set(flat)) == per_epoch * 3 * world  # each prompt at most once per epoch
    # what the ranks got is what a simulated world computes
    assert gathered[:per_epoch] == epoch_batches(make_world(37, world, prompts_per_rank=3, group_size=4, seed=5))
