"""Settings of third-party libraries that the command line and the benchmarks share (this module
imports nothing from progrpo_fast, so any layer may use it)."""
from __future__ import annotations


def quiet_third_party() -> None:
    """Hides transformers' and diffusers' warnings (e.g. the torchvision fallback notes) and their
    model-loading progress bars; ``-v`` keeps them."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (transformers_logging, diffusers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
