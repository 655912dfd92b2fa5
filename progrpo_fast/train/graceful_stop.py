"""Graceful stop on SIGINT / SIGTERM: the first signal asks the training loop to stop after the
current iteration (it then saves a checkpoint, the summary and the plots, and the CLI exits with
128 + the signal's number: 130 for SIGINT, 143 for SIGTERM); a second signal exits at once.
Cluster schedulers send SIGTERM before preempting a job, torchrun passes it to every rank, and the
ranks agree on the iteration to stop at (``agreed``: an all-reduce of the flag each iteration)."""
from __future__ import annotations

import os
import signal
import sys
import threading

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signal_name: str) -> int:
    """The shell's exit status of a process ended by ``signal_name``: 128 + its number."""
    return 128 + signal.Signals[signal_name].value


class GracefulStop:
    """A context that catches SIGINT and SIGTERM (in the main thread; elsewhere it catches
    nothing) and restores the previous handlers on exit. ``signal``: the first signal received,
    None when none was."""

    def __init__(self):
        self.signal: signal.Signals | None = None
        self._previous = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number: int, frame) -> None:
        received = signal.Signals(number)
        if self.signal is not None:
            print(f"\n[progrpo-fast] {received.name} again: exiting at once (the last checkpoint stays)", file=sys.stderr, flush=True)
            os._exit(exit_code(received.name))
        self.signal = received
        print(f"\n[progrpo-fast] {received.name}: stopping after this iteration with a checkpoint; "
              "send it again to exit at once", file=sys.stderr, flush=True)

    def agreed(self, dist, device: torch.device) -> str | None:
        """The name of the signal every rank stops for after this iteration (any rank's, the
        highest number when they differ), None to go on; a collective under torchrun."""
        number = int(dist.reduce_scalar(self.signal.value if self.signal is not None else 0, "max", device))
        return signal.Signals(number).name if number else None
