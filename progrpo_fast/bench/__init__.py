"""Benchmarks against naive GRPO (``progrpo-fast bench NAME``), one module per benchmark.

``BENCHMARKS`` maps each name to its module; a module defines ``DESCRIPTION`` (one line),
``add_arguments(parser)`` (its own options) and ``run(args, command, tag) -> Path`` (measures,
writes its results under ``args.out`` with the shared writer of ``bench.results``, prints a table,
returns the main results file). Every benchmark also takes ``--config``, ``--set``, ``--out``,
``--tag`` and ``-v``. Adding a benchmark is one line in the table.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

BENCHMARKS = {
    "throughput": "progrpo_fast.bench.throughput",
    "reward": "progrpo_fast.bench.reward",
    "convergence": "progrpo_fast.bench.convergence",
    "selection": "progrpo_fast.bench.selection",
    "snr": "progrpo_fast.bench.snr",
    "clustering": "progrpo_fast.bench.clustering",
    "graphs": "progrpo_fast.bench.graphs",
    "wan_video": "progrpo_fast.bench.wan_video",
    "default": "progrpo_fast.bench.default_run",
    "foreign": "progrpo_fast.bench.foreign",
    "sharded_checkpoint": "progrpo_fast.bench.sharded_checkpoint",
}


def main(argv: list[str]) -> int:
    import torch

    from progrpo_fast.bench.results import RESULTS_DIR
    from progrpo_fast.third_party import quiet_third_party

    if not {"-v", "--verbose"} & set(argv):
        quiet_third_party()  # before the benchmark modules import transformers, which warns on import
    parser = argparse.ArgumentParser(prog="progrpo-fast bench", description="Benchmarks against naive GRPO.")
    names = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    modules = {}
    for name, module_name in BENCHMARKS.items():
        module = modules[name] = importlib.import_module(module_name)
        sub = names.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        sub.add_argument("--config", default=None, help="base preset or YAML (default: the built-in shapes task)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
        sub.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results folder (default {RESULTS_DIR})")
        sub.add_argument("--tag", default=None, help="suffix of the result files (default: cpu or cuda)")
        sub.add_argument("-v", "--verbose", action="store_true", help="also show third-party warnings and model-loading progress bars")
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    tag = args.tag or ("cuda" if torch.cuda.is_available() else "cpu")
    command = "progrpo-fast bench " + " ".join(argv)
    path = modules[args.name].run(args, command, tag)
    print(f"wrote {path}")
    return 0
