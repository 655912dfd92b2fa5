"""Command line: ``progrpo-fast info`` (also ``python -m progrpo_fast info``)."""
from __future__ import annotations

import argparse
import platform
import sys


def info() -> dict[str, str]:
    """Versions, device and which op backends loaded (and why the others did not)."""
    import torch

    import progrpo_fast
    from progrpo_fast import backends

    rows = {
        "progrpo-fast": progrpo_fast.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__ + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else " (CPU build)"),
    }
    try:
        import triton

        rows["triton"] = triton.__version__
    except ImportError as err:
        rows["triton"] = f"not installed ({err})"
    if torch.cuda.is_available():
        rows["device"] = f"cuda: {torch.cuda.get_device_name()} (capability {'.'.join(map(str, torch.cuda.get_device_capability()))})"
    else:
        rows["device"] = f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (no CUDA device)"
    for name, state in backends.report().items():
        rows[f"backend {name}"] = state
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows["default backend"] = f"{backends.choose(device).__name__} on {device}"
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="progrpo-fast", description="Pro-GRPO: expand-and-prune GRPO for diffusion/flow models")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print versions, device and which op backends loaded")
    args = parser.parse_args(argv)
    if args.command == "info":
        rows = info()
        width = max(map(len, rows))
        for key, value in rows.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
