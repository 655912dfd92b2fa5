"""The run's output folders, created and checked before anything is built or trained: a run that
cannot write its checkpoints fails at the start, not at its first save."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


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


def prepare_output_dirs(config) -> tuple[Path, Path]:
    """(log.out_dir, its checkpoints folder), both created and writable."""
    out_dir = writable_directory(config.log.out_dir, "log.out_dir")
    return out_dir, writable_directory(out_dir / "checkpoints", "log.out_dir", " (its checkpoints folder)")
