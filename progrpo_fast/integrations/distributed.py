"""A distributed prompt sampler that keeps each GRPO group on one rank.

Pro-GRPO prunes a prompt's group mid-denoise, which needs all ``group_size`` (G_max) copies of a
prompt on the same rank. Samplers in the style of Flow-GRPO's ``DistributedKRepeatSampler`` draw
the prompts of an iteration, repeat each ``k`` times, shuffle the repeats and split them over the
ranks, so a prompt's copies end up on different ranks. :class:`RankLocalGroupSampler` is a drop-in
for them that instead gives every rank ``prompts_per_rank`` whole groups per iteration.

Layout, for ``W`` ranks and ``P = prompts_per_rank``:

* epoch ``e`` orders the prompts by a permutation drawn from ``torch.Generator().manual_seed(seed + e)``
  (the identity when ``shuffle=False``); every rank computes the same permutation, no communication;
* iteration ``t`` takes the ``P * W`` prompts ``perm[t*P*W : (t+1)*P*W]``; rank ``r`` gets the slice
  ``[r*P : (r+1)*P]`` of them, so the ranks' prompts within an iteration are disjoint;
* each of a rank's prompts is repeated ``group_size`` times consecutively: the rank's batch is
  ``P * group_size`` dataset indices, rows ``[j*G : (j+1)*G]`` being prompt ``j``'s group.

An epoch has ``dataset_size // (P*W)`` iterations with ``drop_last=True`` (the default); with
``drop_last=False`` the last, partial iteration is completed with prompts from the start of the
epoch's permutation (never ones already in that iteration, as the dataset holds at least ``P*W``
prompts).

Iteration: iterating the sampler yields flat dataset indices (``DataLoader(ds, sampler=s,
batch_size=s.batch_size)``); :meth:`RankLocalGroupSampler.batches` and the
:attr:`RankLocalGroupSampler.batch_sampler` view yield one list per iteration
(``DataLoader(ds, batch_sampler=s.batch_sampler)``). With ``infinite=False`` an iterator runs to the
end of the current epoch (call :meth:`set_epoch` between epochs, as with ``DistributedSampler``);
with ``infinite=True`` it never stops and moves to the next epoch by itself, like Flow-GRPO's
sampler (whose loop calls ``set_epoch`` before each step; that works here too: a new epoch number
restarts at that epoch's first iteration).

Resuming: the sampler counts the iterations it has handed out in the current epoch.
:meth:`state_dict` returns that position and the epoch; the state is the same on every rank, so one
rank may save it and all load it. :meth:`load_state_dict` on a fresh sampler with the same layout
continues with the exact next batch. A ``DataLoader`` draws batches ahead of the loop (prefetching),
so there the sampler's count runs ahead of the batches the loop has consumed: build the state from
the loop's own step count instead (``{"epoch": e, "position": steps_done_in_epoch}``, the layout
keys being optional). The position is kept per whole batch: a flat iterator stopped mid-batch
resumes at the start of that batch.
"""
from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Sampler

__all__ = ["RankLocalGroupSampler"]

# state_dict keys that fix the order of the batches; a state saved under other values cannot resume here
_LAYOUT_KEYS = ("dataset_size", "prompts_per_rank", "group_size", "num_replicas", "seed", "shuffle", "drop_last")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _dataset_size(dataset: Any) -> int:
    if isinstance(dataset, bool):
        raise ValueError(f"dataset must be a dataset size (int) or a sized dataset, got {dataset!r}")
    if isinstance(dataset, int):
        size = dataset
    elif isinstance(dataset, Sized):
        size = len(dataset)
    else:
        raise ValueError(f"dataset must be a dataset size (int) or a sized dataset, got {type(dataset).__name__}")
    if size < 0:
        raise ValueError(f"dataset size must be >= 0, got {size}")
    return size


def _world_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``num_replicas``/``rank`` where given, else torch.distributed's when initialized, else 1/0."""
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if initialized else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialized else 0
    num_replicas = _positive_int("num_replicas", num_replicas)
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ValueError(f"rank must be an int, got {rank!r}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, num_replicas - 1] = [0, {num_replicas - 1}], got {rank}")
    return num_replicas, rank


class RankLocalGroupSampler(Sampler[int]):
    """Dataset indices for this rank, each prompt's ``group_size`` copies consecutive and on one rank.

    Args:
        dataset: the dataset (anything with ``len``) or its size.
        prompts_per_rank: distinct prompts per rank per iteration; the rank's batch is
            ``prompts_per_rank * group_size`` indices, the same on every rank.
        group_size: copies of each prompt (Pro-GRPO's G_max), kept consecutive on one rank.
        num_replicas: number of ranks; default torch.distributed's world size when initialized, else 1.
        rank: this rank; default torch.distributed's rank when initialized, else 0.
        seed: base seed; epoch ``e`` is ordered by a generator seeded with ``seed + e``. Must be the
            same on every rank.
        shuffle: permute the prompts each epoch (default); ``False`` takes them in dataset order.
        drop_last: drop the last, partial iteration of an epoch (default); ``False`` completes it with
            prompts from the start of the epoch's order.
        infinite: iterators never stop and move to the next epoch by themselves (Flow-GRPO style);
            ``len()`` is then undefined.
    """

    def __init__(
        self,
        dataset: Sized | int,
        *,
        prompts_per_rank: int,
        group_size: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        infinite: bool = False,
    ) -> None:
        self.dataset_size = _dataset_size(dataset)
        self.prompts_per_rank = _positive_int("prompts_per_rank", prompts_per_rank)
        self.group_size = _positive_int("group_size", group_size)
        self.num_replicas, self.rank = _world_defaults(num_replicas, rank)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.infinite = bool(infinite)
        if self.dataset_size < self.prompts_per_iteration:
            raise ValueError(
                f"dataset too small for one iteration: {self.dataset_size} prompts < prompts_per_rank * num_replicas = "
                f"{self.prompts_per_rank} * {self.num_replicas} = {self.prompts_per_iteration}")
        self.epoch = 0
        self.position = 0  # iterations of `epoch` handed out so far
        self._perm_cache: tuple[int, torch.Tensor] | None = None

    # ------------------------------------------------------------------ layout
    @property
    def prompts_per_iteration(self) -> int:
        """Distinct prompts over all ranks in one iteration: ``prompts_per_rank * num_replicas``."""
        return self.prompts_per_rank * self.num_replicas

    @property
    def batch_size(self) -> int:
        """Indices per rank per iteration: ``prompts_per_rank * group_size``."""
        return self.prompts_per_rank * self.group_size

    @property
    def iterations_per_epoch(self) -> int:
        full, rest = divmod(self.dataset_size, self.prompts_per_iteration)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        """Indices this rank gets in one epoch (undefined, a TypeError, when ``infinite``)."""
        if self.infinite:
            raise TypeError("an infinite RankLocalGroupSampler has no length; see iterations_per_epoch")
        return self.iterations_per_epoch * self.batch_size

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_cache is not None and self._perm_cache[0] == epoch:
            return self._perm_cache[1]
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            perm = torch.randperm(self.dataset_size, generator=generator)
        else:
            perm = torch.arange(self.dataset_size)
        self._perm_cache = (epoch, perm)
        return perm

    def iteration_prompts(self, epoch: int, iteration: int, rank: int | None = None) -> list[int]:
        """The distinct prompts (dataset indices) ``rank`` (default: this rank) gets in ``iteration`` of ``epoch``."""
        rank = self.rank if rank is None else rank
        if not 0 <= rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas - 1}], got {rank}")
        if not 0 <= iteration < self.iterations_per_epoch:
            raise ValueError(f"iteration must be in [0, {self.iterations_per_epoch - 1}], got {iteration}")
        perm = self._permutation(epoch)
        start = iteration * self.prompts_per_iteration
        chunk = perm[start:start + self.prompts_per_iteration]
        if len(chunk) < self.prompts_per_iteration:  # drop_last=False: complete from the epoch's start
            chunk = torch.cat([chunk, perm[:self.prompts_per_iteration - len(chunk)]])
        return chunk[rank * self.prompts_per_rank:(rank + 1) * self.prompts_per_rank].tolist()

    def iteration_batch(self, epoch: int, iteration: int, rank: int | None = None) -> list[int]:
        """The batch of ``iteration_prompts``, each prompt repeated ``group_size`` times consecutively."""
        return [p for p in self.iteration_prompts(epoch, iteration, rank) for _ in range(self.group_size)]

    # --------------------------------------------------------------- iteration
    def set_epoch(self, epoch: int) -> None:
        """Order the next batches by ``epoch``. A new epoch number starts at its first iteration; the
        current one keeps its position, so ``set_epoch(epoch)`` after :meth:`load_state_dict` resumes."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def _peek_batch(self) -> list[int] | None:
        """This rank's next batch (moving to the next epoch first if ``infinite`` and this one is done);
        None at the end of a finite epoch. The position is not advanced."""
        if self.position >= self.iterations_per_epoch:
            if not self.infinite:
                return None
            self.epoch += 1
            self.position = 0
        return self.iteration_batch(self.epoch, self.position)

    def _restart_if_done(self) -> None:
        # a finished epoch iterated again without set_epoch replays it (as DistributedSampler does)
        if not self.infinite and self.position >= self.iterations_per_epoch:
            self.position = 0

    def batches(self) -> Iterator[list[int]]:
        """One list of ``batch_size`` indices per iteration, from the current position on."""
        self._restart_if_done()
        while (batch := self._peek_batch()) is not None:
            self.position += 1  # counted when handed out: a state taken now resumes after this batch
            yield batch

    def __iter__(self) -> Iterator[int]:
        self._restart_if_done()
        while (batch := self._peek_batch()) is not None:
            at = (self.epoch, self.position)
            yield from batch[:-1]
            # counted with its last index: a state taken mid-batch resumes at the batch's start
            if (self.epoch, self.position) == at:  # unless set_epoch/load_state_dict moved it meanwhile
                self.position += 1
            yield batch[-1]

    @property
    def batch_sampler(self) -> _BatchView:
        """This sampler seen as a batch sampler (``DataLoader(ds, batch_sampler=s.batch_sampler)``); shares its state."""
        return _BatchView(self)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Epoch and position (iterations handed out in it), plus the layout they refer to."""
        state = {"epoch": self.epoch, "position": self.position}
        state.update({key: getattr(self, key) for key in _LAYOUT_KEYS})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`, or just ``{"epoch", "position"}``)."""
        for key in _LAYOUT_KEYS:
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"state_dict was saved with {key}={state[key]!r}, this sampler has {key}={getattr(self, key)!r}; "
                                 "the saved position does not apply to this layout")
        epoch, position = state["epoch"], state["position"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"state_dict epoch must be an int >= 0, got {epoch!r}")
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= self.iterations_per_epoch:
            raise ValueError(f"state_dict position must be an int in [0, {self.iterations_per_epoch}], got {position!r}")
        self.epoch, self.position = epoch, position


class _BatchView:
    """A batch-sampler view of a :class:`RankLocalGroupSampler`: iterates its :meth:`~RankLocalGroupSampler.batches`."""

    def __init__(self, sampler: RankLocalGroupSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        return self.sampler.batches()

    def __len__(self) -> int:
        if self.sampler.infinite:
            raise TypeError("an infinite RankLocalGroupSampler has no length; see iterations_per_epoch")
        return self.sampler.iterations_per_epoch
