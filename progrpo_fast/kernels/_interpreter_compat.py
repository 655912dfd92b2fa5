"""Makes Triton 3.6's interpreter (TRITON_INTERPRET=1) work with NumPy >= 2.4.

The interpreter holds scalars as 1-element 1-D arrays and converts them with
``int(array)`` in ``tensor.__index__`` (used by ``range(lo, hi)`` with runtime bounds); NumPy 2.4
turned that conversion into a TypeError (triton-lang/triton#9171, fixed upstream after 3.6).
This wraps the interpreter's tensor patching so that ``__index__`` reads the single element.
It changes nothing outside the interpreter, and nothing when the installed Triton is already fixed
(the wrapper only replaces a lambda that the interpreter installs for the duration of a launch).
"""
from __future__ import annotations

import os


def apply() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return
    try:
        import numpy as np
        from triton.runtime import interpreter
    except Exception:  # pragma: no cover - no interpreter to fix
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_progrpo_fixed", False):
        return

    def _index(self):
        return int(np.asarray(self.handle.data).reshape(-1)[0])

    def _patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _index)

    _patch_lang_tensor._progrpo_fixed = True
    interpreter._patch_lang_tensor = _patch_lang_tensor
