"""Checkpoints: atomic, verified, keep-last-N; plus capture/restore of every RNG a run uses.

On disk, per checkpoint: ``step-{step:08d}.pt`` (torch.save of the state dict) and
``step-{step:08d}.pt.sha256`` (its digest, ``sha256sum`` format). Each is written to a hidden
temporary file in the same folder, fsynced and renamed into place (os.replace is atomic), data
first. The sidecar is the commit record: a data file without one is an interrupted save, and a
crash before a rename leaves only a hidden temporary file, which no reader looks at (the next
save deletes it). So a visible, verified checkpoint is always whole. One writer per folder
(rank 0, holding the run folder's lock) is assumed.

A store of a run (``run_id`` given) writes the run id into each state, loads only its own run's
checkpoints and prunes by validity and iteration: after a save it keeps the ``keep_last`` newest
checkpoints of this run that verify and removes every other one (corrupt, checksum-less or of
another run, older or newer), so an invalid checkpoint never outlives a newer valid one.

States must hold tensors and plain Python containers and scalars only: they are read back with
``torch.load(weights_only=True)``; ``capture_rng_state`` keeps to that.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch

from progrpo_fast.ops._checks import is_int

__all__ = ["CheckpointStore", "CorruptCheckpointError", "DiskFullError", "ForeignCheckpointError", "capture_rng_state",
           "raise_if_disk_full", "restore_rng_state"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^step-(\d{8,})\.pt$")
TEMPORARY_PREFIX = ".tmp-"
CHUNK_BYTES = 1 << 20


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that is incomplete, modified or unreadable."""


class DiskFullError(OSError):
    """A write that failed because its filesystem is full (ENOSPC) or over quota (EDQUOT)."""


def raise_if_disk_full(err: BaseException, path: Path, what: str) -> None:
    """DiskFullError naming ``path`` and the free space when ``err`` or an exception it chains
    (torch.save reports a full disk as "unexpected pos ...", caused by the OSError) is ENOSPC/EDQUOT."""
    seen = err
    while seen is not None and not (isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT)):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there now"
    except OSError:
        free = "free space unknown"
    raise DiskFullError(seen.errno, f"no space left on the device while writing {what} {path} ({free}); what was written before is "
                                    "intact: free disk space or point log.out_dir at a larger disk, then continue with --resume") from err


class ForeignCheckpointError(RuntimeError):
    """A valid checkpoint of another run (or of none: written before run ids)."""


def check_keep_last(keep_last) -> None:
    if not is_int(keep_last) or keep_last < 1:
        raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")


def check_step(step) -> None:
    if not is_int(step) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")


class _HashingWriter:
    """File-like sink for torch.save that hashes the bytes as they are written."""

    def __init__(self, file):
        self.file, self.sha256 = file, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _fsync_directory(directory: Path) -> None:
    """Makes renames in ``directory`` durable (a no-op where directories cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointStore:
    """``save(step, state)``, ``load(step)``, ``latest()`` over the checkpoints in ``directory``,
    keeping the ``keep_last`` newest valid ones (of run ``run_id`` when given) on disk."""

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3, run_id: str | None = None):
        check_keep_last(keep_last)
        self.directory, self.keep_last, self.run_id = Path(directory), keep_last, run_id
        self._verified: dict[str, tuple[tuple[int, int], str | None]] = {}  # name -> ((size, mtime_ns), run id)

    def path(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}.pt"

    @staticmethod
    def checksum_path(path: Path) -> Path:
        return path.with_name(path.name + ".sha256")

    def steps(self) -> list[int]:
        """Steps of the checkpoint data files present, ascending (verified or not)."""
        if not self.directory.is_dir():
            return []
        matches = (CHECKPOINT_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in matches if m)

    # ------------------------------------------------------------------ writing
    def _write_atomically(self, target: Path, write):
        """Runs ``write(file)`` on a temporary file beside ``target``, fsyncs it and renames it onto
        ``target``; returns what ``write`` returned. The temporary file never survives an error."""
        temporary = target.with_name(f"{TEMPORARY_PREFIX}{target.name}.{os.getpid()}.{uuid.uuid4().hex}")
        try:
            with open(temporary, "xb") as f:
                result = write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, target)
        except BaseException as err:
            temporary.unlink(missing_ok=True)
            raise_if_disk_full(err, target, "the checkpoint file")
            raise
        _fsync_directory(self.directory)
        return result

    def save(self, step: int, state: dict) -> Path:
        """Writes the checkpoint of ``step`` (data, then its sha256 sidecar, each atomically; the
        run id added to the state) and prunes (see the module docstring), never the one just
        written. Returns its path."""
        check_step(step)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        path = self.path(step)
        if self.run_id is not None:
            state = {**state, "run_id": self.run_id}

        def write_state(f) -> str:
            sink = _HashingWriter(f)
            torch.save(state, sink)
            return sink.sha256.hexdigest()

        digest = self._write_atomically(path, write_state)
        self._write_atomically(self.checksum_path(path), lambda f: f.write(f"{digest}  {path.name}\n".encode()))
        self._remember(path, state.get("run_id"))
        self._prune(keep=step)
        return path

    def _remove_temporaries(self) -> None:
        """Deletes what interrupted saves left behind."""
        for leftover in self.directory.glob(f"{TEMPORARY_PREFIX}*"):
            leftover.unlink(missing_ok=True)

    def _prune(self, keep: int) -> None:
        """Keeps ``keep`` and the keep_last - 1 newest other valid checkpoints of this run."""
        kept = 1
        for step in reversed([s for s in self.steps() if s != keep]):
            path, reason = self.path(step), None
            try:
                owner = self.owner(step)
                if self.run_id is not None and owner != self.run_id:
                    reason = f"it is a checkpoint of {describe_owner(owner)}, not of this run {self.run_id}"
                elif kept < self.keep_last:
                    kept += 1
                    continue
            except CorruptCheckpointError as err:
                reason = str(err)
            self.checksum_path(path).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            self._verified.pop(path.name, None)
            if reason:
                logger.warning("removed checkpoint %s: %s", path, reason)
        for sidecar in self.directory.glob("step-*.pt.sha256"):
            if not sidecar.with_suffix("").exists():
                sidecar.unlink(missing_ok=True)

    # ------------------------------------------------------------------ reading
    def _read(self, step: int, mmap: bool = False) -> dict:
        """The state saved at ``step`` after checking its digest (``mmap``: tensors mapped, not read)."""
        path = self.path(step)
        if not path.is_file():
            available = ", ".join(map(str, self.steps())) or "none"
            raise FileNotFoundError(f"no checkpoint {path} (steps present: {available})")
        sidecar = self.checksum_path(path)
        if not sidecar.is_file():
            raise CorruptCheckpointError(f"checkpoint {path} has no checksum file {sidecar.name}: its save was interrupted")
        expected = sidecar.read_text(encoding="ascii", errors="replace").split(maxsplit=1)
        if not expected or not re.fullmatch(r"[0-9a-f]{64}", expected[0]):
            raise CorruptCheckpointError(f"checkpoint {path}: checksum file {sidecar.name} holds no sha256 digest")
        actual = _sha256_of(path)
        if actual != expected[0]:
            raise CorruptCheckpointError(
                f"checkpoint {path} is corrupted: sha256 {actual} of its {path.stat().st_size} bytes does not match "
                f"{expected[0]} recorded in {sidecar.name} (truncated or modified after saving)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as err:
            raise CorruptCheckpointError(f"checkpoint {path} matches its checksum but torch.load failed: {err}") from err
        self._remember(path, state.get("run_id") if isinstance(state, dict) else None)
        return state

    def _remember(self, path: Path, run_id: str | None) -> None:
        """Records that ``path``, as it is now, verified and belongs to ``run_id``."""
        stat = path.stat()
        self._verified[path.name] = ((stat.st_size, stat.st_mtime_ns), run_id)

    def owner(self, step: int) -> str | None:
        """The run id of the checkpoint of ``step`` (None: written before run ids), verified once
        per store and file version; CorruptCheckpointError when it does not verify."""
        path = self.path(step)
        stat = path.stat()
        known = self._verified.get(path.name)
        if known is None or known[0] != (stat.st_size, stat.st_mtime_ns):
            self._read(step, mmap=True)
            known = self._verified[path.name]
        return known[1]

    def load(self, step: int) -> dict:
        """The state saved at ``step``, verified; CorruptCheckpointError says what is wrong,
        ForeignCheckpointError names the run it belongs to when that is not this store's run."""
        state = self._read(step)
        owner = state.get("run_id")
        if self.run_id is not None and owner != self.run_id:
            raise ForeignCheckpointError(f"checkpoint {self.path(step)} is a checkpoint of {describe_owner(owner)}, "
                                         f"not of this run {self.run_id}: not loaded")
        return state

    def latest(self) -> tuple[int, dict] | None:
        """(step, state) of the newest checkpoint that verifies (and is this run's), None when
        there is none; every newer one that does not is skipped with a logged warning saying why."""
        for step in reversed(self.steps()):
            try:
                return step, self.load(step)
            except (CorruptCheckpointError, ForeignCheckpointError) as err:
                logger.warning("%s; falling back to an earlier checkpoint", err)
        return None


def describe_owner(run_id: str | None) -> str:
    return "no run (written before run ids)" if run_id is None else f"run {run_id}"


# ---------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict:
    """The state of every RNG a run draws from: torch CPU (and each CUDA device when available),
    Python ``random`` and NumPy's global generator, in torch.load(weights_only=True)-safe types."""
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"bit_generator": bit_generator, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restores what ``capture_rng_state`` captured. CUDA states are restored on the devices both
    runs have; a mismatch in device count is logged."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy = state["numpy"]
    np.random.set_state((numpy["bit_generator"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    saved_cuda = state.get("cuda") or []
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(saved_cuda) != devices and saved_cuda:
        logger.warning("the checkpoint holds CUDA RNG states of %d device(s) and this process sees %d: restoring the first %d",
                       len(saved_cuda), devices, min(devices, len(saved_cuda)))
    for index, cuda_state in enumerate(saved_cuda[:devices]):
        torch.cuda.set_rng_state(cuda_state, index)
