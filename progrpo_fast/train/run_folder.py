"""One run per folder: a run id (``run.json``), an advisory lock (``run.lock``) and the rules for
starting a run in a folder that already holds one.

``run.json`` holds ``run_id`` (UTC creation time + random suffix), ``created`` and ``config_hash``
(sha256 of the config the run started with). ``run.lock`` is held with ``fcntl.flock`` while a
trainer runs (the OS releases it when the process dies, kill -9 included) and records the holder's
pid, host and start time, so a second trainer is refused with a message naming them. A new run
(no ``--resume``) in a folder that holds another run's files is refused unless told to
``overwrite``: "archive" moves those files into ``previous-<run id>/``, "delete" removes them.
Under torchrun only rank 0 locks and prepares the folder; the other ranks receive its run id, or
its error, by broadcast.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

__all__ = ["RunFolder", "RunFolderError", "config_hash", "open_run_folder"]

RUN_FILE, LOCK_FILE, ARCHIVE_PREFIX = "run.json", "run.lock", "previous-"
# what a run writes into its folder (run.py, CheckpointStore, TensorBoard, W&B)
RUN_FILES = (RUN_FILE, "log.jsonl", "summary.json", "checkpoints", "reward_curve.png", "before_after.png", "tensorboard", "wandb")
OVERWRITE_MODES = ("archive", "delete")


class RunFolderError(ValueError):
    """A run folder that this run may not use as asked (held by another trainer, or holding
    another run's files); the message says how to proceed."""


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def config_hash(config) -> str:
    """sha256 of the config's canonical JSON."""
    return "sha256:" + hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()


def write_json_atomically(path: Path, record: dict) -> None:
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


class RunFolder:
    """A run folder claimed by this process (rank 0): holds the lock until ``close``. ``run_id``
    is this run's id; ``resumed``: the folder's run is continued (else a new run was started)."""

    def __init__(self, directory: Path, run_id: str, resumed: bool, lock_fd: int | None):
        self.directory, self.run_id, self.resumed, self._lock_fd = directory, run_id, resumed, lock_fd

    @classmethod
    def claim(cls, directory: str | os.PathLike, config, resume: bool = False, overwrite: str | None = None) -> RunFolder:
        """Locks ``directory`` (created if missing) and prepares it for a new run or, with
        ``resume``, for continuing its run; RunFolderError when that is not allowed."""
        if overwrite is not None and overwrite not in OVERWRITE_MODES:
            raise RunFolderError(f"overwrite must be one of {', '.join(OVERWRITE_MODES)}, got {overwrite!r}")
        if resume and overwrite:
            raise RunFolderError("--resume continues the run in log.out_dir and --overwrite replaces it: give one of them")
        directory = writable_directory(directory, "log.out_dir")
        lock_fd = acquire_lock(directory)
        try:
            existing = read_run(directory)
            present = [name for name in RUN_FILES if (directory / name).exists()]
            if resume and present:
                if existing is None:
                    raise RunFolderError(
                        f"--resume: log.out_dir {directory} holds run files ({', '.join(present)}) but no {RUN_FILE}, so it "
                        f"cannot tell which run they belong to (a folder written before run ids, or not a run folder); start a "
                        f"new run there with --overwrite (moves them into {directory / archive_name(None)}/) or set another log.out_dir")
                writable_directory(directory / "checkpoints", "log.out_dir", " (its checkpoints folder)")
                return cls(directory, existing["run_id"], True, lock_fd)
            if present:
                if overwrite is None:
                    raise RunFolderError(
                        f"log.out_dir {directory} holds {describe_run(existing)} ({', '.join(present)}); continue it with --resume, "
                        f"or start a new run there with --overwrite (moves its files into {directory / archive_name(existing)}/; "
                        f"--overwrite=delete removes them instead), or set another log.out_dir")
                clear(directory, present, existing, overwrite)
            elif resume:
                print(f"[progrpo-fast] --resume: no run in {directory}, starting a new one")
            run_id = f"{utc_now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
            write_json_atomically(directory / RUN_FILE, {"run_id": run_id, "created": utc_now().isoformat(),
                                                         "config_hash": config_hash(config)})
            writable_directory(directory / "checkpoints", "log.out_dir", " (its checkpoints folder)")
            return cls(directory, run_id, False, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    def close(self) -> None:
        """Releases the lock (the OS does so too when the process ends)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def writable_directory(path: str | os.PathLike, key: str, what: str = "") -> Path:
    """Creates ``path`` (with its parents) and proves it writable with a temporary file; ValueError
    naming the config ``key`` (``what``: which folder of it) and the fix when it is a file, or
    cannot be created or written."""
    path = Path(path).expanduser()
    where = f"config key '{key}'{what}"
    if path.exists() and not path.is_dir():
        raise ValueError(f"{where}: {str(path)!r} is a file, not a folder: move the file away or choose another {key}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        blocked = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{str(blocked)!r} is a file, not a folder" if blocked is not None else (err.strerror or str(err))
        raise ValueError(f"{where}: cannot write to {str(path)!r} ({reason}): "
                         f"choose a writable {key} or fix the folder's permissions") from None
    return path


def acquire_lock(directory: Path) -> int:
    """An fd holding an exclusive flock on ``directory/run.lock``, with this process's pid, host and
    start time written into it; RunFolderError naming the holder when another process holds it."""
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunFolderError(f"cannot lock {path}: {err} (a file system without flock? set log.out_dir to a local folder)") from err
        raise RunFolderError(f"log.out_dir {directory} is in use by another trainer: {describe_holder(path)}; wait for it to "
                             "finish, stop it (SIGTERM saves a checkpoint), or set another log.out_dir") from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now().isoformat()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    return fd


def describe_holder(lock_path: Path) -> str:
    """'pid P on host H (since T)' from a lock file, or why it cannot say."""
    try:
        holder = json.loads(lock_path.read_text())
        return f"pid {holder['pid']} on host {holder['host']} (since {holder['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"a process that has not yet written its pid and host into {lock_path}"


def read_run(directory: Path) -> dict | None:
    """The folder's run.json, None when there is none; RunFolderError when it is unreadable."""
    path = directory / RUN_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        str(record["run_id"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunFolderError(f"{path} is not a run record ({err}); move it away, or start a new run with --overwrite") from err
    return record


def describe_run(record: dict | None) -> str:
    if record is None:
        return f"files of a run without {RUN_FILE} (written before run ids)"
    return f"run {record['run_id']} (created {record.get('created', 'at an unknown time')})"


def archive_name(record: dict | None) -> str:
    """previous-<run id>, or previous-<now> for a run without a run id."""
    return ARCHIVE_PREFIX + (record["run_id"] if record is not None else f"{utc_now():%Y%m%d-%H%M%S}-unknown")


def clear(directory: Path, present: list[str], record: dict | None, mode: str) -> None:
    """Moves the run files ``present`` into an archive folder ("archive") or removes them ("delete"),
    saying which."""
    if mode == "delete":
        for name in present:
            path = directory / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        print(f"[progrpo-fast] --overwrite=delete: removed {describe_run(record)} from {directory} ({', '.join(present)})")
        return
    archive = directory / archive_name(record)
    suffix = 1
    while archive.exists():
        suffix += 1
        archive = directory / f"{archive_name(record)}-{suffix}"
    archive.mkdir()
    for name in present:
        os.replace(directory / name, archive / name)
    print(f"[progrpo-fast] --overwrite: moved {describe_run(record)} into {archive} ({', '.join(present)})")


def open_run_folder(directory: str | os.PathLike, config, dist, resume: bool = False, overwrite: str | None = None) -> RunFolder:
    """RunFolder.claim on rank 0; under torchrun the other ranks get rank 0's run id (a RunFolder
    without the lock) or raise its error, so no rank waits for a rank that gave up."""
    if dist.world_size == 1:
        return RunFolder.claim(directory, config, resume, overwrite)
    import torch.distributed

    folder = failure = None
    if dist.rank == 0:
        try:
            folder = RunFolder.claim(directory, config, resume, overwrite)
        except Exception as err:  # every rank must hear of it, whatever it is
            failure = err
    shared = [f"{type(failure).__name__}: {failure}" if failure else (folder.run_id, folder.resumed) if folder else None]
    torch.distributed.broadcast_object_list(shared, src=0)
    if failure is not None:
        raise failure
    if isinstance(shared[0], str):
        raise RunFolderError(f"rank 0 could not claim log.out_dir {directory}: {shared[0]}")
    return folder or RunFolder(Path(directory), *shared[0], lock_fd=None)
