"""Sharded checkpoints of train.parallel=fsdp runs, written with torch.distributed.checkpoint (DCP):
each rank writes its own shards of the weights, AdamW state and EMA; nothing is gathered.

On disk, per checkpoint, a folder ``step-{step:08d}.dcp`` holding

- DCP's files: ``__{rank}_0.distcp`` (each rank's shards) and ``.metadata`` (the layout);
- ``trainer.pt``: what the ranks share (iteration, config, trainable parameter names, whether an
  EMA is kept, the number of processes), written by rank 0;
- ``rank-{rank:05d}.pt``: each rank's own RNG and pruning-probe state (each rank samples its own
  prompts and fits its own probe);
- ``MANIFEST.sha256``: the sha256 of every other file (``sha256sum -c`` reads it), the commit record.

Every rank writes into one hidden ``.step-{step:08d}.dcp.tmp-{id}`` folder beside it and hashes its
own files; rank 0 gathers the digests, writes the manifest, fsyncs and renames the folder into place
(atomic), so a visible checkpoint is whole and the next save deletes what a crash left hidden.
Loading verifies every file first, the ranks sharing the reading, and raises CorruptCheckpointError
naming the file.

Resuming with another number of processes works: DCP reshards the weights, AdamW state and EMA onto
the loading run's layout (whole tensors in one process), and rank r restores the RNG and probe of
saved rank r mod (saved processes). Sampling is keyed by (seed, iteration, rank), so only the probes'
fitted state depends on that choice. Runs with train.parallel=ddp keep the one-file format of
train.checkpoint; ``RunCheckpoints`` saves a run's format and resumes from the newest checkpoint of
either.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path

import torch

from progrpo_fast.train.checkpoint import (
    CheckpointStore,
    CorruptCheckpointError,
    ForeignCheckpointError,
    _fsync_directory,
    _HashingWriter,
    _sha256_of,
    capture_rng_state,
    check_keep_last,
    check_step,
    describe_owner,
)
from progrpo_fast.train.resume_check import check_resume

__all__ = ["RunCheckpoints", "ShardedCheckpointStore", "load_trainer", "newest_checkpoint", "save_trainer", "training_tensors"]

logger = logging.getLogger(__name__)

SHARDED_NAME = re.compile(r"^step-(\d{8,})\.dcp$")
TEMPORARY_INFIX = ".dcp.tmp-"
MANIFEST = "MANIFEST.sha256"
SHARED_FILE = "trainer.pt"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


# ------------------------------------------------------------------------------- process group
def distributed() -> bool:
    """Whether a default process group is up."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def process_group() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_gather(value) -> list:
    """``value`` of every rank (picklable), in rank order."""
    rank, world = process_group()
    if world == 1:
        return [value]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def broadcast(value):
    """Rank 0's ``value`` on every rank."""
    if process_group()[1] == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def quiet_single_process():
    """Silences DCP's warning that it saves or loads in one process (expected without a process group)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CorruptCheckpointError(f"{path} matches its checksum but torch.load failed: {err}") from err


# ------------------------------------------------------------------------------------- the store
class ShardedCheckpointStore:
    """``save``, ``verify``, ``load_tensors`` and ``steps`` over the ``step-*.dcp`` checkpoints in
    ``directory``, keeping the ``keep_last`` newest (by step). Every rank of the process group
    calls ``save``, ``verify`` and ``load_tensors`` (they are collectives); no process group: one
    process does it all."""

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3):
        check_keep_last(keep_last)
        self.directory, self.keep_last = Path(directory), keep_last

    def path(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}.dcp"

    def steps(self) -> list[int]:
        """Steps of the checkpoint folders present, ascending (verified or not)."""
        if not self.directory.is_dir():
            return []
        matches = (SHARDED_NAME.match(p.name) for p in self.directory.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in matches if m)

    # ------------------------------------------------------------------ writing
    def save(self, step: int, tensors: dict, shared: dict, own: dict) -> Path:
        """Writes the checkpoint of ``step``: ``tensors`` (nested dicts of tensors, DTensor shards
        included) with DCP, rank 0's ``shared`` and each rank's ``own`` state with torch.save; then
        commits it and prunes the oldest beyond ``keep_last``, never this one. Returns its path."""
        check_step(step)
        rank, world = process_group()
        target = self.path(step)
        temporary = self._temporary_folder(target)
        try:
            digests, failure = self._write_rank(temporary, tensors, {**shared, "world_size": world}, own), None
        except Exception as err:
            digests, failure = f"rank {rank}: {type(err).__name__}: {err}", err
        reports = all_gather(digests)
        errors = [report for report in reports if isinstance(report, str)]
        if not errors and rank == 0:
            try:
                self._commit(temporary, target, {name: digest for report in reports for name, digest in report.items()})
                self._prune(keep=step)
            except Exception as err:
                errors, failure = [f"rank 0: {type(err).__name__}: {err}"], err
        errors = broadcast(errors)
        if errors:
            if rank == 0:
                shutil.rmtree(temporary, ignore_errors=True)
            if failure is not None:
                raise failure
            raise RuntimeError(f"saving checkpoint {target} failed on another rank: {'; '.join(errors)}")
        return target

    def _temporary_folder(self, target: Path) -> Path:
        """The hidden folder every rank writes ``target`` into, made by rank 0 (which first deletes
        what interrupted saves left)."""
        rank, _ = process_group()
        temporary = None
        if rank == 0:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._remove_temporaries()
                temporary = self.directory / f".{target.name}.tmp-{uuid.uuid4().hex}"
                temporary.mkdir()
            except OSError:
                broadcast(None)
                raise
        temporary = broadcast(None if temporary is None else str(temporary))
        if temporary is None:
            raise RuntimeError(f"rank 0 could not create a folder for checkpoint {target} (its error says why)")
        return Path(temporary)

    def _write_rank(self, temporary: Path, tensors: dict, shared: dict, own: dict) -> dict[str, str]:
        """This rank's part of a save (DCP's collective write included); the sha256 of each file
        it wrote, by name."""
        import torch.distributed.checkpoint as dcp

        rank, _ = process_group()
        with quiet_single_process():
            metadata = dcp.save(tensors, storage_writer=dcp.FileSystemWriter(temporary, sync_files=True), no_dist=not distributed())
        written = {info.relative_path for info in metadata.storage_data.values()}  # every rank's data files
        digests = {name: _sha256_of(temporary / name) for name in written if name.startswith(f"__{rank}_")}
        digests[rank_file(rank)] = self._write_file(temporary / rank_file(rank), own)
        if rank == 0:
            digests[SHARED_FILE] = self._write_file(temporary / SHARED_FILE, shared)
        return digests

    @staticmethod
    def _write_file(path: Path, state: dict) -> str:
        """torch.save of ``state`` to ``path``, fsynced; returns its sha256."""
        with open(path, "xb") as f:
            sink = _HashingWriter(f)
            torch.save(state, sink)
            f.flush()
            os.fsync(f.fileno())
        return sink.sha256.hexdigest()

    def _commit(self, temporary: Path, target: Path, digests: dict[str, str]) -> None:
        """Hashes what the ranks did not (DCP's .metadata), writes the manifest and renames the
        folder into place (a folder of the same step already there is deleted first)."""
        for path in sorted(temporary.iterdir()):
            if path.name not in digests:
                digests[path.name] = _sha256_of(path)
        with open(temporary / MANIFEST, "x") as f:
            f.writelines(f"{digest}  {name}\n" for name, digest in sorted(digests.items()))
            f.flush()
            os.fsync(f.fileno())
        _fsync_directory(temporary)
        if target.exists():
            self._remove(target)
        os.replace(temporary, target)
        _fsync_directory(self.directory)

    def _remove(self, path: Path) -> None:
        """Deletes a checkpoint folder: hidden first (a rename), so a crash mid-deletion leaves no
        visible, partial checkpoint."""
        hidden = self.directory / f".{path.name}.tmp-{uuid.uuid4().hex}"
        os.replace(path, hidden)
        shutil.rmtree(hidden, ignore_errors=True)

    def _remove_temporaries(self) -> None:
        """Deletes what interrupted saves and deletions left behind."""
        for leftover in self.directory.glob(f".step-*{TEMPORARY_INFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _prune(self, keep: int) -> None:
        others = [s for s in self.steps() if s != keep]
        for step in others[: max(0, len(others) - (self.keep_last - 1))]:
            self._remove(self.path(step))

    # ------------------------------------------------------------------ reading
    def verify(self, step: int) -> tuple[dict, dict]:
        """Checks every file of ``step``'s checkpoint against its manifest (each rank reads its
        share) and returns (the shared state, this rank's own state: that of saved rank r mod the
        saved number of processes). CorruptCheckpointError, the same on every rank, says what is
        wrong."""
        path = self.path(step)
        if not path.is_dir():
            available = ", ".join(map(str, self.steps())) or "none"
            raise FileNotFoundError(f"no checkpoint {path} (steps present: {available})")
        rank, world = process_group()
        try:
            entries = self._manifest(path)
            problem = next(filter(None, (self._check(path, name, digest) for name, digest in entries[rank::world])), None)
        except CorruptCheckpointError as err:
            problem = str(err)
        problems = [p for p in all_gather(problem) if p]
        if problems:
            raise CorruptCheckpointError(problems[0])
        shared = _load(path / SHARED_FILE)
        return shared, _load(path / rank_file(rank % shared["world_size"]))

    @staticmethod
    def _manifest(path: Path) -> list[tuple[str, str]]:
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise CorruptCheckpointError(f"checkpoint {path} has no {MANIFEST}: its save did not complete")
        entries = []
        for line in manifest.read_text(encoding="ascii", errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            if not re.fullmatch(r"[0-9a-f]{64}", digest) or not name or "/" in name:
                raise CorruptCheckpointError(f"checkpoint {path}: {MANIFEST} has a malformed line {line!r}")
            entries.append((name, digest))
        missing = sorted({SHARED_FILE, ".metadata"} - {name for name, _ in entries})
        if missing:
            raise CorruptCheckpointError(f"checkpoint {path}: {MANIFEST} does not list {' or '.join(missing)}")
        return entries

    @staticmethod
    def _check(path: Path, name: str, expected: str) -> str | None:
        """What is wrong with file ``name`` of checkpoint ``path``; None when it matches."""
        file = path / name
        if not file.is_file():
            return f"checkpoint {path}: {name}, listed in {MANIFEST}, is missing"
        actual = _sha256_of(file)
        if actual != expected:
            return (f"checkpoint {path} is corrupted: sha256 {actual} of {name} ({file.stat().st_size} bytes) does not match "
                    f"{expected} recorded in {MANIFEST} (truncated or modified after saving)")
        return None

    def load_tensors(self, step: int, tensors: dict) -> None:
        """Loads ``step``'s tensors into ``tensors`` (nested dicts of tensors, DTensors included) in
        place, resharded onto their layout. Verify first."""
        import torch.distributed.checkpoint as dcp

        with quiet_single_process():
            dcp.load(tensors, storage_reader=dcp.FileSystemReader(self.path(step)), no_dist=not distributed())

    def read_tensors(self, step: int, prefix: str, dtype: torch.dtype | None = None, chunk_bytes: int = 1 << 30) -> dict:
        """The whole tensors saved under ``prefix`` (e.g. "trainable") by name, read by one process
        without a process group, ``chunk_bytes`` at a time (cast to ``dtype`` as they come)."""
        import torch.distributed.checkpoint as dcp

        reader = dcp.FileSystemReader(self.path(step))
        layout = reader.read_metadata().state_dict_metadata
        start = prefix + "."
        keys = [key for key, meta in layout.items() if key.startswith(start) and hasattr(meta, "size")]
        out, chunk, size = {}, {}, 0
        for index, key in enumerate(keys):
            meta = layout[key]
            chunk[key] = torch.empty(meta.size, dtype=meta.properties.dtype)
            size += chunk[key].nbytes
            if size >= chunk_bytes or index == len(keys) - 1:
                with quiet_single_process():
                    dcp.load(chunk, storage_reader=dcp.FileSystemReader(self.path(step)), no_dist=True)
                out.update({key[len(start):]: t if dtype is None else t.to(dtype) for key, t in chunk.items()})
                chunk, size = {}, 0
        return out


# ----------------------------------------------------------------------------- trainer state
def training_tensors(network, names: list[str], parameters: list, optimizer, ema: list | None) -> dict:
    """What DCP saves of a training state, as the ranks hold it (DTensor shards under FSDP, whole
    tensors otherwise): the trainable ``parameters`` and their ``ema`` by name, the AdamW state by
    parameter name (torch's get_optimizer_state_dict). Loading into it updates them in place."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    tensors = {"trainable": {name: p.detach() for name, p in zip(names, parameters)},
               "optimizer": get_optimizer_state_dict(network, optimizer)}
    if ema is not None:
        tensors["ema"] = dict(zip(names, ema))
    return tensors


def save_trainer(store: ShardedCheckpointStore, trainer, run_id: str | None = None) -> Path:
    """Saves the trainer's state at its iteration, sharded, as a checkpoint of run ``run_id``
    (every rank calls it)."""
    shared = {"iteration": trainer.iteration, "config": trainer.config.to_dict(), "trainable": list(trainer.parameter_names),
              "ema": trainer.ema is not None, "run_id": run_id}
    if hasattr(trainer.network, "reshard"):  # FSDP2's root keeps its parameters gathered after a forward without backward
        trainer.network.reshard()             # (an evaluation, the divergence check): the state is of the sharded ones
    own = {"rng": capture_rng_state(), "probe": trainer.proxy.state_dict()}
    tensors = training_tensors(trainer.network, trainer.parameter_names, trainer.parameters, trainer.optimizer, trainer.ema)
    return store.save(trainer.iteration, tensors, shared, own)


def load_trainer(store: ShardedCheckpointStore, step: int, trainer, run_id: str | None = None, config=None) -> None:
    """Verifies ``step``'s checkpoint and restores the trainer from it (every rank calls it):
    ForeignCheckpointError when ``run_id`` is given and the checkpoint is another run's; with
    ``config``, train.resume_check.check_resume first (its notes printed)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    shared, own = store.verify(step)
    if run_id is not None and shared.get("run_id") != run_id:
        raise ForeignCheckpointError(f"checkpoint {store.path(step)} is one of {describe_owner(shared.get('run_id'))}, "
                                     f"not of this run {run_id}: not loaded")
    if config is not None:
        print_resume_notes(check_resume({"config": shared["config"], "ema": True if shared["ema"] else None, "probe": own["probe"]},
                                        config, str(store.path(step))), run_id, step)
    if shared["trainable"] != trainer.parameter_names:
        raise ValueError(f"checkpoint {store.path(step)}: its trainable parameters do not match this model/config "
                         "(different LoRA targets or rank, or train.lora?)")
    saved_ema = trainer.fresh_ema() if shared["ema"] else None  # DCP loads the saved EMA into these, laid out like the weights
    tensors = training_tensors(trainer.network, trainer.parameter_names, trainer.parameters, trainer.optimizer, saved_ema)
    store.load_tensors(step, tensors)
    set_optimizer_state_dict(trainer.network, trainer.optimizer, tensors["optimizer"])
    trainer.ema = trainer.resumed_ema(saved_ema)
    trainer.restore_host_state(own["probe"], own["rng"], shared["iteration"])


def print_resume_notes(notes: list[str], run_id: str | None, step: int) -> None:
    """One line listing the config changes a resumed run continues with (none: nothing)."""
    if notes:
        print(f"[progrpo-fast] --resume: continuing run {run_id} from iteration {step} with changes: {'; '.join(notes)}")


# ------------------------------------------------------------------------------- a run's folder
def checkpoints_in(directory: Path) -> list[tuple[int, bool]]:
    """(step, sharded) of every checkpoint in ``directory`` of either format, newest first."""
    return sorted([(s, False) for s in CheckpointStore(directory).steps()] + [(s, True) for s in ShardedCheckpointStore(directory).steps()],
                  reverse=True)


def newest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``directory`` of either format that verifies (one process, no
    process group); each newer one that does not is skipped with a logged warning."""
    directory = Path(directory)
    files, sharded = CheckpointStore(directory), ShardedCheckpointStore(directory)
    for step, is_sharded in checkpoints_in(directory):
        try:
            if is_sharded:
                sharded.verify(step)
                return sharded.path(step)
            files.load(step)
            return files.path(step)
        except CorruptCheckpointError as err:
            logger.warning("%s; falling back to an earlier checkpoint", err)
    return None


class RunCheckpoints:
    """A training run's checkpoints: ``save()`` writes the trainer's state in the run's format
    (sharded with train.parallel=fsdp, one file by rank 0 otherwise) as run ``run_id``'s;
    ``restore(config)`` loads the newest of this run that verifies, of either format, after
    comparing its config with ``config`` (train.resume_check). Every rank calls both."""

    def __init__(self, directory: str | os.PathLike, keep_last: int, trainer, run_id: str | None = None):
        self.trainer, self.run_id = trainer, run_id
        self.files = CheckpointStore(directory, keep_last, run_id=run_id)
        self.sharded = ShardedCheckpointStore(directory, keep_last)
        self.writes_sharded = trainer.config.train.parallel == "fsdp"
        self.directory = Path(directory)

    def save(self) -> Path | None:
        """Saves at the trainer's iteration; the path (None on ranks that write nothing)."""
        if self.writes_sharded:
            return save_trainer(self.sharded, self.trainer, self.run_id)
        if self.trainer.dist.rank == 0:
            return self.files.save(self.trainer.iteration, self.trainer.state_dict())
        return None

    def restore(self, config=None) -> int | None:
        """The step restored (the newest checkpoint of this run that verifies; the run's own format
        first on a tie), None when there is none; newer ones that do not verify, or are another
        run's, are skipped with a warning. With ``config``: check_resume before loading."""
        candidates = broadcast(sorted(checkpoints_in(self.directory), key=lambda c: (c[0], c[1] == self.writes_sharded), reverse=True))
        for step, is_sharded in candidates:
            try:
                if is_sharded:
                    load_trainer(self.sharded, step, self.trainer, self.run_id, config)
                else:
                    state = self.files.load(step)
                    if config is not None:
                        print_resume_notes(check_resume(state, config, str(self.files.path(step))), self.run_id, step)
                    self.trainer.load_state_dict(state)
                return step
            except (CorruptCheckpointError, ForeignCheckpointError) as err:
                logger.warning("%s; falling back to an earlier checkpoint", err)
        return None
