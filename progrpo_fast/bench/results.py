"""The shared result writer of the benchmarks: CSV + JSON files (with the machine, versions and
the reproducing command), resumable results JSONs that a rerun adds to, Markdown tables."""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS_DIR = Path("benchmarks/results")


def machine() -> dict:
    import progrpo_fast
    from progrpo_fast.ops import backends

    device = f"{torch.cuda.get_device_name()}" if torch.cuda.is_available() else f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"
    return {"device": device, "python": platform.python_version(), "torch": torch.__version__, "progrpo_fast": progrpo_fast.__version__,
            "platform": platform.platform(), "backends": backends.report(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def seed_range(text: str) -> list[int]:
    """``--seeds`` values: ``N`` -> seeds 0..N-1, ``A-B`` -> seeds A..B (so processes or machines
    can split one table's seeds)."""
    first, dash, last = text.partition("-")
    try:
        seeds = list(range(int(first), int(last) + 1)) if dash else list(range(int(first)))
    except ValueError:
        seeds = []
    if not seeds or seeds[0] < 0:
        raise argparse.ArgumentTypeError(f"expected N (seeds 0..N-1, N >= 1) or A-B (seeds A..B, 0 <= A <= B), got {text!r}")
    return seeds


def write_results(out_dir: Path, name: str, rows: list[dict], command: str, extra: dict | None = None) -> Path:
    """rows -> NAME.csv and NAME.json (with the machine, versions and the reproducing command)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(out_dir / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    payload = {"command": command, "machine": machine(), **(extra or {}), "rows": rows}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def load_results(path: Path, setup: dict, empty: dict) -> dict:
    """A resumable results JSON: the payload at ``path`` (which must have been written with
    ``setup``), or ``{"setup": setup, **empty}`` when there is none."""
    if not path.exists():
        return {"setup": setup, **empty}
    payload = json.loads(path.read_text())
    if not same_setup(payload.get("setup"), setup):
        raise ValueError(f"{path} holds results of another setup ({payload.get('setup')}); this run's is {setup}: "
                         "pass another --out folder, or move the file away to start over")
    return payload


def same_setup(stored, current) -> bool:
    """Whether a results file written with ``stored`` may take rows of a run with ``current``:
    equal once the config keys added since the file was written (absent from its ``resolved``
    config) are filled in at their defaults."""
    from progrpo_fast.train.config import Config

    if not (isinstance(stored, dict) and isinstance(stored.get("resolved"), dict)):
        return stored == current
    defaults = Config().to_dict()
    resolved = {section: {**defaults.get(section, {}), **values} for section, values in stored["resolved"].items()}
    return {**stored, "resolved": resolved} == current


def save_results(path: Path, payload: dict, command: str) -> None:
    """Atomic rewrite (a crash leaves the previous file whole)."""
    payload = {**payload, "command": command, "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock across processes on the folder of ``path`` (no lock file is left
    behind): several benchmark processes may add to one results file, each re-reading it under
    the lock before it writes."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(folder, fcntl.LOCK_UN)
        os.close(folder)


def add_to_results(path: Path, setup: dict, empty: dict, command: str, update) -> dict:
    """Re-reads the results at ``path`` under its lock, applies ``update(payload)`` and saves;
    returns the updated payload."""
    with locked(path):
        payload = load_results(path, setup, empty)
        update(payload)
        save_results(path, payload, command)
    return payload


def markdown_table(rows: list[dict], columns: dict[str, str]) -> str:
    """rows -> a Markdown table of ``columns`` (key -> header); floats with 3 significant digits."""
    def cell(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Writes a matplotlib figure to ``path`` (PNG, 120 dpi) and closes it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path
